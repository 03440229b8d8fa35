"""Synthetic challenger lifetimes, to measure the verdict rules under noise before trusting them.

Each lifetime plays rounds laid out as the agent runs them (B, L, C, L', B'), draws every launch
and block from a noise model (offsets, block noise, drift, a share of outlier launches), and
feeds the results through the same comparison and decision code the validator uses, with the
launch noise estimated online from the simulated B/B' pairs exactly as the validator estimates it
(`noise_bound`), never from the known value, until the challenger is crowned or ruled not faster.
The naive rule it is set against is the first arena's: one launch each, crown if the ratio
exceeds 1 + moat. Randomness comes only from the generator passed in, so a table is reproducible
from its seed. Whole seasons, with their costs, are `season.py`.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cacheon.arena.measure import Entry, Evidence, Roster, TimedSpeed, compare
from cacheon.arena.params import ArenaParams
from cacheon.arena.standings import Contender, Crown, Holder, Standings, advance
from cacheon.arena.verdict import Call, look, noise_bound
from cacheon.protocol import Block, Digest, Hotkey, Workload

SPEEDUPS: Final = (0.0, 0.005, 0.02, 0.03, 0.05)
"""True speedups over the leader in the table: an exact copy, a tie within the moat, real wins."""
POWER_TARGET: Final = 0.9

_WORKLOAD = Workload()
_BLOCKS_PER_LAUNCH: Final = len(_WORKLOAD.concurrencies) * _WORKLOAD.blocks_per_level
_HISTORY_ROUNDS: Final = 64
"""Rounds whose B/B' pairs are already in the noise history when a lifetime starts."""
_LEADER_LOG_SPEED: Final = math.log(1.2)
_ROSTER: Final = Roster(
    baseline=Entry("B", Digest("sha256:" + "b" * 64)),
    leader=Entry("L", Digest("sha256:" + "1" * 64)),
    challengers=(Entry("C", Digest("sha256:" + "c" * 64)),),
)
_LAYOUT: Final = ("B", "L", "C", "L", "B")


@dataclass(frozen=True)
class Noise:
    """The noise model, all on the log-speed scale (0.02 is about 2%)."""

    launch: float
    """Standard deviation between launches of the same image."""
    block: float
    """Standard deviation between blocks within one launch."""
    drift: float = 0.0
    """Change of every server's speed per launch slot within a round (clocks, heat)."""
    position_bias: float = 0.0
    """What a challenger reads faster merely from its place in the run order."""
    outliers: float = 0.0
    """Share of launches that are outliers (a pod hiccup, a noisy neighbour): heavy tails."""
    outlier_scale: float = 0.10
    """Standard deviation of an outlier launch's extra offset."""

    def launch_offset(self, rng: random.Random) -> float:
        """One launch's own offset: normal, or from the outliers' wider normal."""
        scale = self.outlier_scale if rng.random() < self.outliers else self.launch
        return rng.gauss(0.0, scale)


@dataclass(frozen=True)
class Rates:
    """How one rule fared over many lifetimes of one true speedup."""

    trials: int
    crowned: int
    launches: tuple[int, ...]
    """Challenger launches spent per lifetime, sorted."""

    @property
    def crown_rate(self) -> float:
        return self.crowned / self.trials

    @property
    def mean_launches(self) -> float:
        return statistics.fmean(self.launches)

    @property
    def p95_launches(self) -> int:
        return self.launches[math.ceil(0.95 * len(self.launches)) - 1]


@dataclass(frozen=True)
class Row:
    speedup: float
    sequential: Rates
    naive: Rates


@dataclass(frozen=True)
class Table:
    noise: Noise
    params: ArenaParams
    rows: tuple[Row, ...]
    launches_for_power: tuple[tuple[float, int | None], ...]
    """(speedup, the smallest max_launches giving POWER_TARGET, None beyond `power_limit`)."""
    power_limit: int
    two_crowns: tuple[int, int] = (0, 0)
    """(lifetimes where the faster of two crowns led, lifetimes), `two_crowns` at its defaults."""


def _launch(rng: random.Random, log_speed: float, slot: int, noise: Noise) -> float:
    # Blocks carry equal requests, so the launch's log speed takes the mean of its blocks' noise,
    # drawn here in one go: the mean of n normal draws is normal with sigma / sqrt(n).
    blocks = rng.gauss(0.0, noise.block / math.sqrt(_BLOCKS_PER_LAUNCH))
    return log_speed + noise.launch_offset(rng) + noise.drift * slot + blocks


def _round(rng: random.Random, speedup: float, noise: Noise) -> list[TimedSpeed]:
    truth = {"B": 0.0, "L": _LEADER_LOG_SPEED}
    truth["C"] = _LEADER_LOG_SPEED + math.log1p(speedup) + noise.position_bias
    return [
        TimedSpeed(key, slot, _launch(rng, truth[key], slot, noise))
        for slot, key in enumerate(_LAYOUT)
    ]


def baseline_history(
    rng: random.Random, noise: Noise, rounds: int = _HISTORY_ROUNDS
) -> list[float]:
    """The B/B' pairs of `rounds` earlier rounds, as the validator's noise history holds them."""
    first, last = 0, len(_LAYOUT) - 1
    return [_launch(rng, 0.0, last, noise) - _launch(rng, 0.0, first, noise) for _ in range(rounds)]


def lifetime(
    rng: random.Random, speedup: float, noise: Noise, params: ArenaParams
) -> tuple[bool, int]:
    """One challenger from first launch to verdict: (crowned, challenger launches spent)."""
    digest = _ROSTER.challengers[0].digest
    history = baseline_history(rng, noise)
    evidence: Evidence | None = None
    spent = 0
    while spent < 4 * params.max_launches:  # voided rounds cost a launch but are not looks
        launch_noise = noise_bound(history, params)
        measured = compare(_ROSTER, _round(rng, speedup, noise), launch_noise.core)
        history.extend(measured.pairs)
        spent += 1
        if measured.void is not None:
            continue
        decision = look(evidence, measured.tests[digest], launch_noise, params)
        if decision.call is not Call.PENDING:
            return decision.call is Call.CROWNED, spent
        evidence = decision.evidence
    return False, spent


def two_crowns(
    rng: random.Random,
    noise: Noise,
    params: ArenaParams,
    *,
    slower: float = 0.067,
    faster: float = 0.21,
    arrives: int = 4,
    rounds: int = 40,
) -> bool:
    """Whether the faster of two challengers ends up leading (DESIGN.md §4.5).

    The slower one (`slower` over the leader) has been pending for `arrives - 1` rounds when the
    faster one arrives; both may crown in one round. The standings machine (`advance`) installs
    one crown, by that round's direct comparison, and the other stays pending against the new
    leader; the season goes on until nobody is pending against whoever leads.
    """
    truth = {"L0": 0.0, "C1": math.log1p(slower), "C2": math.log1p(faster)}
    holders = {key: Holder(Hotkey(key), Digest("sha256:" + tag * 64)) for key, tag in
               (("L0", "1"), ("C1", "2"), ("C2", "3"))}  # fmt: skip
    keys = {holder.digest: key for key, holder in holders.items()}
    standings = Standings(holders["L0"])
    history = baseline_history(rng, noise)
    evidence: dict[str, Evidence | None] = {"C1": None, "C2": None}
    decided: set[str] = set()
    for index in range(rounds):
        leader = keys[standings.leader.digest] if standings.leader else "L0"
        entered = [k for k in ("C1", "C2") if k not in decided and k != leader]
        if index + 1 < arrives:
            entered = [k for k in entered if k == "C1"]
        elif not entered:
            break
        if not entered:
            continue  # the faster one has not arrived yet
        roster = Roster(
            _ROSTER.baseline,
            Entry("L", holders[leader].digest),
            tuple(Entry(k, holders[k].digest) for k in entered),
        )
        layout = ["B", "L", *entered, "L", "B"]
        true = {"B": 0.0, "L": _LEADER_LOG_SPEED + truth[leader]}
        true.update({k: _LEADER_LOG_SPEED + truth[k] for k in entered})
        runs = [
            TimedSpeed(k, slot, _launch(rng, true[k], slot, noise)) for slot, k in enumerate(layout)
        ]
        launch_noise = noise_bound(history, params)
        measured = compare(roster, runs, launch_noise.core)
        history.extend(measured.pairs)
        if measured.void is not None:
            continue
        crowns = []
        for k in entered:
            increment = measured.tests[holders[k].digest]
            decision = look(evidence[k], increment, launch_noise, params)
            evidence[k] = decision.evidence
            if decision.call is Call.CROWNED:
                crowns.append(Crown(holders[k], increment.against, decision.bounds.lower,
                                    increment.mean))  # fmt: skip
            elif decision.call is Call.NOT_FASTER:
                decided.add(k)
        field = [Contender(h, Block(i), True, None) for i, h in enumerate(holders.values())]
        moved = advance(standings, field, crowns, frozenset(holders[k].hotkey for k in truth),
                        _ROSTER.baseline.digest)  # fmt: skip
        if moved.standings.leader != standings.leader and moved.standings.leader is not None:
            decided.add(keys[moved.standings.leader.digest])
        standings = moved.standings
    return standings.leader == holders["C2"]


def naive(rng: random.Random, speedup: float, noise: Noise, params: ArenaParams) -> bool:
    """The one-launch rule: crown if the challenger's single launch beats the leader's by the moat."""
    leader = _launch(rng, _LEADER_LOG_SPEED, 1, noise)
    challenger = _launch(
        rng, _LEADER_LOG_SPEED + math.log1p(speedup) + noise.position_bias, 2, noise
    )
    return challenger - leader > params.log_moat


def rates(
    rng: random.Random, speedup: float, noise: Noise, params: ArenaParams, trials: int
) -> tuple[Rates, Rates]:
    """The sequential rule's and the naive rule's rates over `trials` lifetimes each."""
    lives = [lifetime(rng, speedup, noise, params) for _ in range(trials)]
    naive_crowns = sum(naive(rng, speedup, noise, params) for _ in range(trials))
    sequential = Rates(trials, sum(c for c, _ in lives), tuple(sorted(n for _, n in lives)))
    return sequential, Rates(trials, naive_crowns, (1,) * trials)


def launches_for_power(
    rng: random.Random,
    speedup: float,
    noise: Noise,
    params: ArenaParams,
    *,
    trials: int,
    limit: int,
) -> int | None:
    """The smallest `max_launches` whose power at `speedup` reaches POWER_TARGET (bisection)."""

    def enough(max_launches: int) -> bool:
        wider = ArenaParams(**{**vars(params), "max_launches": max_launches})
        crowned = sum(lifetime(rng, speedup, noise, wider)[0] for _ in range(trials))
        return crowned >= POWER_TARGET * trials

    if not enough(limit):
        return None
    low, high = 0, limit  # enough(high), and not enough(low) by convention
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def run(
    rng: random.Random,
    noise: Noise,
    params: ArenaParams,
    *,
    trials: int,
    power_speedups: Sequence[float] = (0.03, 0.05),
    power_limit: int = 128,
) -> Table:
    """The whole table for one noise model; the power search uses a fifth of the trials."""
    rows = tuple(Row(s, *rates(rng, s, noise, params, trials)) for s in SPEEDUPS)
    search_trials = max(trials // 5, 1)
    needed = tuple(
        (s, launches_for_power(rng, s, noise, params, trials=search_trials, limit=power_limit))
        for s in power_speedups
    )
    races = max(trials // 5, 1)
    faster = sum(two_crowns(rng, noise, params) for _ in range(races))
    return Table(noise, params, rows, needed, power_limit, (faster, races))


def render(table: Table) -> str:
    """The table as fixed-width text, the sequential rule beside the naive one."""
    noise, params = table.noise, table.params
    head = (
        f"launch noise {noise.launch:.1%}, block noise {noise.block:.1%}, "
        f"drift {noise.drift:.2%}/launch, position bias {noise.position_bias:.2%}; "
        f"moat {params.moat:.1%}, alpha {params.alpha:g} (O'Brien-Fleming-type spending), "
        f"max {params.max_launches} launches; {table.rows[0].sequential.trials} lifetimes per row"
    )
    lines = [
        head,
        f"{'true speedup':<14}{'sequential: crowned':>28}{'launches mean':>15}{'p95':>5}"
        f"{'naive: crowned':>26}",
    ]
    for row in table.rows:
        label = "exact copy" if row.speedup == 0 else f"+{row.speedup:.1%}"
        lines.append(
            f"{label:<14}{_rate(row.sequential):>28}{row.sequential.mean_launches:>15.2f}"
            f"{row.sequential.p95_launches:>5}{_rate(row.naive):>26}"
        )
    for speedup, needed in table.launches_for_power:
        shown = f"more than {table.power_limit}" if needed is None else str(needed)
        lines.append(f"{POWER_TARGET:.0%} power at +{speedup:.1%} needs max_launches = {shown}")
    faster, races = table.two_crowns
    if races:
        lines.append(
            f"two crowns in one round (+6.7% pending three rounds, +21% arriving): the faster"
            f" leads in {faster / races:.1%} ({faster}/{races})"
        )
    return "\n".join(lines)


def _rate(rates: Rates) -> str:
    return f"{rates.crown_rate:.3%} ({rates.crowned}/{rates.trials})"
