"""Who is to blame for a failure, and when repeated bad luck becomes the contestant's problem.

A verdict is three-valued (DESIGN.md §3): FAIL costs the contestant everything, NO_DECISION costs
nobody and the submission is retried. Some NO_DECISIONs happen while the contestant's own
container runs (the pod dies, the GPU reports an Xid, memory is left behind); we cannot prove
the image caused them, but an image that keeps causing them must not hold the arena hostage, so
those are charged to it and the third charge ends in `FAIL: unevaluable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from cacheon.protocol import Attribution, Outcome, ReasonCode

UNEVALUABLE_LIMIT: Final = 3
"""Contestant-attributed NO_DECISIONs after which a submission is FAILed as unevaluable."""


@dataclass(frozen=True)
class Fault:
    """The consequence of one failure reason."""

    outcome: Outcome
    attribution: Attribution


@dataclass(frozen=True)
class _Rule:
    outcome: Outcome
    during_own_launch: Attribution
    otherwise: Attribution


def _fail() -> _Rule:
    return _Rule(Outcome.FAIL, Attribution.CONTESTANT, Attribution.CONTESTANT)


def _void(during_own_launch: Attribution, otherwise: Attribution) -> _Rule:
    return _Rule(Outcome.NO_DECISION, during_own_launch, otherwise)


_R = ReasonCode
_A = Attribution
FAILURES: Final = MappingProxyType(
    {
        # the contestant's fault, wherever it shows
        _R.BAD_COMMITMENT: _fail(),
        _R.MANIFEST_NOT_FOUND: _fail(),
        _R.NO_AMD64_PLATFORM: _fail(),
        _R.IMAGE_TOO_LARGE: _fail(),
        _R.COPY_OF: _fail(),
        _R.COPY_OF_REFERENCE: _fail(),
        _R.PULL_FAILED: _fail(),
        _R.DIGEST_MISMATCH: _fail(),
        _R.START_FAILED: _fail(),
        _R.STARTUP_TIMEOUT: _fail(),
        _R.CRASHED: _fail(),
        _R.OOM: _fail(),
        _R.BAD_RESPONSE: _fail(),
        _R.PLAUSIBILITY: _fail(),
        _R.GREEDY_CONSISTENCY: _fail(),
        _R.VALUE_CLOSENESS: _fail(),
        _R.DISTRIBUTION: _fail(),
        _R.GARBAGE: _fail(),
        _R.EOS_HONESTY: _fail(),
        _R.LENGTH_BAND: _fail(),
        _R.FABRICATION: _fail(),
        _R.CONFORMANCE: _fail(),
        _R.UNEVALUABLE: _fail(),
        # possibly provoked by the image: charged to it only while its own container ran
        _R.POD_LOST: _void(_A.CONTESTANT, _A.PROVIDER),
        _R.GPU_XID: _void(_A.CONTESTANT, _A.PROVIDER),
        _R.LEFTOVER_GPU_MEMORY: _void(_A.CONTESTANT, _A.VALIDATOR),
        # never the contestant's doing
        _R.REGISTRY_UNAVAILABLE: _void(_A.REGISTRY, _A.REGISTRY),
        _R.S3_UNAVAILABLE: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.BASELINE_UNSTABLE: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.DRIFT: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.CLIENT_SATURATED: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.AGENT_FAILED: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.ROUND_ABANDONED: _void(_A.VALIDATOR, _A.VALIDATOR),
        _R.BUDGET: _void(_A.VALIDATOR, _A.VALIDATOR),
    }
)
"""Every failure reason and its consequence. Reasons absent here (crowned, not_faster, pending,
behavioural_copy) are not failures."""


def attribute(reason: ReasonCode, *, during_own_launch: bool) -> Fault:
    """The outcome and the party charged for `reason`; raises ValueError for a non-failure."""
    rule = FAILURES.get(reason)
    if rule is None:
        raise ValueError(f"{reason} is not a failure reason")
    party = rule.during_own_launch if during_own_launch else rule.otherwise
    return Fault(rule.outcome, party)


@dataclass(frozen=True)
class Charged:
    """A fault after the unevaluable limit is applied, with the submission's running count."""

    outcome: Outcome
    reason: ReasonCode
    charges: int
    """Contestant-attributed NO_DECISIONs so far, this one included."""


def charge(reason: ReasonCode, *, during_own_launch: bool, charges_before: int) -> Charged:
    """Apply `reason` to a submission that already carries `charges_before` charges."""
    fault = attribute(reason, during_own_launch=during_own_launch)
    if fault.outcome is not Outcome.NO_DECISION or fault.attribution is not Attribution.CONTESTANT:
        return Charged(fault.outcome, reason, charges_before)
    charges = charges_before + 1
    if charges >= UNEVALUABLE_LIMIT:
        return Charged(Outcome.FAIL, ReasonCode.UNEVALUABLE, charges)
    return Charged(Outcome.NO_DECISION, reason, charges)
