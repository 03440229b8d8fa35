"""Scoring a round's result into verdicts and standings, on a real state database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.arena import ArenaParams, Holder, RoundResult, Standings, Submission
from cacheon.protocol import (
    Block,
    Contestant,
    ContestantResult,
    Digest,
    Hotkey,
    JobSpec,
    Launch,
    LevelMeasurement,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
    Uid,
)
from cacheon.store.db import Database
from cacheon.validator.scoring import Scoring
from cacheon.validator.state import SubmissionRecord, ValidatorState

BASE = Digest("sha256:" + "b" * 64)
FAST = Holder(Hotkey("fast"), Digest("sha256:" + "1" * 64))
SLOW = Holder(Hotkey("slow"), Digest("sha256:" + "2" * 64))
PARAMS = ArenaParams(0.01, 0.01, 8, 0.02, 4, 0, 0.8)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ValidatorState]:
    db = Database.open(tmp_path / "state.db")
    state = ValidatorState(db, evaluation_version="v1")
    state.record_submissions(
        SubmissionRecord(
            Submission(h.hotkey, Uid(i), h.digest, Block(i)), f"r/x@{h.digest}", 1, True
        )
        for i, h in enumerate((FAST, SLOW), 2)
    )
    yield state
    db.close()


def _job() -> JobSpec:
    return JobSpec(
        round_id="r1",
        seed="00",
        served_model_name="m",
        model_path="/m",
        max_model_len=512,
        contestants=(
            Contestant(key="B", role=Role.BASELINE, image=f"r/base@{BASE}"),
            Contestant(
                key="C1", role=Role.CHALLENGER, hotkey=FAST.hotkey, image=f"r/f@{FAST.digest}"
            ),
            Contestant(
                key="C2", role=Role.CHALLENGER, hotkey=SLOW.hotkey, image=f"r/s@{SLOW.digest}"
            ),
        ),
        launch_order=("B", "C1", "C2", "B"),
    )


def _report(results: dict[str, tuple[Outcome, ReasonCode | None]]) -> RoundReport:
    speeds = {"B": 1.0, "C1": 2.0, "C2": 0.5}
    launches = tuple(
        Launch(
            index=i,
            contestant=key,
            started_ns=i * 1000,
            ended_ns=i * 1000 + 500,
            levels=(LevelMeasurement(concurrency=1, block=0, speed=speeds[key], requests=4),),
        )
        for i, key in enumerate(("B", "C1", "C2", "B"))
    )
    return RoundReport(
        round_id="r1",
        launches=launches,
        results=tuple(
            ContestantResult(key=k, outcome=o, reason=r) for k, (o, r) in results.items()
        ),
    )


def _score(
    state: ValidatorState, result: RoundResult
) -> tuple[Standings, list[tuple[str, Outcome, ReasonCode | None, bool]]]:
    scoring = Scoring(state, PARAMS, BASE)
    scored = scoring.score(_job(), result, state.standings()[1], {FAST.hotkey, SLOW.hotkey})
    state.score_round(scored)
    return scored.standings, [(v.hotkey, v.outcome, v.reason, v.charged) for v in scored.verdicts]


PASSING = {"B": (Outcome.PASS, None), "C1": (Outcome.PASS, None), "C2": (Outcome.PASS, None)}


def test_a_clean_round_crowns_the_fast_one(state: ValidatorState) -> None:
    standings, verdicts = _score(state, RoundResult("r1", _report(PASSING)))
    assert standings == Standings(FAST, None)
    assert ("fast", Outcome.PASS, ReasonCode.CROWNED, False) in verdicts
    assert ("slow", Outcome.PASS, ReasonCode.NOT_FASTER, False) in verdicts


def test_a_failed_contestant_scores_nothing_whatever_its_speed(state: ValidatorState) -> None:
    results = {**PASSING, "C1": (Outcome.FAIL, ReasonCode.FABRICATION)}
    standings, verdicts = _score(state, RoundResult("r1", _report(results)))
    assert standings.leader is None
    assert ("fast", Outcome.FAIL, ReasonCode.FABRICATION, False) in verdicts


def test_a_broken_baseline_blames_nobody(state: ValidatorState) -> None:
    results = {
        **PASSING,
        "B": (Outcome.FAIL, ReasonCode.START_FAILED),
        "C1": (Outcome.FAIL, ReasonCode.START_FAILED),
    }
    standings, verdicts = _score(state, RoundResult("r1", _report(results)))
    assert standings.leader is None
    assert {(h, o, r) for h, o, r, _ in verdicts} == {
        ("fast", Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE),
        ("slow", Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE),
    }
    assert state.charges(FAST.hotkey, FAST.digest) == 0


def test_the_third_charged_no_decision_is_unevaluable(state: ValidatorState) -> None:
    results = {**PASSING, "C2": (Outcome.NO_DECISION, ReasonCode.POD_LOST)}
    outcomes = []
    for _ in range(3):
        _, verdicts = _score(state, RoundResult("r1", _report(results)))
        outcomes += [(o, r) for h, o, r, _ in verdicts if h == "slow"]
    assert outcomes == [
        (Outcome.NO_DECISION, ReasonCode.POD_LOST),
        (Outcome.NO_DECISION, ReasonCode.POD_LOST),
        (Outcome.FAIL, ReasonCode.UNEVALUABLE),
    ]


def test_a_round_lost_to_the_validator_changes_no_standings(state: ValidatorState) -> None:
    _score(state, RoundResult("r1", _report(PASSING)))
    before = state.standings()
    _, verdicts = _score(state, RoundResult("r1", None, ReasonCode.S3_UNAVAILABLE, "bucket down"))
    assert state.standings() == before  # the same row: weights are not re-sent for it
    assert all(o is Outcome.NO_DECISION and not charged for _, o, _, charged in verdicts)
