"""From a round's result to what it changes: the arena judges, this module persists.

The judgement is `arena.judge`, the same function `cacheon-miner check` calls; this module
gives it the validator's history (pending evidence, charges, the launch-noise history), turns
what it returns into rows and moves the standings, all collected as one `ScoredRound` written in
a single transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from cacheon.arena import (
    ArenaParams,
    Contender,
    Evidence,
    History,
    Holder,
    Judgement,
    LaunchNoise,
    RoundJudgement,
    RoundResult,
    Standings,
    advance,
    bounds,
    contestant_sigma,
    judge,
    noise_bound,
    settle,
)
from cacheon.protocol import Block, Digest, FileFingerprint, Hotkey, JobSpec, Outcome, Role
from cacheon.validator.state import EvidenceKind, EvidenceRow, ScoredRound, ValidatorState, Verdict


@dataclass(frozen=True)
class Scoring:
    state: ValidatorState
    """Its evaluation version is the one every verdict and row of the round is keyed by."""
    params: ArenaParams
    baseline: Digest

    def score(
        self,
        job: JobSpec,
        result: RoundResult,
        standings: Standings,
        registered: Collection[Hotkey],
    ) -> ScoredRound:
        noise = noise_bound(self.state.noise_pairs(), self.params)
        judged = judge(job, result, self.params, noise, self.history(job, standings))
        behaves = tuple(
            (j.holder.digest, j.behaves_like)
            for j in judged.judgements
            if j.behaves_like is not None
        )
        contenders = self._contenders(
            standings,
            [self._verdict(j, job.round_id) for j in judged.verdicts],
            judged,
            behaves,
            noise,
        )
        moved = advance(standings, contenders, judged.crowns, registered, self.baseline)
        judged = settle(judged, moved)
        verdicts = tuple(self._verdict(j, job.round_id) for j in judged.verdicts)
        return ScoredRound(
            round_id=job.round_id,
            report=None if result.report is None else result.report.model_dump_json(),
            void=judged.void,
            detail=judged.detail,
            noise_pairs=judged.pairs,
            evidence=tuple(_evidence(judged)),
            behaves_like=behaves,
            verdicts=verdicts,
            standings=moved.standings,
            changes=moved.changes,
            fingerprints=_fingerprints(job, result),
        )

    def history(self, job: JobSpec, standings: Standings) -> History:
        """What the state knows of this round's contestants, and the file samples of the
        places a copy may not take."""
        tests: dict[Digest, Evidence] = {}
        vs_baseline: dict[Digest, Evidence] = {}
        charges: dict[Holder, int] = {}
        for c in job.contestants:
            if c.role is Role.BASELINE or c.hotkey is None:
                continue
            holder = Holder(Hotkey(c.hotkey), Digest(c.image.rpartition("@")[2]))
            for kind, known in ((EvidenceKind.TEST, tests), (EvidenceKind.BASELINE, vs_baseline)):
                found = self.state.evidence(holder.digest, kind)
                if found is not None:
                    known[holder.digest] = found
            charges[holder] = self.state.charges(holder.hotkey, holder.digest)
        files = {
            place: sample
            for place in (standings.leader, standings.runner_up)
            if place is not None and (sample := self.state.fingerprint(place.digest)) is not None
        }
        return History(tests, vs_baseline, charges, files)

    def _verdict(self, j: Judgement, round_id: str) -> Verdict:
        return Verdict(
            j.holder.hotkey,
            j.holder.digest,
            j.outcome,
            j.reason,
            j.detail,
            round_id,
            self.state.version,
            j.attribution,
            j.charged,
            checks=("layers", *j.checks),
        )

    def _contenders(
        self,
        standings: Standings,
        new_verdicts: Iterable[Verdict],
        judged: RoundJudgement,
        new_behaves: tuple[tuple[Digest, Digest], ...],
        noise: LaunchNoise,
    ) -> list[Contender]:
        """Every submission still in the running with its latest decisive verdict."""
        latest: dict[Holder, Verdict] = {}
        for v in [*reversed(self.state.verdicts()), *new_verdicts]:
            if v.outcome is not Outcome.NO_DECISION:
                latest[Holder(v.hotkey, v.digest)] = v
        measured = {
            j.holder.digest: j.vs_baseline for j in judged.judgements if j.vs_baseline is not None
        }
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
            evidence = measured.get(holder.digest) or self.state.evidence(
                holder.digest, EvidenceKind.BASELINE
            )
            sigma = contestant_sigma(noise, evidence)
            lower = None if evidence is None else bounds(evidence, sigma, self.params.alpha).lower
            behaves = self.state.behaves_like(holder.digest) | {
                leader for digest, leader in new_behaves if digest == holder.digest
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


def _evidence(judged: RoundJudgement) -> Iterable[EvidenceRow]:
    """The evidence rows the round leaves: against the baseline, and the moat decisions."""
    for j in judged.judgements:
        if j.vs_baseline is not None:
            yield j.holder.digest, EvidenceKind.BASELINE, j.vs_baseline, None
        if j.decision is not None:
            yield j.holder.digest, EvidenceKind.TEST, j.decision.evidence, j.decision.call.value


def _fingerprints(job: JobSpec, result: RoundResult) -> tuple[tuple[Digest, FileFingerprint], ...]:
    """The file samples the agent took this round, by digest, kept for later copy checks."""
    if result.report is None:
        return ()
    images = {c.key: Digest(c.image.rpartition("@")[2]) for c in job.contestants}
    return tuple(
        (images[r.key], r.image.files)
        for r in result.report.results
        if r.key in images and r.image is not None and r.image.files is not None
    )
