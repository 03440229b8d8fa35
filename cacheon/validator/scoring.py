"""From a round's result to what it changes: verdicts, evidence, noise history, standings.

The agent measured; the arena decides; this module only feeds one to the other and collects
what must be persisted, as one `ScoredRound` written in a single transaction. A round that
failed for the validator's or the provider's reasons changes nothing but NO_DECISION verdicts
(charged to a contestant only when its own container was running, per the arena's table).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from cacheon.arena import (
    FAILURES,
    ArenaParams,
    Call,
    Contender,
    Crown,
    Evidence,
    Holder,
    Roster,
    Standings,
    advance,
    attribute,
    behavioural_copies,
    bounds,
    charge,
    decide,
    measure_round,
    pooled_sigma,
)
from cacheon.protocol import (
    Block,
    ContestantResult,
    Digest,
    Hotkey,
    JobSpec,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
)
from cacheon.validator.rounds import RoundResult
from cacheon.validator.state import EvidenceKind, ScoredRound, ValidatorState, Verdict

_CALL_REASON = {
    Call.CROWNED: ReasonCode.CROWNED,
    Call.NOT_FASTER: ReasonCode.NOT_FASTER,
    Call.PENDING: ReasonCode.PENDING,
}


@dataclass(frozen=True)
class Scoring:
    state: ValidatorState
    params: ArenaParams
    version: str
    baseline: Digest

    def score(
        self,
        job: JobSpec,
        result: RoundResult,
        standings: Standings,
        registered: Collection[Hotkey],
    ) -> ScoredRound:
        holders = _holders(job)
        if result.report is None:
            reason = result.failure or ReasonCode.AGENT_FAILED
            voided = tuple(
                self._charged(holder, reason, result.detail, job.round_id, during_own_launch=False)
                for key, holder in holders.items()
                if _role(job, key) is Role.CHALLENGER
            )
            return self._unchanged(job.round_id, reason, result.detail, voided, standings)

        report = result.report
        baseline_broken = _baseline_problem(job, report)
        if baseline_broken is not None:
            # If the pinned baseline cannot run, nothing that failed after it can be blamed on
            # its image: the pod or the validator's setup is at fault.
            return self.score(
                job,
                RoundResult(job.round_id, None, ReasonCode.BASELINE_UNSTABLE, baseline_broken),
                standings,
                registered,
            )
        sigma = pooled_sigma(self.state.noise_pairs(), self.params.sigma_floor)
        measured = measure_round(job, report, sigma)
        results = {r.key: r for r in report.results}
        verdicts: list[Verdict] = []
        passed: set[str] = set()
        for key, holder in holders.items():
            verdict = self._result_verdict(holder, results.get(key), job.round_id)
            if verdict is None:
                passed.add(key)
            else:
                verdicts.append(verdict)

        evidence: list[tuple[Digest, EvidenceKind, Evidence, str | None]] = []
        crowns: list[Crown] = []
        if measured.void is not None:
            verdicts += [
                self._charged(
                    holders[key], measured.void, "", job.round_id, during_own_launch=False
                )
                for key in passed
                if _role(job, key) is Role.CHALLENGER
            ]
        else:
            for digest, more in measured.vs_baseline.items():
                prior = self.state.evidence(digest, EvidenceKind.BASELINE)
                total = more if prior is None or prior.against != more.against else prior.plus(more)
                evidence.append((digest, EvidenceKind.BASELINE, total, None))
            for key in passed:
                holder = holders[key]
                increment = measured.tests.get(holder.digest)
                if _role(job, key) is not Role.CHALLENGER or increment is None:
                    continue
                prior = self.state.evidence(holder.digest, EvidenceKind.TEST)
                decision = decide(prior, increment, sigma, self.params)
                evidence.append(
                    (holder.digest, EvidenceKind.TEST, decision.evidence, decision.call.value)
                )
                verdicts.append(
                    Verdict(
                        holder.hotkey,
                        holder.digest,
                        Outcome.PASS,
                        _CALL_REASON[decision.call],
                        _ratio_detail(
                            decision.evidence, decision.bounds.lower, decision.bounds.upper
                        ),
                        job.round_id,
                        self.version,
                    )
                )
                if decision.call is Call.CROWNED:
                    crowns.append(Crown(holder, increment.against, decision.bounds.lower))

        roster = Roster.from_job(job)
        copies = behavioural_copies(roster, report) if measured.void is None else frozenset()
        leader_digest = roster.leader.digest if roster.leader is not None else None
        behaves = tuple((d, leader_digest) for d in copies if leader_digest is not None)
        contenders = self._contenders(standings, verdicts, evidence, behaves, sigma)
        moved = advance(standings, contenders, crowns, registered, self.baseline)
        return ScoredRound(
            round_id=job.round_id,
            report=report.model_dump_json(),
            void=measured.void,
            detail="",
            noise_pairs=measured.pairs,
            evidence=tuple(evidence),
            behaves_like=behaves,
            verdicts=tuple(verdicts),
            standings=moved.standings,
            changes=moved.changes,
        )

    def _result_verdict(
        self, holder: Holder, result: ContestantResult | None, round_id: str
    ) -> Verdict | None:
        """None when the contestant passed the agent's checks; else its FAIL or NO_DECISION."""
        if result is None:
            return self._charged(
                holder, ReasonCode.AGENT_FAILED, "missing from the report", round_id,
                during_own_launch=False,
            )  # fmt: skip
        if result.outcome is Outcome.PASS:
            return None
        reason = result.reason or ReasonCode.AGENT_FAILED
        if result.outcome is Outcome.FAIL:
            return Verdict(
                holder.hotkey, holder.digest, Outcome.FAIL, reason, result.detail, round_id,
                self.version, attribute(reason, during_own_launch=True).attribution
                if reason in FAILURES else None,
            )  # fmt: skip
        return self._charged(holder, reason, result.detail, round_id, during_own_launch=True)

    def _charged(
        self,
        holder: Holder,
        reason: ReasonCode,
        detail: str,
        round_id: str,
        *,
        during_own_launch: bool,
    ) -> Verdict:
        if reason not in FAILURES:  # an agent answering a code outside the table
            detail, reason = f"{reason}: {detail}", ReasonCode.AGENT_FAILED
        before = self.state.charges(holder.hotkey, holder.digest)
        charged = charge(reason, during_own_launch=during_own_launch, charges_before=before)
        fault = attribute(reason, during_own_launch=during_own_launch)
        return Verdict(
            holder.hotkey,
            holder.digest,
            charged.outcome,
            charged.reason,
            detail,
            round_id,
            self.version,
            fault.attribution,
            charged.charges > before,
        )

    def _unchanged(
        self,
        round_id: str,
        reason: ReasonCode,
        detail: str,
        verdicts: tuple[Verdict, ...],
        standings: Standings,
    ) -> ScoredRound:
        return ScoredRound(
            round_id=round_id,
            report=None,
            void=reason,
            detail=detail,
            noise_pairs=(),
            evidence=(),
            behaves_like=(),
            verdicts=verdicts,
            standings=standings,
            changes=(),
        )

    def _contenders(
        self,
        standings: Standings,
        new_verdicts: list[Verdict],
        new_evidence: list[tuple[Digest, EvidenceKind, Evidence, str | None]],
        new_behaves: tuple[tuple[Digest, Digest], ...],
        sigma: float,
    ) -> list[Contender]:
        """Every submission still in the running with its latest decisive verdict."""
        latest: dict[Holder, Verdict] = {}
        for v in reversed(self.state.verdicts()):
            if v.outcome is not Outcome.NO_DECISION:
                latest[Holder(v.hotkey, v.digest)] = v
        for v in new_verdicts:
            if v.outcome is not Outcome.NO_DECISION:
                latest[Holder(v.hotkey, v.digest)] = v
        baseline_evidence = {d: e for d, k, e, _ in new_evidence if k is EvidenceKind.BASELINE}
        records = {
            Holder(r.submission.hotkey, r.submission.digest): r for r in self.state.submissions()
        }
        current = {h for h, r in records.items() if r.current}
        places = {h for h in (standings.leader, standings.runner_up) if h is not None}
        contenders = []
        for holder in current | places:
            verdict = latest.get(holder)
            record = records.get(holder)
            if verdict is None or record is None:
                continue
            evidence = baseline_evidence.get(holder.digest) or self.state.evidence(
                holder.digest, EvidenceKind.BASELINE
            )
            lower = None if evidence is None else bounds(evidence, sigma, self.params.alpha).lower
            behaves = self.state.behaves_like(holder.digest) | {
                leader for d, leader in new_behaves if d == holder.digest
            }
            contenders.append(
                Contender(
                    holder,
                    Block(record.submission.first_seen),
                    verdict.outcome is Outcome.PASS,
                    lower,
                    behaves,
                )
            )
        return contenders


def _baseline_problem(job: JobSpec, report: RoundReport) -> str | None:
    """Why the baseline did not run cleanly in this round, or None when it did."""
    keys = {c.key for c in job.contestants if c.role is Role.BASELINE}
    for result in report.results:
        if result.key in keys and result.outcome is not Outcome.PASS:
            return f"baseline {result.key}: {result.reason}: {result.detail}"
    return None


def _holders(job: JobSpec) -> dict[str, Holder]:
    """Contestant key -> who holds it (the baseline has no holder)."""
    return {
        c.key: Holder(Hotkey(c.hotkey), Digest(c.image.rpartition("@")[2]))
        for c in job.contestants
        if c.role is not Role.BASELINE and c.hotkey is not None
    }


def _role(job: JobSpec, key: str) -> Role:
    return next(c.role for c in job.contestants if c.key == key)


def _ratio_detail(evidence: Evidence, lower: float, upper: float) -> str:
    return (
        f"x{math.exp(evidence.mean):.4f} vs {evidence.against[:19]} over {evidence.launches}"
        f" launch(es), bounds x{math.exp(lower):.4f}..x{math.exp(upper):.4f}"
    )
