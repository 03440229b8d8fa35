"""Attacks on a round (issue 17), each in a real agent round judged by `arena.judge`: the
attacker is charged with its own reason (or, for the unstable leader and a stream that keeps
the limits, with nothing), the round is not void, the honest challenger is compared and its
launch counted, and the honest contestants' verdicts are those of the same round without the
attacker (`cacheon.testing.reliability.attacks`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cacheon.protocol import LevelMeasurement, ReasonCode
from cacheon.testing.reliability.attacks import (
    CASES,
    LEADER_SLOWDOWN,
    AttackCase,
    AttackRound,
    problems,
    run_attack,
)


def _speed(levels: tuple[LevelMeasurement, ...]) -> float:
    return math.exp(sum(math.log(lv.speed) for lv in levels) / len(levels))


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> AttackRound:
    """The same round with no attacker."""
    return run_attack(None, tmp_path_factory.mktemp("control"))


def test_without_an_attacker_the_faster_challenger_is_compared(control: AttackRound) -> None:
    assert control.judged.void is None
    challenger = control.judged.of("C")
    assert challenger is not None
    assert challenger.reason in (ReasonCode.CROWNED, ReasonCode.PENDING), challenger
    assert all(not lv.client_saturated for la in control.report.launches for lv in la.levels)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_attacker_can_only_hurt_itself(
    case: AttackCase, control: AttackRound, tmp_path: Path
) -> None:
    attacked = run_attack(case, tmp_path)
    assert problems(attacked, control) == []
    launches = {launch.contestant: launch for launch in attacked.report.launches}
    if case.attacker is not None and case.reason is None:  # within the limits: never saturated
        assert not any(lv.client_saturated for lv in launches["A"].levels)
    if case.attacker is None:  # the leader's attack is one: its L'/L is beyond any drift bound
        first, second = (
            _speed(la.levels) for la in attacked.report.launches if la.contestant == "L"
        )
        assert first / second > LEADER_SLOWDOWN * 0.7
    for launch in attacked.report.launches:
        if launch.levels:  # the measured window lies inside the launch, warm-up excluded
            assert launch.measured_from_ns is not None
            assert launch.measured_to_ns is not None
            assert launch.started_ns < launch.measured_from_ns < launch.measured_to_ns
            assert launch.measured_to_ns <= launch.ended_ns
