"""The verdict a validator would reach on a check's report, by the validator's own rules.

`cacheon-miner check` must tell a miner what a validator will say, so it feeds its report to the
functions the validator's scoring uses (`measure_round`, `decide`, `bounds`, `charge`,
`behavioural_copies`) in the same order: the baseline first, then the agent's outcome for the
image, then the speed decision. It differs only in what a single local round cannot know: the
validator's history of launch noise (the check takes the configured floor, or `--sigma`) and
earlier evidence (a check is the first look, as a new submission's first round is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cacheon.arena import (
    FAILURES,
    ArenaParams,
    Bounds,
    Call,
    Roster,
    behavioural_copies,
    bounds,
    charge,
    decide,
    measure_round,
)
from cacheon.protocol import JobSpec, Outcome, ReasonCode, Role, RoundReport

_CALL_REASON = {
    Call.CROWNED: ReasonCode.CROWNED,
    Call.NOT_FASTER: ReasonCode.NOT_FASTER,
    Call.PENDING: ReasonCode.PENDING,
}


@dataclass(frozen=True)
class Ratio:
    """A speed ratio on the log scale with its bounds, against one opponent."""

    against: str
    bounds: Bounds
    launches: int

    def text(self) -> str:
        b = self.bounds
        return (
            f"x{math.exp(b.estimate):.4f} vs the {self.against} (bounds x{math.exp(b.lower):.4f}"
            f" .. x{math.exp(b.upper):.4f}, {self.launches} launch{'es' if self.launches > 1 else ''})"
        )


@dataclass(frozen=True)
class LocalVerdict:
    outcome: Outcome
    reason: ReasonCode | None
    detail: str = ""
    vs_baseline: Ratio | None = None
    """At the arena's alpha, as the standings show it."""
    decision: Ratio | None = None
    """The moat decision's bounds against the leader, or the baseline when there is none."""
    behaves_like_leader: bool = False


def local_verdict(
    job: JobSpec, report: RoundReport, params: ArenaParams, sigma: float
) -> LocalVerdict:
    """The verdict on the job's one challenger, as `validator.scoring` reaches it."""
    roster = Roster.from_job(job)
    (me,) = roster.challengers
    results = {r.key: r for r in report.results}
    baselines = {c.key for c in job.contestants if c.role is Role.BASELINE}
    for key in sorted(baselines):
        base = results.get(key)
        if base is not None and base.outcome is not Outcome.PASS:
            detail = f"baseline {key}: {base.reason}: {base.detail}"
            return _charged(ReasonCode.BASELINE_UNSTABLE, detail, during_own_launch=False)
    result = results.get(me.key)
    if result is None:
        return _charged(ReasonCode.AGENT_FAILED, "missing from the report", during_own_launch=False)
    if result.outcome is Outcome.FAIL:
        return LocalVerdict(Outcome.FAIL, result.reason or ReasonCode.AGENT_FAILED, result.detail)
    if result.outcome is Outcome.NO_DECISION:
        reason = result.reason or ReasonCode.AGENT_FAILED
        return _charged(reason, result.detail, during_own_launch=True)

    measured = measure_round(job, report, sigma)
    if measured.void is not None:
        return _charged(measured.void, "", during_own_launch=False)
    copy = me.digest in behavioural_copies(roster, report)
    against = measured.vs_baseline.get(me.digest)
    vs_baseline = (
        None
        if against is None
        else Ratio("baseline", bounds(against, sigma, params.alpha), against.launches)
    )
    increment = measured.tests.get(me.digest)
    if increment is None:
        missing = "the leader" if roster.leader is not None else "the baseline"
        return LocalVerdict(
            Outcome.NO_DECISION,
            None,
            f"not compared: {missing} did not run cleanly before and after it",
            vs_baseline,
            behaves_like_leader=copy,
        )
    decision = decide(None, increment, sigma, params)
    opponent = "leader" if roster.leader is not None else "baseline"
    ratio = Ratio(opponent, decision.bounds, decision.evidence.launches)
    bar = f"; to take the lead the lower bound must exceed x{1 + params.moat:.4f} (the moat)"
    return LocalVerdict(
        Outcome.PASS,
        _CALL_REASON[decision.call],
        ratio.text() + bar,
        vs_baseline,
        ratio,
        copy,
    )


def _charged(reason: ReasonCode, detail: str, *, during_own_launch: bool) -> LocalVerdict:
    if reason not in FAILURES:  # an agent answering a code outside the table
        detail, reason = f"{reason}: {detail}", ReasonCode.AGENT_FAILED
    charged = charge(reason, during_own_launch=during_own_launch, charges_before=0)
    return LocalVerdict(charged.outcome, charged.reason, detail)
