"""One judgement for validator and miner (issue 16): the same reports, judged by the validator's
scoring (judge, then persist on a real state database) and by `cacheon-miner check` (judge with
an empty history, then print), give identical verdicts for every kind of outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from cacheon.agent.check import CONTESTANT, LEADER_HOTKEY, OWN_HOTKEY, CheckPlan
from cacheon.arena import (
    FAILURES,
    ArenaParams,
    Holder,
    Judgement,
    RoundResult,
    Standings,
    Submission,
    noise_bound,
)
from cacheon.cli import check_render
from cacheon.cli.check import judgement
from cacheon.protocol import (
    Block,
    ContestantResult,
    Digest,
    FileFingerprint,
    GateThresholds,
    Hotkey,
    ImageFacts,
    JobSpec,
    Launch,
    LevelMeasurement,
    Outcome,
    ReasonCode,
    RoundReport,
    Uid,
    Workload,
)
from cacheon.store.db import Database
from cacheon.validator.scoring import Scoring
from cacheon.validator.state import SubmissionRecord, ValidatorState, Verdict

PARAMS = ArenaParams(0.01, 0.01, 8, 0.02, 4, 0, 0.8)
NOISE = noise_bound((), PARAMS)  # what both paths use with no noise history and no --sigma
BASE = "registry.test/base@sha256:" + "b" * 64
LEADER = "registry.test/leader@sha256:" + "1" * 64
MINE = "registry.test/mine@sha256:" + "2" * 64


@dataclass(frozen=True)
class Case:
    name: str
    expect: tuple[Outcome, ReasonCode | None]
    leader: bool = False
    speeds: dict[str, float] = field(default_factory=lambda: {"B": 1.0, "L": 2.0, "C1": 2.0})
    results: dict[str, tuple[Outcome, ReasonCode | None]] = field(default_factory=dict)
    drift: float = 1.0
    """B' speed over B."""
    saturated: frozenset[str] = frozenset()
    """Contestants whose every block was measured with the client saturated."""
    copy_of_leader: bool = False
    squash_of_leader: bool = False
    """The image's files are the leader's, squashed into one layer."""


def _fail_cases() -> list[Case]:
    return [
        Case(f"FAIL {reason}", (Outcome.FAIL, reason), results={"C1": (Outcome.FAIL, reason)})
        for reason, rule in FAILURES.items()
        if rule.outcome is Outcome.FAIL
    ]


def _own_no_decision_cases() -> list[Case]:
    return [
        Case(
            f"own NO_DECISION {reason}",
            (Outcome.NO_DECISION, reason),
            results={"C1": (Outcome.NO_DECISION, reason)},
        )
        for reason, rule in FAILURES.items()
        if rule.outcome is Outcome.NO_DECISION
    ]


CASES = [
    Case("crowned, no incumbent", (Outcome.PASS, ReasonCode.CROWNED)),
    Case("crowned over the leader", (Outcome.PASS, ReasonCode.CROWNED), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 4.0}),
    Case("not faster than the leader", (Outcome.PASS, ReasonCode.NOT_FASTER), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 1.6}),
    Case("not faster than the baseline", (Outcome.PASS, ReasonCode.NOT_FASTER),
         speeds={"B": 1.0, "C1": 0.9}),
    Case("pending", (Outcome.PASS, ReasonCode.PENDING), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 2.04}),
    Case("leader failing", (Outcome.PASS, ReasonCode.PENDING), leader=True,
         results={"L": (Outcome.FAIL, ReasonCode.CRASHED)}),
    Case("behavioural copy of the leader", (Outcome.PASS, ReasonCode.NOT_FASTER), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 1.6}, copy_of_leader=True),
    Case("void: baseline failed", (Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE),
         results={"B": (Outcome.FAIL, ReasonCode.CRASHED)}),
    Case("void: drift", (Outcome.NO_DECISION, ReasonCode.DRIFT), drift=1.5),
    Case("void: client saturated", (Outcome.NO_DECISION, ReasonCode.CLIENT_SATURATED),
         saturated=frozenset({"C1"})),
    Case("file copy of the leader", (Outcome.FAIL, ReasonCode.COPY_OF), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 2.1}, squash_of_leader=True),
    Case("own files beside the leader's", (Outcome.PASS, ReasonCode.PENDING), leader=True,
         speeds={"B": 1.0, "L": 2.0, "C1": 2.04}),
    Case("missing from the report", (Outcome.NO_DECISION, ReasonCode.AGENT_FAILED),
         results={"C1": (Outcome.PASS, None)}),
    *_fail_cases(),
    *_own_no_decision_cases(),
]  # fmt: skip


def _job(case: Case) -> JobSpec:
    plan = CheckPlan(
        contestant=MINE,
        baseline=BASE,
        leader=LEADER if case.leader else None,
        seed="ab" * 32,
        served_model_name="m",
        model_path="/model",
        max_model_len=512,
        workload=Workload(concurrencies=(1, 16)),
        gate=GateThresholds(),
        startup_deadline_s=60,
    )
    return plan.job()


def _report(job: JobSpec, case: Case) -> RoundReport:
    launches = []
    for index, key in enumerate(job.launch_order):
        speed = case.speeds[key] * (case.drift if key == "B" and index > 0 else 1.0)
        levels = tuple(
            LevelMeasurement(
                concurrency=c,
                block=0,
                speed=speed,
                requests=8,
                client_saturated=key in case.saturated,
            )
            for c in job.workload.concurrencies
        )
        launches.append(
            Launch(
                index=index,
                contestant=key,
                started_ns=index * 10**9,
                ended_ns=index * 10**9 + 5 * 10**8,
                levels=levels,
            )
        )
    results = {c.key: (Outcome.PASS, None) for c in job.contestants}
    results.update(case.results)
    missing = case.name == "missing from the report"
    return RoundReport(
        round_id=job.round_id,
        launches=tuple(launches),
        results=tuple(
            ContestantResult(
                key=key,
                outcome=outcome,
                reason=reason,
                detail=f"{key}: {reason}" if reason else "",
                copy_of="L" if key == CONTESTANT and case.copy_of_leader else None,
                image=_facts(key, case),
            )
            for key, (outcome, reason) in results.items()
            if not (missing and key == CONTESTANT)
        ),
    )


def _facts(key: str, case: Case) -> ImageFacts | None:
    """Every image's file sample: the leader's engine on a CUDA base; the challenger's own
    engine on the same base, or the leader's files squashed into one layer."""
    cuda = [(f"cuda-{i}", 50_000_000, False) for i in range(40)]
    engine = [(f"engine-{i}", 20_000_000, True) for i in range(30)]
    mine = [(f"mine-{i}", 20_000_000, True) for i in range(30)]
    samples = {
        "B": None,
        "L": cuda + engine,
        CONTESTANT: [(n, size, True) for n, size, _ in cuda + engine]
        if case.squash_of_leader
        else cuda + mine,
    }[key]
    if samples is None:
        return None
    digest = {"L": LEADER, CONTESTANT: MINE}[key].rpartition("@")[2]
    files = FileFingerprint(files=len(samples), bytes=10**9, samples=tuple(samples))
    return ImageFacts(digest=digest, files=files)


def _validator(tmp_path: Path, job: JobSpec, result: RoundResult) -> tuple[object, ...]:
    """The verdict the validator records for the check's image."""
    mine = Holder(Hotkey(OWN_HOTKEY), Digest(MINE.rpartition("@")[2]))
    leader = Holder(Hotkey(LEADER_HOTKEY), Digest(LEADER.rpartition("@")[2]))
    with Database.open(tmp_path / "state.db") as db:
        state = ValidatorState(db, evaluation_version="v1")
        state.record_submissions(
            SubmissionRecord(Submission(h.hotkey, Uid(i), h.digest, Block(i)), image, 1, True)
            for i, (h, image) in enumerate(((leader, LEADER), (mine, MINE)), 2)
        )
        leading = any(c.key == "L" for c in job.contestants)
        standings = Standings(leader if leading else None)
        if leading:  # the leader holds its place by an earlier crown
            state.add_verdicts(
                [
                    Verdict(
                        leader.hotkey,
                        leader.digest,
                        Outcome.PASS,
                        ReasonCode.CROWNED,
                        "",
                        "r0",
                        "v1",
                    )
                ]
            )
        scoring = Scoring(state, PARAMS, Digest(BASE.rpartition("@")[2]))
        scored = scoring.score(job, result, standings, {mine.hotkey, leader.hotkey})
        state.score_round(scored)
        (verdict,) = [v for v in state.verdicts() if v.hotkey == OWN_HOTKEY]
        return (
            verdict.outcome,
            verdict.reason,
            verdict.detail,
            verdict.attribution,
            verdict.charged,
            bool(state.behaves_like(mine.digest)),
        )


def _printed_verdict(judged: Judgement) -> tuple[str, str]:
    console = Console(record=True, width=200)
    check_render.verdict(console, judged, NOISE.core, "the prior")
    line = next(x for x in console.export_text().splitlines() if x.startswith("verdict: "))
    found = re.match(r"verdict: (\S+) ?(\S*)", line)
    assert found is not None
    return found.group(1), found.group(2)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_validator_and_check_judge_alike(case: Case, tmp_path: Path) -> None:
    job = _job(case)
    report = _report(job, case)
    validator = _validator(tmp_path, job, RoundResult(job.round_id, report))
    checked = judgement(job, report, PARAMS, NOISE)
    assert (checked.outcome, checked.reason) == case.expect
    assert validator == (
        checked.outcome,
        checked.reason,
        checked.detail,
        checked.attribution,
        checked.charged,
        checked.behaves_like is not None,
    )
    printed = _printed_verdict(checked)
    assert printed == (checked.outcome.value, checked.reason.value if checked.reason else "")
