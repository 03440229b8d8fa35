"""Whole seasons on simulated pods: what a validator's settings cost per decision, and how long
a miner waits for one (DESIGN.md §4.5; `cacheon-validator simulate --season`).

A queue of challengers with known true speeds is decided by rounds laid out as the daemon lays
them out (`B, L, C1..Cn, L', B'`), each launch drawn from a noise model and timed by a launch-cost
model, on one or several pods at once. Every decision goes through the validator's own code
(`compare`, `look`, `advance`): the launch noise is estimated online from the simulated B/B'
pairs, several crowns of one round are settled by the standings machine, and a crown over a
leader that another pod's round replaced meanwhile does not count. Time is simulated: the season
is played in the order rounds finish, as the daemon scores them.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cacheon.arena.measure import Entry, Evidence, Roster, TimedSpeed, compare
from cacheon.arena.params import ArenaParams
from cacheon.arena.simulate import Noise, baseline_history
from cacheon.arena.standings import Contender, Crown, Holder, Standings, advance
from cacheon.arena.submissions import worth_a_round
from cacheon.arena.verdict import Call, LaunchNoise, look, noise_bound, pooled_sigma
from cacheon.protocol import Block, Digest, Hotkey, Workload

LAUNCH_DAY: Final = (0.0, -0.05, 0.005, 0.02, 0.03, 0.05, 0.20)
"""True speedups of a queue's challengers over the leader they meet first, in turn: an exact
copy, a slower server, a tie within the moat, and real wins of 2% to 20%."""
CLEAR_GAIN: Final = 0.03
"""A challenger this much faster than the leader it was judged against, ruled not faster, is a
lost crown."""
_BASELINE: Final = Entry("B", Digest("sha256:" + "b" * 64))


@dataclass(frozen=True)
class CostModel:
    """What one launch of Qwen2.5-72B-Instruct costs on an 8xH200 pod, in seconds.

    Every default here is still an estimate for 72B at TP8, stated with its source: start-up is
    loading ~142 GB of bf16 weights from the pod's disk cache and capturing CUDA graphs, a few
    minutes (the first arena allowed 750-1200 s and saw minutes); decode is bandwidth-bound,
    142 GB over 8 x 4.8 TB/s of HBM3e is 3.7 ms per step at peak and engines reach about half of
    it with all-reduce overhead, so 12 ms per token alone and more as the batch grows; TTFT is
    prefill of a few hundred prompt tokens plus queueing.

    Measured so far, on one H200 with the Qwen2.5-0.5B shape only (docs/benchmarks.md): ITL
    3.5-4.5 ms and TTFT 5 ms (c=1) to 280 ms (c=64, the test server's serial prefill) at 256
    tokens; a launch of the bench server took 14.2 s, of which ~5 s measuring and 2.5 s model
    start-up, so at that shape the process start and the stop, not the model, set the fixed
    cost; launch noise 0.9-1.7% between launches (sd of the log speed, varying by machine and
    day). The tensor-parallel server that would measure 72B at TP8 (`bench/gpu_server.py --tp 8
    --preset qwen2.5-72b`) exists and matches one device on CPU and at TP1 on the H200, but has
    not run at TP8: the 8-GPU kind was withheld (issue 22), so start-up, TTFT and ITL at
    production shape remain the estimates above.
    """

    startup_s: float = 420.0
    stop_s: float = 30.0
    """The contract's SIGTERM allowance, used in full by most engines."""
    round_overhead_s: float = 120.0
    """Per round on a warm pod: agent check, model verification, report handoff."""
    gpus: int = 8
    ttft_s: tuple[tuple[int, float], ...] = ((1, 0.08), (16, 0.2), (64, 0.6))
    itl_s: tuple[tuple[int, float], ...] = ((1, 0.012), (16, 0.016), (64, 0.024))

    def request_s(self, concurrency: int, max_tokens: int) -> float:
        ttft, itl = dict(self.ttft_s), dict(self.itl_s)
        nearest = min(ttft, key=lambda c: (abs(math.log(c / concurrency)), c))
        return ttft[nearest] + max_tokens * itl[nearest]

    def measure_s(self, workload: Workload) -> float:
        """Warm-up and every block of every level, closed loop: ceil(requests / c) waves each."""
        total = 0.0
        for c in workload.concurrencies:
            wave = self.request_s(c, workload.max_tokens)
            warmup = (
                math.ceil(max(workload.warmup_requests, c) / c) if workload.warmup_requests else 0
            )
            blocks = workload.blocks_at(c) * math.ceil(workload.prompts_at(c) / c)
            total += (warmup + blocks) * wave
        return total

    def launch_s(self, workload: Workload) -> float:
        return self.startup_s + self.measure_s(workload) + self.stop_s


@dataclass(frozen=True)
class SeasonConfig:
    params: ArenaParams
    workload: Workload
    cost: CostModel = field(default_factory=CostModel)
    noise: Noise = field(default_factory=lambda: Noise(launch=0.01, block=0.0))
    request_noise: float = 0.025
    """Per-request noise of T_k that does not cancel between contestants (log scale): a level of
    N requests adds request_noise / sqrt(N) to its launch, so fewer prompts cost precision.
    Calibrated by `bench/launch_noise.py` on one H200 (0.5B shape, 128 tokens, 13 launches): 2.6%
    at c=16 and 1.7% at c=64 after each launch's offset and each prompt's own speed are taken
    out, so 128 requests a level add only ~0.15% to a launch whose offset alone was 1.7%; the
    larger level's value is the default until it is measured at production shape."""
    pods: int = 1
    legacy_floor: float | None = None
    """Judge with the rule this replaced: the point estimate, never below this fixed floor."""

    def launch_spread(self) -> float:
        w = self.workload
        levels = [w.blocks_at(c) * w.prompts_at(c) for c in w.concurrencies]
        variance = math.fsum(self.request_noise**2 / n for n in levels) / len(levels) ** 2
        return math.sqrt(variance)


@dataclass
class _Challenger:
    index: int
    gain: float
    """True log speed over the initial leader."""
    arrived: float
    holder: Holder
    evidence: Evidence | None = None
    running: bool = False
    decided_at: float | None = None
    call: Call | None = None
    gain_over_opponent: float = 0.0


@dataclass(frozen=True)
class _Round:
    chosen: list[_Challenger]
    order: tuple[str, ...]


def _key(challenger: _Challenger) -> str:
    return f"C{challenger.index}"


@dataclass(frozen=True)
class SeasonResult:
    gpu_hours: float
    decided: int
    challengers: int
    latencies_h: tuple[float, ...]
    """Hours from arrival to the terminal verdict, per decided challenger, sorted."""
    drained_h: float
    """When the last decision was reached."""
    false_crowns: int
    """Installed leaders that were not faster than the leader they replaced at all."""
    moat_crowns: int
    """Installed leaders faster than the one they replaced, but by less than the moat."""
    lost_crowns: int
    """Challengers at least CLEAR_GAIN faster than their opponent, ruled not faster."""
    rounds: int

    @property
    def gpu_hours_per_decision(self) -> float:
        return self.gpu_hours / self.decided if self.decided else math.inf


def play(
    rng: random.Random, config: SeasonConfig, gains: Sequence[float], arrivals: Sequence[float]
) -> SeasonResult:
    """One season: challengers with true `gains` over the initial leader arriving at `arrivals`
    (seconds), decided on `config.pods` pods at once."""
    season = _Season(rng, config, gains, arrivals)
    return season.run()


class _Season:
    def __init__(
        self,
        rng: random.Random,
        config: SeasonConfig,
        gains: Sequence[float],
        arrivals: Sequence[float],
    ) -> None:
        self.rng, self.config = rng, config
        self.queue = [
            _Challenger(i, gain, at, Holder(Hotkey(f"c{i}"), Digest(f"sha256:{i:064x}")))
            for i, (gain, at) in enumerate(zip(gains, arrivals, strict=True))
        ]
        self.leader = Holder(Hotkey("leader0"), Digest("sha256:" + "f" * 64))
        self.truth = {self.leader: 0.0, **{c.holder: c.gain for c in self.queue}}
        self.history = baseline_history(rng, config.noise)
        self.launch_s = config.cost.launch_s(config.workload)
        self.spread = config.launch_spread()
        self.gpu_seconds = 0.0
        self.rounds = 0
        self.crowns = {"false": 0, "moat": 0}

    def run(self) -> SeasonResult:
        """Discrete events: rounds start at `now` on idle pods, and time moves to the next round's
        end (or the next arrival when nothing runs). While another round is in flight, a free
        pod starts one only if it fills at least half its places (`worth_a_round`), as the
        daemon does: a thin round pays the same bookends for fewer challengers."""
        events: list[tuple[float, int, int, _Round, Holder]] = []
        idle = list(range(self.config.pods))
        size = self.config.params.max_challengers_per_round
        now, sequence = 0.0, 0
        while True:
            while idle:
                ready = [
                    c
                    for c in self.queue
                    if c.decided_at is None and not c.running and c.arrived <= now
                ]
                if not worth_a_round(len(ready), size, in_flight=len(events)):
                    break
                chosen = ready[:size]
                for c in chosen:
                    c.running = True
                order = ("B", "L", *(_key(c) for c in chosen), "L", "B")
                duration = self.config.cost.round_overhead_s + len(order) * self.launch_s
                self.gpu_seconds += duration * self.config.cost.gpus
                planned = _Round(chosen, order)
                heapq.heappush(events, (now + duration, sequence, idle.pop(), planned, self.leader))
                sequence += 1
            if events:
                now, _, pod, planned, opponent = heapq.heappop(events)
                self._conclude(now, planned, opponent)
                idle.append(pod)
                continue
            later = [c.arrived for c in self.queue if c.decided_at is None and c.arrived > now]
            if not later:
                break
            now = min(later)
        decided = [c for c in self.queue if c.decided_at is not None]
        latencies = sorted((c.decided_at or 0.0) - c.arrived for c in decided)
        lost = sum(
            1 for c in decided if c.call is Call.NOT_FASTER and c.gain_over_opponent >= CLEAR_GAIN
        )
        return SeasonResult(
            gpu_hours=self.gpu_seconds / 3600,
            decided=len(decided),
            challengers=len(self.queue),
            latencies_h=tuple(t / 3600 for t in latencies),
            drained_h=max((c.decided_at or 0.0 for c in decided), default=0.0) / 3600,
            false_crowns=self.crowns["false"],
            moat_crowns=self.crowns["moat"],
            lost_crowns=lost,
            rounds=self.rounds,
        )

    def _conclude(self, end: float, planned: _Round, opponent: Holder) -> None:
        """Score a finished round against the leader it started with, as the daemon does."""
        chosen = planned.chosen
        self.rounds += 1
        for c in chosen:
            c.running = False
        roster = Roster(
            _BASELINE,
            Entry("L", opponent.digest),
            tuple(Entry(_key(c), c.holder.digest) for c in chosen),
        )
        layout = planned.order
        true = {"B": 0.0, "L": self.truth[opponent]}
        true.update({_key(c): c.gain for c in chosen})
        runs = [
            TimedSpeed(key, slot, self._draw(true[key], slot)) for slot, key in enumerate(layout)
        ]
        noise = self._noise()
        measured = compare(roster, runs, noise.core)
        self.history.extend(measured.pairs)
        if measured.void is not None:
            return
        crowns = []
        for c in chosen:
            increment = measured.tests.get(c.holder.digest)
            if increment is None:
                continue
            decision = look(c.evidence, increment, noise, self.config.params)
            c.evidence = decision.evidence
            c.gain_over_opponent = math.expm1(c.gain - self.truth[opponent])
            if decision.call is Call.CROWNED:
                crowns.append(
                    Crown(c.holder, opponent.digest, decision.bounds.lower, increment.mean)
                )
            elif decision.call is Call.NOT_FASTER:
                c.decided_at, c.call = end, Call.NOT_FASTER
        field_ = [Contender(h, Block(i), True, None) for i, h in enumerate(self.truth)]
        registered = frozenset(h.hotkey for h in self.truth)
        moved = advance(Standings(self.leader), field_, crowns, registered, _BASELINE.digest)
        installed = moved.standings.leader
        if installed is not None and installed != self.leader:
            gain = math.expm1(self.truth[installed] - self.truth[self.leader])
            self.crowns["false"] += gain <= 0
            self.crowns["moat"] += 0 < gain < self.config.params.moat
            winner = next(c for c in chosen if c.holder == installed)
            winner.decided_at, winner.call = end, Call.CROWNED
            self.leader = installed

    def _noise(self) -> LaunchNoise:
        floor = self.config.legacy_floor
        if floor is not None:
            return LaunchNoise.known(pooled_sigma(self.history, floor))
        return noise_bound(self.history, self.config.params)

    def _draw(self, log_speed: float, slot: int) -> float:
        noise = self.config.noise
        return (
            log_speed
            + noise.launch_offset(self.rng)
            + noise.drift * slot
            + self.rng.gauss(0.0, self.spread)
        )


@dataclass(frozen=True)
class Summary:
    """Seasons of one configuration, pooled."""

    label: str
    seasons: int
    gpu_hours_per_decision: float
    latency_p50_h: float
    latency_p95_h: float
    drained_h: float
    """Mean time to decide the whole queue."""
    false_crowns: int
    moat_crowns: int
    lost_crowns: int
    crowns_possible: int
    """Challengers with a clear gain at arrival, summed over seasons (for the lost-crown rate)."""
    launch_min: float


def summarise(
    rng: random.Random,
    label: str,
    config: SeasonConfig,
    *,
    seasons: int,
    challengers: int = 13,
    gains: Sequence[float] = LAUNCH_DAY,
) -> Summary:
    """`seasons` launch days: `challengers` queued at once, their gains cycling through `gains`,
    in a fresh random first-seen order each season (which one meets the leader first matters:
    a +20% crown early makes every later challenger an easy not-faster)."""
    queue = [gains[i % len(gains)] for i in range(challengers)]
    results = []
    for _ in range(seasons):
        rng.shuffle(queue)
        results.append(play(rng, config, queue, [0.0] * challengers))
    latencies = sorted(t for r in results for t in r.latencies_h)
    return Summary(
        label=label,
        seasons=seasons,
        gpu_hours_per_decision=math.fsum(r.gpu_hours for r in results)
        / max(1, sum(r.decided for r in results)),
        latency_p50_h=_quantile(latencies, 0.5),
        latency_p95_h=_quantile(latencies, 0.95),
        drained_h=statistics.fmean(r.drained_h for r in results),
        false_crowns=sum(r.false_crowns for r in results),
        moat_crowns=sum(r.moat_crowns for r in results),
        lost_crowns=sum(r.lost_crowns for r in results),
        crowns_possible=seasons * sum(1 for g in queue if g >= CLEAR_GAIN),
        launch_min=config.cost.launch_s(config.workload) / 60,
    )


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def render(summaries: Sequence[Summary]) -> str:
    head = (
        f"{'settings':<34}{'launch':>8}{'GPU-h/decision':>16}{'p50 h':>8}{'p95 h':>8}"
        f"{'drain h':>9}{'false':>7}{'<moat':>7}{'lost':>10}"
    )
    lines = [head]
    for s in summaries:
        lines.append(
            f"{s.label:<34}{s.launch_min:>6.1f}m{s.gpu_hours_per_decision:>16.1f}"
            f"{s.latency_p50_h:>8.1f}{s.latency_p95_h:>8.1f}{s.drained_h:>9.1f}"
            f"{s.false_crowns:>7}{s.moat_crowns:>7}{s.lost_crowns:>5}/{s.crowns_possible:<4}"
        )
    return "\n".join(lines)


LEGACY_FLOOR: Final = 0.02
LEGACY_PLACES: Final = 4
"""The settings this design replaced: a fixed 2% noise floor over the point estimate, four
challengers a round, and every level measured on 2 blocks of 64 prompts after 8 warm-ups."""


def versus_legacy(
    rng: random.Random,
    params: ArenaParams,
    workload: Workload,
    noise: Noise,
    *,
    seasons: int,
    challengers: int = 13,
    pods: Sequence[int] = (1, 2, 4, 8),
) -> list[Summary]:
    """Launch days under the replaced settings, then under `params` and `workload` on
    `pods` pods at once: the table `cacheon-validator simulate --season` prints."""
    legacy_params = ArenaParams(**{**vars(params), "max_challengers_per_round": LEGACY_PLACES})
    legacy = SeasonConfig(legacy_params, Workload(), noise=noise, legacy_floor=LEGACY_FLOOR)
    rows = [summarise(rng, "replaced: 2% floor, 2x64, 4/round", legacy, seasons=seasons,
                      challengers=challengers)]  # fmt: skip
    places = params.max_challengers_per_round
    for count in pods:
        config = SeasonConfig(params, workload, noise=noise, pods=count)
        label = f"these settings, {places}/round, {count} pod{'s' if count > 1 else ''}"
        rows.append(summarise(rng, label, config, seasons=seasons, challengers=challengers))
    return rows
