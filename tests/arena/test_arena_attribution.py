"""The failure table and the limit of contestant-attributed NO_DECISIONs (DESIGN.md §3)."""

from __future__ import annotations

import pytest

from cacheon.arena import FAILURES, UNEVALUABLE_LIMIT, Fault, attribute, charge
from cacheon.protocol import Attribution, Outcome, ReasonCode

C, V, P, R = (
    Attribution.CONTESTANT,
    Attribution.VALIDATOR,
    Attribution.PROVIDER,
    Attribution.REGISTRY,
)
FAIL, VOID = Outcome.FAIL, Outcome.NO_DECISION


@pytest.mark.parametrize(
    ("reason", "during_own_launch", "expected"),
    [
        (ReasonCode.MANIFEST_NOT_FOUND, False, Fault(FAIL, C)),
        (ReasonCode.COPY_OF, False, Fault(FAIL, C)),
        (ReasonCode.CRASHED, True, Fault(FAIL, C)),
        (ReasonCode.OOM, True, Fault(FAIL, C)),
        (ReasonCode.GREEDY_CONSISTENCY, True, Fault(FAIL, C)),
        (ReasonCode.UNEVALUABLE, False, Fault(FAIL, C)),
        (ReasonCode.POD_LOST, True, Fault(VOID, C)),
        (ReasonCode.POD_LOST, False, Fault(VOID, P)),
        (ReasonCode.GPU_XID, True, Fault(VOID, C)),
        (ReasonCode.GPU_XID, False, Fault(VOID, P)),
        (ReasonCode.LEFTOVER_GPU_MEMORY, True, Fault(VOID, C)),
        (ReasonCode.LEFTOVER_GPU_MEMORY, False, Fault(VOID, V)),
        (ReasonCode.REGISTRY_UNAVAILABLE, True, Fault(VOID, R)),
        (ReasonCode.S3_UNAVAILABLE, True, Fault(VOID, V)),
        (ReasonCode.DRIFT, False, Fault(VOID, V)),
        (ReasonCode.CLIENT_SATURATED, True, Fault(VOID, V)),
        (ReasonCode.BASELINE_UNSTABLE, False, Fault(VOID, V)),
    ],
)
def test_attribution_table(reason: ReasonCode, during_own_launch: bool, expected: Fault) -> None:
    assert attribute(reason, during_own_launch=during_own_launch) == expected


def test_every_reason_is_a_failure_or_a_decision() -> None:
    decisions = {
        ReasonCode.CROWNED,
        ReasonCode.NOT_FASTER,
        ReasonCode.PENDING,
        ReasonCode.BEHAVIOURAL_COPY,
    }
    assert set(FAILURES) | decisions == set(ReasonCode)
    assert not set(FAILURES) & decisions
    for reason in decisions:
        with pytest.raises(ValueError, match="not a failure"):
            attribute(reason, during_own_launch=True)


def test_a_fail_is_always_the_contestants_and_a_void_never_fails() -> None:
    for reason in FAILURES:
        for during in (True, False):
            fault = attribute(reason, during_own_launch=during)
            assert fault.outcome in (FAIL, VOID)
            if fault.outcome is FAIL:
                assert fault.attribution is C, reason


@pytest.mark.parametrize(
    ("reason", "during_own_launch", "before", "expected"),
    [
        # contestant-attributed voids count, the third one fails the submission
        (ReasonCode.POD_LOST, True, 0, (VOID, ReasonCode.POD_LOST, 1)),
        (ReasonCode.GPU_XID, True, 1, (VOID, ReasonCode.GPU_XID, 2)),
        (ReasonCode.LEFTOVER_GPU_MEMORY, True, 2, (FAIL, ReasonCode.UNEVALUABLE, 3)),
        # anybody else's void never counts, however many there were
        (ReasonCode.POD_LOST, False, 2, (VOID, ReasonCode.POD_LOST, 2)),
        (ReasonCode.S3_UNAVAILABLE, True, 2, (VOID, ReasonCode.S3_UNAVAILABLE, 2)),
        (ReasonCode.DRIFT, True, 5, (VOID, ReasonCode.DRIFT, 5)),
        # a FAIL is a FAIL on its own reason and does not touch the count
        (ReasonCode.CRASHED, True, 1, (FAIL, ReasonCode.CRASHED, 1)),
    ],
)
def test_unevaluable_limit(
    reason: ReasonCode,
    during_own_launch: bool,
    before: int,
    expected: tuple[Outcome, ReasonCode, int],
) -> None:
    charged = charge(reason, during_own_launch=during_own_launch, charges_before=before)
    assert (charged.outcome, charged.reason, charged.charges) == expected


def test_limit_is_three() -> None:
    assert UNEVALUABLE_LIMIT == 3
