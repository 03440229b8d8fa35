"""Prometheus metrics of one validator, read from its state at scrape time.

Nothing in the loop updates a gauge: every value is read when Prometheus asks, from the same
state and public report the API serves, so a metric can never disagree with /api/status or go
stale while the loop is wedged (the timestamps then age, which is what an alert wants). The
collector lives in the web server's own registry, not prometheus-client's global one, so two
daemons in one process (tests) never share or collide on metrics. The registry also holds the
standard process metrics (`process_start_time_seconds`, which the restart alert watches).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from cacheon.chain.weights import WeightsStatus
from cacheon.protocol import Standing
from cacheon.validator.health import Health, check
from cacheon.validator.state import RoundState
from cacheon.validator.view import DaemonView
from cacheon.validator.views import StatusView, status

WEIGHTS_STATES = (*(s.value for s in WeightsStatus), "invalid")
"""Every status a weights attempt is recorded with (chain.weights plus the refused vector)."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports, gathered before rendering (the collector cannot await)."""

    health: Health
    status: StatusView
    rounds: dict[str, int]
    verdicts: dict[tuple[str, str], int]
    last_scored_at: float | None
    """When the latest scored round ended."""
    reveals_missed: int

    @classmethod
    async def take(cls, daemon: DaemonView) -> Snapshot:
        state = daemon.state
        rounds = {str(kind): n for kind, n in state.round_counts().items()}
        verdicts = {
            (str(outcome), str(reason or "")): n
            for (outcome, reason), n in state.verdict_counts().items()
        }
        scored = [
            r.ended_at
            for r in state.rounds(limit=50)
            if r.state is RoundState.SCORED and r.ended_at is not None
        ]
        missed = state.weights_counts().get(WeightsStatus.REVEAL_MISSED.value, 0)
        return cls(
            await check(daemon), status(daemon), rounds, verdicts, max(scored, default=None), missed
        )


class DaemonCollector(Collector):
    """Renders the latest `Snapshot`; the web handler sets it right before each scrape."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        report, ops = snap.status.report, snap.status.operations
        info = GaugeMetricFamily(
            "cacheon_validator_info",
            "Versions of this validator (value is always 1)",
            labels=["validator_version", "evaluation_version", "hotkey", "netuid"],
        )
        info.add_metric(
            [
                report.validator_version,
                report.evaluation_version,
                report.validator_hotkey,
                str(report.netuid),
            ],
            1,
        )
        yield info
        yield _gauge(
            "cacheon_loop_alive",
            "1 while the main loop completes passes",
            int(snap.health.loop_alive),
        )
        yield _gauge(
            "cacheon_chain_reachable", "1 while the chain answers", int(snap.health.chain_reachable)
        )
        if ops.loop_completed_at is not None:
            yield _gauge(
                "cacheon_loop_last_success_timestamp_seconds",
                "Unix time the main loop last completed a pass",
                ops.loop_completed_at,
            )
        if snap.health.head is not None:
            yield _gauge("cacheon_chain_head_block", "The chain's head block", snap.health.head)
        if ops.last_block is not None:
            yield _gauge(
                "cacheon_chain_polled_block", "Block of the loop's last poll", ops.last_block
            )
        if snap.health.head is not None and ops.last_block is not None:
            yield _gauge(
                "cacheon_block_lag_blocks",
                "Blocks between the chain's head and the loop's last poll",
                max(0, snap.health.head - ops.last_block),
            )
        rounds = GaugeMetricFamily("cacheon_rounds", "Rounds by state", labels=["state"])
        for state in RoundState:
            rounds.add_metric([state.value], snap.rounds.get(state.value, 0))
        yield rounds
        verdicts = CounterMetricFamily(
            "cacheon_verdicts",
            "Verdicts reached, by outcome and reason",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), count in sorted(snap.verdicts.items()):
            verdicts.add_metric([outcome, reason], count)
        yield verdicts
        if snap.last_scored_at is not None:
            yield _gauge(
                "cacheon_round_last_scored_timestamp_seconds",
                "Unix time the latest scored round ended",
                snap.last_scored_at,
            )
        yield _gauge(
            "cacheon_round_in_progress", "1 while a round is planned or running",
            int(ops.next_round.in_progress is not None),
        )  # fmt: skip
        yield _gauge("cacheon_rounds_in_flight", "Rounds planned or running now", len(ops.rounds))
        yield _gauge(
            "cacheon_rounds_max_parallel", "Rounds that may run at once, one pod each",
            ops.next_round.max_parallel,
        )  # fmt: skip
        flying = GaugeMetricFamily(
            "cacheon_round_started_timestamp_seconds",
            "Unix time each round in flight started, by round and the pod that runs it",
            labels=["round_id", "pod"],
        )
        for r in ops.rounds:
            flying.add_metric([r.round_id, r.pod or ""], r.started_at)
        yield flying
        yield _gauge(
            "cacheon_pending_challengers",
            "Challengers still accumulating evidence",
            len(report.pending),
        )
        yield _gauge("cacheon_pods_running", "Pods leased now", len(ops.pods.running))
        yield _gauge(
            "cacheon_spend_today_usd", "Pod spend since 00:00 UTC", ops.pods.spent_today_usd
        )
        yield _gauge("cacheon_daily_budget_usd", "The daily pod budget", ops.pods.daily_budget_usd)
        yield from _weights(snap)
        if report.launch_noise is not None:
            yield _gauge(
                "cacheon_launch_noise_sigma",
                "Pooled launch-to-launch noise (log scale) used by the moat decision",
                report.launch_noise,
            )
        ratio = GaugeMetricFamily(
            "cacheon_speed_ratio",
            "Speed against the baseline, with one-sided bounds at the arena's alpha",
            labels=["place", "bound"],
        )
        for place, standing in (("leader", report.leader), ("runner_up", report.runner_up)):
            for bound, value in _bounds(standing):
                ratio.add_metric([place, bound], value)
        yield ratio


def _weights(snap: Snapshot) -> Iterator[Metric]:
    weights = snap.status.operations.weights
    current = GaugeMetricFamily(
        "cacheon_weights_status", "Status of the last weights attempt (1 for the current one)",
        labels=["status"],
    )  # fmt: skip
    last = weights.last_attempt
    for name in WEIGHTS_STATES:
        current.add_metric([name], int(last is not None and last.status == name))
    yield current
    yield CounterMetricFamily(
        "cacheon_weights_reveals_missed",
        "Weights commits whose reveal never put the committed row on chain",
        value=snap.reveals_missed,
    )
    if last is not None:
        yield _gauge(
            "cacheon_weights_last_attempt_timestamp_seconds",
            "Unix time of the last attempt",
            last.at,
        )
    success = weights.last_success
    if success is None:
        return
    yield _gauge(
        "cacheon_weights_last_success_timestamp_seconds",
        "Unix time weights last landed",
        success.at,
    )
    yield _gauge(
        "cacheon_weights_last_success_block", "Block weights last landed at", success.block
    )
    head = snap.health.head if snap.health.head is not None else snap.status.operations.last_block
    if head is not None:
        yield _gauge(
            "cacheon_weights_age_blocks",
            "Blocks since weights last landed",
            max(0, head - success.block),
        )


def _bounds(standing: Standing | None) -> Iterator[tuple[str, float]]:
    if standing is None or standing.speed_ratio is None:
        return
    yield "estimate", standing.speed_ratio
    if standing.ratio_low is not None:
        yield "low", standing.ratio_low
    if standing.ratio_high is not None:
        yield "high", standing.ratio_high


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry() -> tuple[CollectorRegistry, DaemonCollector]:
    """A registry of its own holding one daemon collector."""
    collector = DaemonCollector()
    own = CollectorRegistry(auto_describe=False)
    own.register(collector)
    ProcessCollector(registry=own)
    return own, collector
