"""The status API's answers: typed, read-only views over one daemon's state, built per request.

Standings with their uncertainty are computed once, by `publish.build_public_report`; the API, the
metrics and the page reuse that report. What only an operator needs (loop liveness, pods, spend,
weights) is added beside it from the same state. Nothing here writes, and nothing carries a
secret: a round's salt appears only once the round is over (as in the public report), and round
keys, upload URLs and settings secrets are never read.
"""

from __future__ import annotations

import json
import math
import time

from pydantic import BaseModel, ConfigDict

from cacheon.arena import Evidence, bounds, noise_bound
from cacheon.protocol import (
    Digest,
    Hotkey,
    JobSpec,
    PublicReport,
    PublicRound,
    PublishedVerdict,
    ReasonCode,
    Role,
    Standing,
)
from cacheon.validator.publish import RECENT_VERDICTS, build_public_report, public_round
from cacheon.validator.reasons import meaning
from cacheon.validator.state import (
    EvidenceKind,
    RoundRecord,
    RoundState,
    Verdict,
    WeightsRecord,
)
from cacheon.validator.view import DaemonView


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NextRound(_View):
    """When the next round can start: at the next loop pass, once a pod's place is free."""

    in_progress: str | None = None
    """The id of the oldest round planned or running now."""
    in_progress_since: float | None = None
    next_poll_at: float | None = None
    poll_interval_s: float
    max_challengers: int
    max_parallel: int
    """Rounds that may run at once, each on its own pod."""
    running: tuple[str, ...] = ()
    """Every round planned or running now, oldest first."""


class RoundInFlight(_View):
    round_id: str
    state: str
    pod: str | None
    """The lease the round runs on (None until its agent started)."""
    started_at: float
    challengers: tuple[str, ...]
    """Their hotkeys, in the round's order."""


class WeightsEntry(_View):
    block: int
    status: str
    detail: str
    at: float
    standings_id: int | None
    vector: dict[int, float]


class WeightsView(_View):
    last_attempt: WeightsEntry | None = None
    last_success: WeightsEntry | None = None
    interval_blocks: int | None
    """Configured interval; None means the subnet's tempo."""


class LeaseView(_View):
    name: str
    provider: str
    state: str
    price_per_hour: float
    created_at: float
    round_id: str | None = None
    """The round running on it now, if any."""


class PodsView(_View):
    running: tuple[LeaseView, ...]
    spent_today_usd: float
    daily_budget_usd: float


class Operations(_View):
    """What an operator watches and a miner has no use for."""

    loop_completed_at: float | None
    stopping: bool
    last_block: int | None
    pods: PodsView
    rounds: tuple[RoundInFlight, ...] = ()
    """Every round planned or running now."""
    weights: WeightsView
    next_round: NextRound


class StatusView(_View):
    report: PublicReport
    operations: Operations


class StandingsChange(_View):
    id: int
    round_id: str | None
    leader: str | None
    runner_up: str | None
    changes: tuple[dict[str, str | None], ...]
    at: float


class StandingsView(_View):
    leader: Standing | None
    runner_up: Standing | None
    pending: tuple[Standing, ...]
    launch_noise: float | None
    history: tuple[StandingsChange, ...]


class RoundSummary(_View):
    round_id: str
    block: int
    state: str
    reason: ReasonCode | None
    detail: str
    started_at: float
    ended_at: float | None
    contestants: int
    launches: int


class RoundView(_View):
    summary: RoundSummary
    evidence: PublicRound
    verdicts: tuple[PublishedVerdict, ...]


class Ratio(_View):
    """exp(mean log speed ratio) against `against`, with its one-sided bounds at the arena's alpha."""

    against: str
    launches: int
    ratio: float
    low: float
    high: float


class VerdictView(_View):
    verdict: PublishedVerdict
    meaning: str


class SubmissionView(_View):
    digest: str
    image: str
    uid: int
    first_seen: int
    current: bool
    size: int | None
    place: str | None
    """`leader`, `runner_up` or None."""
    call: str | None
    """The speed decision so far: crowned, not_faster, pending, or None before any launch."""
    vs_baseline: Ratio | None
    vs_opponent: Ratio | None
    charges: int
    verdicts: tuple[VerdictView, ...]


class SubmissionsView(_View):
    hotkey: str
    submissions: tuple[SubmissionView, ...]


def public_report(daemon: DaemonView) -> PublicReport:
    """The report the daemon would publish now, over the last round it started."""
    state = daemon.state
    uids = {r.submission.hotkey: r.submission.uid for r in state.submissions(current_only=True)}
    rounds = state.rounds(limit=1)
    return build_public_report(
        state,
        params=daemon.params,
        validator_hotkey=daemon.hotkey,
        evaluation_version=daemon.version,
        netuid=daemon.settings.chain.netuid,
        block=max(daemon.watchdog.last_block, 0),
        uids=uids,
        last_round=rounds[0] if rounds else None,
    )


def next_round(daemon: DaemonView) -> NextRound:
    running = daemon.state.unfinished_rounds()
    interval = daemon.settings.validator.poll_interval_s
    return NextRound(
        in_progress=running[0].round_id if running else None,
        in_progress_since=running[0].started_at if running else None,
        next_poll_at=daemon.loop_alive_at + interval if daemon.loop_alive_at else None,
        poll_interval_s=interval,
        max_challengers=daemon.params.max_challengers_per_round,
        max_parallel=daemon.settings.pods.max_parallel,
        running=tuple(record.round_id for record in running),
    )


def in_flight(daemon: DaemonView) -> tuple[RoundInFlight, ...]:
    return tuple(
        RoundInFlight(
            round_id=record.round_id,
            state=record.state.value,
            pod=record.pod,
            started_at=record.started_at,
            challengers=tuple(
                c.hotkey
                for c in JobSpec.model_validate_json(record.job).contestants
                if c.role is Role.CHALLENGER and c.hotkey is not None
            ),
        )
        for record in daemon.state.unfinished_rounds()
    )


def status(daemon: DaemonView) -> StatusView:
    leases = daemon.parts.leases
    log = daemon.state.weights_log(200)
    success = daemon.state.last_successful_weights()
    rounds = in_flight(daemon)
    on_pod = {r.pod: r.round_id for r in rounds if r.pod is not None}
    return StatusView(
        report=public_report(daemon),
        operations=Operations(
            loop_completed_at=daemon.loop_alive_at or None,
            stopping=daemon.stopping.is_set(),
            last_block=daemon.watchdog.last_block if daemon.watchdog.last_block >= 0 else None,
            pods=PodsView(
                running=tuple(
                    LeaseView(
                        name=lease.name,
                        provider=lease.provider,
                        state=lease.state.value,
                        price_per_hour=lease.price_per_hour,
                        created_at=lease.created_at,
                        round_id=on_pod.get(lease.name),
                    )
                    for lease in leases.ledger.live()
                ),
                spent_today_usd=leases.spent_today(),
                daily_budget_usd=daemon.settings.pods.daily_budget_usd,
            ),
            rounds=rounds,
            weights=WeightsView(
                last_attempt=_weights(log[0]) if log else None,
                last_success=None if success is None else _weights(success),
                interval_blocks=daemon.settings.validator.weights_interval_blocks,
            ),
            next_round=next_round(daemon),
        ),
    )


def standings(daemon: DaemonView) -> StandingsView:
    report = public_report(daemon)
    history = tuple(
        StandingsChange(
            id=int(str(row["id"])),
            round_id=_str(row["round_id"]),
            leader=_str(row["leader_hotkey"]),
            runner_up=_str(row["runner_hotkey"]),
            changes=tuple(json.loads(str(row["changes"] or "[]"))),
            at=float(str(row["created_at"])),
        )
        for row in daemon.state.standings_history()
    )
    return StandingsView(
        leader=report.leader,
        runner_up=report.runner_up,
        pending=report.pending,
        launch_noise=report.launch_noise,
        history=history,
    )


def rounds(daemon: DaemonView, limit: int) -> tuple[RoundSummary, ...]:
    return tuple(_summary(record) for record in daemon.state.rounds(limit=limit))


def round_view(daemon: DaemonView, round_id: str) -> RoundView | None:
    record = daemon.state.round(round_id)
    if record is None:
        return None
    verdicts = tuple(
        PublishedVerdict(
            hotkey=v.hotkey,
            digest=v.digest,
            outcome=v.outcome,
            reason=v.reason,
            detail=v.detail,
            round_id=v.round_id,
            at=v.created_at,
        )
        for v in daemon.state.round_verdicts(round_id)
    )
    return RoundView(summary=_summary(record), evidence=public_round(record), verdicts=verdicts)


def submissions(daemon: DaemonView, hotkey: str) -> SubmissionsView | None:
    """Everything this validator knows of one hotkey's commitments; None if it knows none."""
    state = daemon.state
    mine = [r for r in state.submissions() if r.submission.hotkey == hotkey]
    if not mine:
        return None
    sigma = noise_bound(state.noise_pairs(), daemon.params).core
    alpha = daemon.params.alpha
    _, places = state.standings()
    roles = {
        h.digest: name
        for name, h in (("leader", places.leader), ("runner_up", places.runner_up))
        if h is not None and h.hotkey == hotkey
    }
    views = []
    for record in sorted(mine, key=lambda r: r.submission.first_seen, reverse=True):
        sub = record.submission
        history = state.verdicts(digest=sub.digest, limit=RECENT_VERDICTS)
        views.append(
            SubmissionView(
                digest=sub.digest,
                image=record.image,
                uid=sub.uid,
                first_seen=sub.first_seen,
                current=record.current,
                size=record.size,
                place=roles.get(sub.digest),
                call=state.evidence_call(sub.digest),
                vs_baseline=_ratio(state.evidence(sub.digest, EvidenceKind.BASELINE), sigma, alpha),
                vs_opponent=_ratio(state.evidence(sub.digest, EvidenceKind.TEST), sigma, alpha),
                charges=state.charges(Hotkey(hotkey), Digest(sub.digest)),
                verdicts=tuple(_verdict(v) for v in history if v.hotkey == hotkey),
            )
        )
    return SubmissionsView(hotkey=hotkey, submissions=tuple(views))


def loop_age(daemon: DaemonView) -> float | None:
    """Seconds since the loop last completed a pass; None before the first."""
    return time.time() - daemon.loop_alive_at if daemon.loop_alive_at else None


def _ratio(evidence: Evidence | None, sigma: float, alpha: float) -> Ratio | None:
    if evidence is None or evidence.launches <= 0:
        return None
    b = bounds(evidence, sigma, alpha)
    return Ratio(
        against=evidence.against,
        launches=evidence.launches,
        ratio=math.exp(b.estimate),
        low=math.exp(b.lower),
        high=math.exp(b.upper),
    )


def _verdict(v: Verdict) -> VerdictView:
    published = PublishedVerdict(
        hotkey=v.hotkey,
        digest=v.digest,
        outcome=v.outcome,
        reason=v.reason,
        detail=v.detail,
        round_id=v.round_id,
        at=v.created_at,
    )
    return VerdictView(verdict=published, meaning=meaning(v.reason, v.outcome))


def _summary(record: RoundRecord) -> RoundSummary:
    evidence = public_round(record)
    over = record.state in (RoundState.SCORED, RoundState.VOID)
    return RoundSummary(
        round_id=record.round_id,
        block=record.block,
        state=record.state.value,
        reason=record.reason,
        detail=record.detail if over else "",
        started_at=record.started_at,
        ended_at=record.ended_at,
        contestants=len(evidence.contestants),
        launches=len(evidence.launches),
    )


def _weights(entry: WeightsRecord) -> WeightsEntry:
    return WeightsEntry(
        block=entry.block,
        status=entry.status,
        detail=entry.detail,
        at=entry.created_at,
        standings_id=entry.standings_id,
        vector={int(uid): weight for uid, weight in entry.vector.items()},
    )


def _str(value: object) -> str | None:
    return None if value is None else str(value)
