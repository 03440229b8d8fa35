"""A round's report and the contestants' history -> the judgement of every contestant.

This is the one verdict path (DESIGN.md §2, §3 steps 7-8): the validator's scoring judges a
round with it and then persists what it returns, and `cacheon-miner check` judges its local
round with it (an empty history, or one it is given), so a miner is told the verdict validators
will reach, by the same code. The order of the rules is the order of blame: a round without a
report, or whose pinned baseline did not run cleanly, decides nothing for its challengers; then
each contestant's own outcome from the agent; then, for those that passed, the copy checks of
the round (files, outputs) and the speed decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from cacheon.arena.attribution import FAILURES, attribute, charge
from cacheon.arena.copies import Copy, file_copy
from cacheon.arena.measure import (
    Evidence,
    Roster,
    RoundEvidence,
    behavioural_copies,
    measure_round,
)
from cacheon.arena.params import ArenaParams
from cacheon.arena.standings import Crown, Holder, Transition
from cacheon.arena.verdict import (
    Bounds,
    Call,
    Decision,
    LaunchNoise,
    bounds,
    contestant_sigma,
    look,
)
from cacheon.protocol import (
    Attribution,
    ContestantResult,
    Digest,
    FileFingerprint,
    Hotkey,
    JobSpec,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
)

CALL_REASON: Mapping[Call, ReasonCode] = MappingProxyType(
    {
        Call.CROWNED: ReasonCode.CROWNED,
        Call.NOT_FASTER: ReasonCode.NOT_FASTER,
        Call.PENDING: ReasonCode.PENDING,
    }
)
"""The published reason code of each speed decision."""


@dataclass(frozen=True)
class RoundResult:
    """What came back from a round: a verified report, or why there is none (for everyone)."""

    round_id: str
    report: RoundReport | None
    failure: ReasonCode | None = None
    detail: str = ""


@dataclass(frozen=True)
class History:
    """What is known of the round's contestants before it: the validator's state, or nothing
    (a miner's local check, which is a new submission's first round)."""

    tests: Mapping[Digest, Evidence] = field(default_factory=dict)
    """Evidence of each pending challenger against its opponent (the leader, or the baseline)."""
    vs_baseline: Mapping[Digest, Evidence] = field(default_factory=dict)
    charges: Mapping[Holder, int] = field(default_factory=dict)
    """Contestant-attributed NO_DECISIONs so far (the third ends in `FAIL: unevaluable`)."""
    files: Mapping[Holder, FileFingerprint] = field(default_factory=dict)
    """The file samples of the places to protect from copies (the runner-up; the leader's is
    taken from the round's own report when it has one)."""


@dataclass(frozen=True)
class Judgement:
    """One contestant's verdict in one round, with the numbers behind it."""

    key: str
    holder: Holder
    role: Role
    outcome: Outcome
    reason: ReasonCode | None
    """None only for a leader that passed: defending the lead decides nothing about it."""
    detail: str = ""
    attribution: Attribution | None = None
    charges: int = 0
    """Contestant-attributed NO_DECISIONs after this round."""
    charged: bool = False
    """This round added a charge."""
    decision: Decision | None = None
    """The moat decision, against the leader or the baseline, with all evidence so far."""
    increment: Evidence | None = None
    """This round's part of the decision's evidence."""
    vs_baseline: Evidence | None = None
    """All evidence against the baseline so far, this round's launches included."""
    ratio: Bounds | None = None
    """`vs_baseline` as bounds at the arena's alpha: the standings rank by its lower bound."""
    behaves_like: Digest | None = None
    """The leader's digest, when this challenger answered like it (a behavioural copy, §4.6)."""
    checks: tuple[str, ...] = ()
    """The round's copy checks it was put through: `files` (its file sample against the
    protected places'), `behaviour` (its outputs against the leader's)."""

    @property
    def is_verdict(self) -> bool:
        """Whether this is a verdict to record; a passing leader's judgement is not."""
        return self.reason is not None or self.outcome is not Outcome.PASS


@dataclass(frozen=True)
class RoundJudgement:
    round_id: str
    noise: LaunchNoise
    """The launch noise the round was judged with; each contestant is judged with
    `contestant_sigma` of it and its own launches."""
    void: ReasonCode | None = None
    """Why the round compared nobody; its judgements are then NO_DECISIONs and FAILs."""
    detail: str = ""
    pairs: tuple[float, ...] = ()
    """The round's bookend pairs, its contribution to the launch-noise history."""
    judgements: tuple[Judgement, ...] = ()

    @property
    def verdicts(self) -> tuple[Judgement, ...]:
        return tuple(j for j in self.judgements if j.is_verdict)

    @property
    def crowns(self) -> tuple[Crown, ...]:
        return tuple(
            Crown(j.holder, j.decision.evidence.against, j.decision.bounds.lower, j.increment.mean)
            for j in self.judgements
            if j.decision is not None and j.decision.call is Call.CROWNED and j.increment
        )

    def of(self, key: str) -> Judgement | None:
        return next((j for j in self.judgements if j.key == key), None)


def judge(
    job: JobSpec,
    result: RoundResult,
    params: ArenaParams,
    noise: LaunchNoise,
    history: History,
) -> RoundJudgement:
    """Every contestant's judgement in the round `job` described and `result` reports."""
    entrants = _entrants(job)
    report = result.report
    if report is None:
        reason = result.failure or ReasonCode.AGENT_FAILED
        return _voided(job, entrants, reason, result.detail, noise=noise, history=history)
    broken = _baseline_problem(job, report)
    if broken is not None:
        # If the pinned baseline cannot run, nothing that failed after it can be blamed on an
        # image: the pod or the validator's setup is at fault.
        return _voided(
            job, entrants, ReasonCode.BASELINE_UNSTABLE, broken, noise=noise, history=history
        )

    measured = measure_round(job, report, noise.core)
    results = {r.key: r for r in report.results}
    roster = Roster.from_job(job)
    copies = behavioural_copies(roster, report) if measured.void is None else frozenset()
    rules = _Rules(
        params,
        noise,
        history,
        measured,
        opponent=_opponent(roster, measured),
        protected=_protected(entrants, results, history),
        leader=roster.leader.digest if roster.leader is not None else None,
        copies=copies,
    )
    judgements = tuple(
        _own_outcome(entrant, results.get(entrant.key), history)
        or rules.judge(entrant, results[entrant.key])
        for entrant in entrants
    )
    return RoundJudgement(
        job.round_id, noise, void=measured.void, pairs=measured.pairs, judgements=judgements
    )


@dataclass(frozen=True)
class _Rules:
    """The judgement of a contestant the agent passed: copies, then speed."""

    params: ArenaParams
    noise: LaunchNoise
    history: History
    measured: RoundEvidence
    opponent: str
    protected: tuple[tuple[Holder, FileFingerprint], ...]
    leader: Digest | None
    copies: frozenset[Digest]

    def judge(self, entrant: _Entrant, result: ContestantResult) -> Judgement:
        digest = entrant.holder.digest
        total = _joined(self.history.vs_baseline.get(digest), self.measured.vs_baseline, digest)
        sigma = contestant_sigma(self.noise, total)
        passed = Judgement(
            entrant.key,
            entrant.holder,
            entrant.role,
            Outcome.PASS,
            None,
            vs_baseline=total,
            ratio=None if total is None else bounds(total, sigma, self.params.alpha),
            behaves_like=self.leader if digest in self.copies else None,
        )
        if entrant.role is Role.LEADER:
            return passed
        checks, copy = self._copy_checks(entrant, result)
        passed = replace(passed, checks=checks)
        if copy is not None:
            return replace(
                passed, outcome=Outcome.FAIL, reason=copy.reason, detail=copy.detail,
                attribution=Attribution.CONTESTANT,
            )  # fmt: skip
        if self.measured.void is not None:
            return _charged(entrant, self.measured.void, "", self.history, during_own_launch=False)
        increment = self.measured.tests.get(digest)
        if increment is None:
            detail = f"not compared: {self.opponent} did not run cleanly before and after it"
            return replace(passed, reason=ReasonCode.PENDING, detail=detail)
        decision = look(self.history.tests.get(digest), increment, self.noise, self.params)
        return replace(
            passed,
            reason=CALL_REASON[decision.call],
            detail=decision_text(decision, self.opponent, self.params),
            decision=decision,
            increment=increment,
        )

    def _copy_checks(
        self, entrant: _Entrant, result: ContestantResult
    ) -> tuple[tuple[str, ...], Copy | None]:
        checks = ("behaviour",) if self.leader is not None and self.measured.void is None else ()
        files = None if result.image is None else result.image.files
        protected = [(h.hotkey, f) for h, f in self.protected if h.hotkey != entrant.holder.hotkey]
        if files is None or not protected:
            return checks, None
        copy = file_copy(
            files,
            protected,
            contained=self.params.copy_file_share,
            tiny_bytes=self.params.copy_tiny_bytes,
        )
        return ("files", *checks), copy


def _opponent(roster: Roster, measured: RoundEvidence) -> str:
    if roster.leader is None:
        return "the baseline"
    if measured.leader_unstable is not None:
        swing = math.exp(measured.leader_unstable)
        return f"the leader (through the baseline: its own bookends differed, L'/L x{swing:.3f})"
    return "the leader"


def _protected(
    entrants: list[_Entrant], results: Mapping[str, ContestantResult], history: History
) -> tuple[tuple[Holder, FileFingerprint], ...]:
    """The places whose files a challenger may not copy: the round's leader, by the sample its
    own launch just took, and what the history holds (the runner-up)."""
    found = dict(history.files)
    for entrant in entrants:
        result = results.get(entrant.key)
        files = None if result is None or result.image is None else result.image.files
        if entrant.role is Role.LEADER and files is not None:
            found[entrant.holder] = files
    return tuple(sorted(found.items(), key=lambda item: (item[0].hotkey, item[0].digest)))


def settle(judged: RoundJudgement, moved: Transition) -> RoundJudgement:
    """The round's judgements once the standings have moved: a challenger that crowned but was
    not installed (`Transition.displaced`) is pending against whoever leads now, its evidence
    against the old leader closed and its numbers kept in the detail."""
    if not moved.displaced:
        return judged
    leader = moved.standings.leader
    now = "the new leader" if leader is not None else "the next leader"
    note = "; not installed (another crown of this round was faster, or it may not lead):"

    def pending(j: Judgement) -> Judgement:
        if j.holder not in moved.displaced or j.decision is None:
            return j
        decision = replace(j.decision, call=Call.PENDING)
        detail = f"{j.detail}{note} pending against {now}"
        return replace(j, reason=ReasonCode.PENDING, detail=detail, decision=decision)

    return replace(judged, judgements=tuple(pending(j) for j in judged.judgements))


def decision_text(decision: Decision, opponent: str, params: ArenaParams) -> str:
    """The numbers behind a speed decision, in one line a miner can read."""
    b, launches = decision.bounds, decision.evidence.launches
    return (
        f"x{math.exp(b.estimate):.4f} vs {opponent} over {launches}"
        f" launch{'es' if launches != 1 else ''}, bounds x{math.exp(b.lower):.4f}"
        f"..x{math.exp(b.upper):.4f}; a crown needs the lower bound above"
        f" x{1 + params.moat:.4f} (the moat)"
    )


@dataclass(frozen=True)
class _Entrant:
    key: str
    role: Role
    holder: Holder


def _entrants(job: JobSpec) -> list[_Entrant]:
    """The leader and the challengers, in the job's order; the baseline is judged by nobody."""
    return [
        _Entrant(c.key, c.role, Holder(Hotkey(c.hotkey), Digest(c.image.rpartition("@")[2])))
        for c in job.contestants
        if c.role is not Role.BASELINE and c.hotkey is not None
    ]


def _voided(
    job: JobSpec,
    entrants: list[_Entrant],
    reason: ReasonCode,
    detail: str,
    *,
    noise: LaunchNoise,
    history: History,
) -> RoundJudgement:
    """A round that compared nobody: NO_DECISION for every challenger, the leader unchanged."""
    judged = tuple(
        _charged(entrant, reason, detail, history, during_own_launch=False)
        for entrant in entrants
        if entrant.role is Role.CHALLENGER
    )
    return RoundJudgement(job.round_id, noise, void=reason, detail=detail, judgements=judged)


def _own_outcome(
    entrant: _Entrant, result: ContestantResult | None, history: History
) -> Judgement | None:
    """The contestant's FAIL or NO_DECISION from the agent; None when it passed its checks."""
    if result is None:
        return _charged(
            entrant, ReasonCode.AGENT_FAILED, "missing from the report", history,
            during_own_launch=False,
        )  # fmt: skip
    if result.outcome is Outcome.PASS:
        return None
    reason = result.reason or ReasonCode.AGENT_FAILED
    if result.outcome is Outcome.FAIL:
        party = (
            attribute(reason, during_own_launch=True).attribution if reason in FAILURES else None
        )
        return Judgement(
            entrant.key,
            entrant.holder,
            entrant.role,
            Outcome.FAIL,
            reason,
            result.detail,
            party,
            history.charges.get(entrant.holder, 0),
        )
    return _charged(entrant, reason, result.detail, history, during_own_launch=True)


def _charged(
    entrant: _Entrant,
    reason: ReasonCode,
    detail: str,
    history: History,
    *,
    during_own_launch: bool,
) -> Judgement:
    """A NO_DECISION, charged to the contestant when the table says so."""
    if reason not in FAILURES:  # an agent answering a code outside the table
        detail, reason = f"{reason}: {detail}", ReasonCode.AGENT_FAILED
    before = history.charges.get(entrant.holder, 0)
    charged = charge(reason, during_own_launch=during_own_launch, charges_before=before)
    fault = attribute(reason, during_own_launch=during_own_launch)
    return Judgement(
        entrant.key,
        entrant.holder,
        entrant.role,
        charged.outcome,
        charged.reason,
        detail,
        fault.attribution,
        charged.charges,
        charged.charges > before,
    )


def _joined(
    prior: Evidence | None, measured: Mapping[Digest, Evidence], digest: Digest
) -> Evidence | None:
    more = measured.get(digest)
    if more is None:
        return prior
    return more if prior is None or prior.against != more.against else prior.plus(more)


def _baseline_problem(job: JobSpec, report: RoundReport) -> str | None:
    """Why the baseline did not run cleanly in this round, or None when it did."""
    keys = {c.key for c in job.contestants if c.role is Role.BASELINE}
    for result in report.results:
        if result.key in keys and result.outcome is not Outcome.PASS:
            return f"baseline {result.key}: {result.reason}: {result.detail}"
    return None
