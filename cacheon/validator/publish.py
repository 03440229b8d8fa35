"""The public report: standings with their uncertainty, recent verdicts, the round's raw evidence.

Published to S3 after every round (and served by the status API): a miner sees why it won or
lost, and anyone can recompute the ratios from the per-block launches and check that the seed
came from the block hash and the salt revealed after the round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from cacheon import __version__
from cacheon.arena import ArenaParams, Holder, bounds, noise_bound
from cacheon.protocol import (
    Hotkey,
    JobSpec,
    PublicReport,
    PublicRound,
    PublishedVerdict,
    RoundReport,
    Standing,
    Uid,
)
from cacheon.validator.state import EvidenceKind, RoundRecord, RoundState, ValidatorState

RECENT_VERDICTS = 50


def build_public_report(
    state: ValidatorState,
    *,
    params: ArenaParams,
    validator_hotkey: str,
    evaluation_version: str,
    netuid: int,
    block: int,
    uids: Mapping[Hotkey, Uid],
    last_round: RoundRecord | None,
) -> PublicReport:
    sigma = noise_bound(state.noise_pairs(), params).core
    _, standings = state.standings()
    images = {(r.submission.hotkey, r.submission.digest): r.image for r in state.submissions()}

    def standing(holder: Holder) -> Standing:
        evidence = state.evidence(holder.digest, EvidenceKind.BASELINE)
        ratio = low = high = None
        if evidence is not None and evidence.launches > 0:
            b = bounds(evidence, sigma, params.alpha)
            ratio, low, high = math.exp(b.estimate), math.exp(b.lower), math.exp(b.upper)
        return Standing(
            hotkey=holder.hotkey,
            uid=uids.get(holder.hotkey),
            digest=holder.digest,
            image=images.get((holder.hotkey, holder.digest), holder.digest),
            speed_ratio=ratio,
            ratio_low=low,
            ratio_high=high,
            launches=0 if evidence is None else evidence.launches,
        )

    places = {h for h in (standings.leader, standings.runner_up) if h is not None}
    pending = [
        standing(Holder(r.submission.hotkey, r.submission.digest))
        for r in state.submissions(current_only=True)
        if Holder(r.submission.hotkey, r.submission.digest) not in places
        and state.evidence_call(r.submission.digest) == "pending"
    ]
    verdicts = tuple(
        PublishedVerdict(
            hotkey=v.hotkey,
            digest=v.digest,
            image=images.get((v.hotkey, v.digest)),
            outcome=v.outcome,
            reason=v.reason,
            detail=v.detail,
            round_id=v.round_id,
            at=v.created_at,
        )
        for v in state.verdicts(limit=RECENT_VERDICTS)
    )
    return PublicReport(
        validator_hotkey=validator_hotkey,
        validator_version=__version__,
        evaluation_version=evaluation_version,
        netuid=netuid,
        block=block,
        published_at=time.time(),
        launch_noise=sigma,
        leader=None if standings.leader is None else standing(standings.leader),
        runner_up=None if standings.runner_up is None else standing(standings.runner_up),
        pending=tuple(pending),
        verdicts=verdicts,
        round=None if last_round is None else public_round(last_round),
    )


def public_round(record: RoundRecord) -> PublicRound:
    job = JobSpec.model_validate_json(record.job)
    report = None if record.report is None else RoundReport.model_validate_json(record.report)
    over = record.state in (RoundState.SCORED, RoundState.VOID)
    return PublicRound(
        round_id=record.round_id,
        block=record.block,
        block_hash=record.block_hash,
        salt_hash=record.salt_hash,
        salt=record.salt if over else None,
        seed=record.seed,
        state=record.state.value,
        reason=record.reason,
        launch_order=job.launch_order,
        contestants=job.contestants,
        launches=() if report is None else report.launches,
        results=() if report is None else report.results,
    )
