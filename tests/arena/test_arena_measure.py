"""From raw launches to evidence: speeds (§4.3), bookend interpolation and drift (§4.5)."""

from __future__ import annotations

import math

import pytest

from cacheon.arena import (
    Entry,
    Evidence,
    Roster,
    RoundVoid,
    TimedSpeed,
    behavioural_copies,
    compare,
    launch_speeds,
    measure_round,
)
from cacheon.protocol import (
    Contestant,
    ContestantResult,
    Digest,
    JobSpec,
    Launch,
    LevelMeasurement,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
)


def digest(tag: str) -> Digest:
    return Digest("sha256:" + tag * 64)


B, L, C1, C2 = (
    Entry(key, digest(tag)) for key, tag in zip(("B", "L", "C1", "C2"), "bl12", strict=True)
)
ROSTER = Roster(B, L, (C1, C2))


def timed(*runs: tuple[str, float, float]) -> list[TimedSpeed]:
    return [TimedSpeed(key, at, log_speed) for key, at, log_speed in runs]


GOLDEN_ROUND = timed(
    ("B", 0, 0.0), ("L", 1, 0.20), ("C1", 2, 0.25), ("C2", 3, 0.18), ("L", 4, 0.22), ("B", 5, 0.01)
)


def close(a: Evidence, b: Evidence) -> bool:
    return (
        a.against == b.against
        and a.launches == b.launches
        and math.isclose(a.total, b.total, abs_tol=1e-12)
        and math.isclose(a.variance_units, b.variance_units, abs_tol=1e-12)
    )


def test_compare_golden() -> None:
    result = compare(ROSTER, reversed(GOLDEN_ROUND), sigma=0.02)
    assert result.void is None
    assert result.pairs == pytest.approx((0.01,))  # the baseline's pair only: L'/L is untrusted
    # C1 at t=2 sits a third of the way from L (t=1) to L' (t=4)
    assert close(result.tests[C1.digest], Evidence(L.digest, 1, 0.25 - 0.20666666666666667, 14 / 9))
    assert close(result.tests[C2.digest], Evidence(L.digest, 1, 0.18 - 0.21333333333333333, 14 / 9))
    assert close(result.vs_baseline[C1.digest], Evidence(B.digest, 1, 0.25 - 0.004, 1.52))
    # the leader against the baseline: both of its launches, each baseline launch weighted 1
    assert close(result.vs_baseline[L.digest], Evidence(B.digest, 2, 0.198 + 0.212, 4.0))


def test_launches_sharing_a_leader_launch_share_its_noise() -> None:
    runs = timed(
        ("B", -1, 0.0),
        ("L", 0, 0.1),
        ("C1", 1, 0.2),
        ("L", 2, 0.1),
        ("C1", 3, 0.2),
        ("L", 4, 0.1),
        ("B", 5, 0.0),
    )
    evidence = compare(Roster(B, L, (C1,)), runs, sigma=0.02).tests[C1.digest]
    # leader weights 0.5, 1.0, 0.5: Var(sum d) = (2 + 0.25 + 1 + 0.25) sigma^2
    assert close(evidence, Evidence(L.digest, 2, 0.2, 3.5))


def test_without_a_leader_challengers_are_tested_against_the_baseline() -> None:
    runs = timed(("B", 0, 0.0), ("C1", 1, 0.1), ("B", 2, 0.02))
    result = compare(Roster(B, None, (C1, C2)), runs, sigma=0.02)
    assert result.pairs == (0.02,)
    assert list(result.tests) == [C1.digest]
    assert close(result.tests[C1.digest], Evidence(B.digest, 1, 0.09, 1.5))
    assert result.vs_baseline == result.tests


@pytest.mark.parametrize(
    ("runs", "void"),
    [
        (timed(("B", 0, 0.0), ("L", 1, 0.1), ("C1", 2, 0.1), ("L", 3, 0.1)), "baseline_unstable"),
        (timed(("B", 0, 0.0), ("C1", 1, 0.1), ("B", 2, 0.114)), "drift"),
        (timed(("B", 0, 0.0), ("L", 1, 0.1), ("L", 3, -0.02), ("B", 4, 0.0)), None),
        (timed(("B", 0, 0.0), ("C1", 1, 0.1), ("B", 2, -0.113)), None),
    ],
)
def test_round_void(runs: list[TimedSpeed], void: str | None) -> None:
    # 4 standard deviations of a pair at sigma 0.02 is 0.1131
    result = compare(ROSTER, runs, sigma=0.02)
    assert result.void == (None if void is None else ReasonCode(void))
    if void is not None:
        assert not result.tests
        assert not result.vs_baseline


def test_an_unstable_leader_never_voids_the_challengers() -> None:
    # L'/L = -0.3 is far beyond the drift bound while B'/B is not: the leader's instability
    runs = timed(("B", 0, 0.0), ("L", 1, 0.3), ("C1", 2, 0.25), ("L", 3, 0.0), ("B", 4, 0.0))
    result = compare(ROSTER, runs, sigma=0.02)
    assert result.void is None
    assert result.pairs == (0.0,)
    assert result.leader_unstable == pytest.approx(-0.3)
    # the challenger is compared with the leader's mean ratio to the baseline (0.15), and the
    # variance carries that mean's: the leader's 2 launches plus each baseline launch's summed
    # weight (0.75 + 0.25) squared, over 2 ** 2
    leader = result.vs_baseline[L.digest]
    assert close(leader, Evidence(B.digest, 2, 0.3, 4.0))
    expected = Evidence(L.digest, 1, 0.25 - 0.15, 1.5 + leader.variance_units / 4)
    assert close(result.tests[C1.digest], expected)


def test_a_leader_slowing_one_bookend_only_lowers_its_own_bar() -> None:
    steady = timed(("B", 0, 0.0), ("L", 1, 0.3), ("C1", 2, 0.3), ("L", 3, 0.3), ("B", 4, 0.0))
    slowed = timed(("B", 0, 0.0), ("L", 1, 0.3), ("C1", 2, 0.3), ("L", 3, -0.2), ("B", 4, 0.0))
    fair = compare(ROSTER, steady, sigma=0.02).tests[C1.digest].mean
    gamed = compare(ROSTER, slowed, sigma=0.02).tests[C1.digest].mean
    assert fair == pytest.approx(0.0)
    assert gamed > fair  # the challenger gains what the leader threw away


def test_a_leader_measured_once_is_compared_through_the_baseline() -> None:
    runs = timed(("B", 0, 0.0), ("L", 1, 0.1), ("C1", 2, 0.3), ("B", 3, 0.0))
    result = compare(ROSTER, runs, sigma=0.02)
    assert set(result.vs_baseline) == {L.digest, C1.digest}
    assert result.tests[C1.digest].mean == pytest.approx(0.2)


def test_a_launch_outside_the_bookends_is_not_compared() -> None:
    runs = timed(("C1", -1, 0.5), ("B", 0, 0.0), ("L", 1, 0.1), ("L", 3, 0.1), ("B", 4, 0.0))
    result = compare(ROSTER, runs, sigma=0.02)
    assert C1.digest not in result.tests
    assert C1.digest not in result.vs_baseline


def level(
    c: int, block: int, speed: float, requests: int = 10, saturated: bool = False
) -> LevelMeasurement:
    return LevelMeasurement(
        concurrency=c, block=block, speed=speed, requests=requests, client_saturated=saturated
    )


def launch(
    index: int, key: str, *levels: LevelMeasurement, outcome: Outcome | None = None
) -> Launch:
    return Launch(
        index=index,
        contestant=key,
        started_ns=index * 100,
        ended_ns=index * 100 + 50,
        levels=levels,
        outcome=outcome,
    )


def results(*keys: str, failed: tuple[str, ...] = ()) -> tuple[ContestantResult, ...]:
    return tuple(
        ContestantResult(key=k, outcome=Outcome.FAIL if k in failed else Outcome.PASS)
        for k in (*keys, *failed)
    )


def test_launch_speed_is_the_geometric_mean_over_requests_then_levels() -> None:
    report = RoundReport(
        round_id="r",
        launches=(launch(0, "B", level(1, 0, 2.0, 10), level(1, 1, 4.0, 30), level(16, 0, 8.0)),),
        results=results("B"),
    )
    (speed,) = launch_speeds(report)
    per_level_1 = (10 * math.log(2.0) + 30 * math.log(4.0)) / 40
    assert speed == TimedSpeed("B", 25.0, pytest.approx((per_level_1 + math.log(8.0)) / 2))


def test_only_blocks_clean_in_every_launch_count() -> None:
    report = RoundReport(
        round_id="r",
        launches=(
            launch(0, "B", level(1, 0, 2.0), level(1, 1, 100.0)),
            launch(1, "C1", level(1, 0, 3.0), level(1, 1, 3.0, saturated=True)),
            launch(2, "C2", level(1, 0, 9.0), outcome=Outcome.NO_DECISION),
            launch(3, "C3", level(1, 0, 9.0), level(1, 1, 9.0)),
            launch(4, "B", level(1, 0, 2.0), level(1, 1, 100.0)),
        ),
        results=results("B", "C1", "C2", failed=("C3",)),
    )
    speeds = launch_speeds(report)
    assert [(s.key, s.log_speed) for s in speeds] == [
        ("B", math.log(2.0)),
        ("C1", math.log(3.0)),
        ("B", math.log(2.0)),
    ]


def test_a_level_lost_everywhere_voids_the_round() -> None:
    report = RoundReport(
        round_id="r",
        launches=(
            launch(0, "B", level(1, 0, 2.0), level(16, 0, 2.0)),
            launch(1, "C1", level(1, 0, 3.0), level(16, 0, 3.0, saturated=True)),
        ),
        results=results("B", "C1"),
    )
    with pytest.raises(RoundVoid) as raised:
        launch_speeds(report)
    assert raised.value.reason is ReasonCode.CLIENT_SATURATED


def job(*contestants: tuple[str, Role, Digest]) -> JobSpec:
    return JobSpec(
        round_id="r",
        seed="00",
        served_model_name="m",
        model_path="/m",
        max_model_len=4096,
        contestants=tuple(
            Contestant(key=key, role=role, image=f"docker.io/x/y@{d}")
            for key, role, d in contestants
        ),
        launch_order=tuple(key for key, _, _ in contestants),
    )


ROUND_JOB = job(
    ("B", Role.BASELINE, B.digest), ("L", Role.LEADER, L.digest), ("C1", Role.CHALLENGER, C1.digest)
)


def test_roster_from_job() -> None:
    assert Roster.from_job(ROUND_JOB) == Roster(B, L, (C1,))
    with pytest.raises(ValueError, match="one baseline"):
        Roster.from_job(job(("C1", Role.CHALLENGER, C1.digest)))


def test_measure_round_end_to_end() -> None:
    speeds = {"B": [1.0, 1.0], "L": [1.2, 1.2], "C1": [1.5]}
    order = ["B", "L", "C1", "L", "B"]
    launches = tuple(launch(i, key, level(1, 0, speeds[key].pop())) for i, key in enumerate(order))
    report = RoundReport(round_id="r", launches=launches, results=results("B", "L", "C1"))
    result = measure_round(ROUND_JOB, report, sigma=0.02)
    assert result.void is None
    assert result.tests[C1.digest].total == pytest.approx(math.log(1.5 / 1.2))
    saturated = report.model_copy(
        update={"launches": (*launches[:-1], launch(4, "B", level(1, 0, 1.0, saturated=True)))}
    )
    assert measure_round(ROUND_JOB, saturated, sigma=0.02).void is ReasonCode.CLIENT_SATURATED


def test_behavioural_copies() -> None:
    report = RoundReport(
        round_id="r",
        launches=(launch(0, "L"), launch(1, "C1"), launch(2, "C2"), launch(3, "L")),
        results=(
            ContestantResult(key="C1", outcome=Outcome.PASS, copy_of="L"),
            ContestantResult(key="C2", outcome=Outcome.PASS),
        ),
    )
    assert behavioural_copies(ROSTER, report) == {C1.digest}
    assert behavioural_copies(Roster(B, None, (C1, C2)), report) == frozenset()
