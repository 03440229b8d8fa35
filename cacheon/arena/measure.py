"""From a round's raw launches to evidence: launch speeds, bookend interpolation, drift.

Launches, not blocks, are the unit of evidence (DESIGN.md §4.5): a server restarted on the same
pod runs several percent faster or slower, far more than its blocks vary, so every contestant is
compared with the leader and the baseline interpolated to its own moment in the round. The agent
only reports measurements; all of this runs on the validator.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from cacheon.protocol import Digest, JobSpec, Launch, Outcome, ReasonCode, Role, RoundReport

DRIFT_SIGMAS: Final = 4.0
"""A round whose B'/B is further from 1 than this many of its own standard deviations (sqrt(2)
sigma_L: a pair is two launches) decides nothing; by chance that is 1 pair in 16,000. Only the
pinned baseline's pair can void a round: an L'/L beyond the bound is the leader's instability,
and the challengers are then compared with the leader as the baseline measures it."""


@dataclass(frozen=True)
class Evidence:
    """Accumulated log speed ratios of one contestant against one opponent.

    With d_i the log-ratio of launch i, `total` is the sum of d_i and `variance_units` is
    Var(sum d_i) / sigma_L^2: each launch adds its own noise (1) and the interpolated opponent
    adds the squared weight it puts on each opponent launch, summed per opponent launch first,
    because two challenger launches next to the same leader launch share its noise.
    """

    against: Digest
    launches: int = 0
    total: float = 0.0
    variance_units: float = 0.0
    squares: float = 0.0
    """Sum of d_i squared: with `total`, the spread of the contestant's own launches."""

    def plus(self, more: Evidence) -> Evidence:
        if more.against != self.against:
            raise ValueError(f"evidence against {more.against} cannot join {self.against}")
        return Evidence(
            self.against,
            self.launches + more.launches,
            self.total + more.total,
            self.variance_units + more.variance_units,
            self.squares + more.squares,
        )

    @property
    def mean(self) -> float:
        return self.total / self.launches if self.launches else 0.0

    def standard_error(self, sigma: float) -> float:
        if not self.launches:
            return math.inf
        return sigma * math.sqrt(self.variance_units) / self.launches

    @property
    def spread(self) -> float | None:
        """The sample standard deviation of the launches' d_i; None below two launches."""
        if self.launches < 2:
            return None
        variance = (self.squares - self.total**2 / self.launches) / (self.launches - 1)
        return math.sqrt(max(0.0, variance))


@dataclass(frozen=True)
class Entry:
    key: str
    """The contestant's key in the job's launch order and the report."""
    digest: Digest


@dataclass(frozen=True)
class Roster:
    """Who ran in a round, by role."""

    baseline: Entry
    leader: Entry | None
    challengers: tuple[Entry, ...]

    @classmethod
    def from_job(cls, job: JobSpec) -> Roster:
        by_role: dict[Role, list[Entry]] = defaultdict(list)
        for contestant in job.contestants:
            digest = Digest(contestant.image.rpartition("@")[2])
            by_role[contestant.role].append(Entry(contestant.key, digest))
        baselines, leaders = by_role[Role.BASELINE], by_role[Role.LEADER]
        if len(baselines) != 1 or len(leaders) > 1:
            raise ValueError("a round has one baseline and at most one leader")
        return cls(baselines[0], leaders[0] if leaders else None, tuple(by_role[Role.CHALLENGER]))


@dataclass(frozen=True)
class TimedSpeed:
    """One measured launch: its log speed at the midpoint of its run."""

    key: str
    at: float
    log_speed: float


class RoundVoid(Exception):
    """The round's measurements cannot support any comparison."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(reason.value)
        self.reason = reason


def launch_speeds(report: RoundReport) -> tuple[TimedSpeed, ...]:
    """The log speed of every launch of a passing contestant (DESIGN.md §4.3).

    Only blocks that every such launch measured cleanly count, so that all of them are scored on
    the same prompts; a block measured while the client was saturated measured the client. A
    level's speed is the geometric mean of 1/T_k over its requests (each block already reports
    its own geometric mean), a launch's speed the equal-weight geometric mean over levels.
    """
    passing = {result.key for result in report.results if result.outcome is Outcome.PASS}
    measured = [
        launch
        for launch in report.launches
        if launch.contestant in passing and launch.outcome in (None, Outcome.PASS) and launch.levels
    ]
    if not measured:
        return ()
    levels = {level.concurrency for launch in measured for level in launch.levels}
    common = set.intersection(*(_clean_blocks(launch) for launch in measured))
    if {concurrency for concurrency, _ in common} != levels:
        raise RoundVoid(ReasonCode.CLIENT_SATURATED)
    return tuple(
        TimedSpeed(launch.contestant, launch_time(launch), _log_speed(launch, common))
        for launch in measured
    )


def launch_time(launch: Launch) -> float:
    """Where a launch sits in time for the interpolation: the midpoint of its measured window
    (first measured block start to last block end), never its pull or start-up (§4.5)."""
    if launch.measured_from_ns is not None and launch.measured_to_ns is not None:
        return (launch.measured_from_ns + launch.measured_to_ns) / 2
    return (launch.started_ns + launch.ended_ns) / 2


def _clean_blocks(launch: Launch) -> set[tuple[int, int]]:
    return {
        (level.concurrency, level.block)
        for level in launch.levels
        if not level.client_saturated and level.requests > 0 and level.speed > 0
    }


def _log_speed(launch: Launch, common: set[tuple[int, int]]) -> float:
    weighted: dict[int, float] = defaultdict(float)
    requests: dict[int, int] = defaultdict(int)
    for level in launch.levels:
        if (level.concurrency, level.block) in common:
            weighted[level.concurrency] += level.requests * math.log(level.speed)
            requests[level.concurrency] += level.requests
    return math.fsum(weighted[c] / requests[c] for c in sorted(weighted)) / len(weighted)


def behavioural_copies(roster: Roster, report: RoundReport) -> frozenset[Digest]:
    """Challengers the agent found answering like the leader in this round (§4.6): identical
    token ids and logprob bit patterns on most measured prompts (`ContestantResult.copy_of`).

    Such a challenger is reported and cannot be runner-up while that digest leads; it is not
    failed, since a faithful re-implementation of the same engine may legitimately agree.
    """
    if roster.leader is None:
        return frozenset()
    copying = {r.key for r in report.results if r.copy_of == roster.leader.key}
    return frozenset(entry.digest for entry in roster.challengers if entry.key in copying)


@dataclass(frozen=True)
class RoundEvidence:
    """What one round adds to each contestant's evidence."""

    pairs: tuple[float, ...]
    """log(B'/B): the round's contribution to the launch-noise history. Only the pinned
    baseline's pairs are trusted: a leader could widen its own L'/L to slow every challenger."""
    void: ReasonCode | None = None
    """Why the round decides nothing (validator-attributed); the evidence maps are then empty."""
    vs_baseline: Mapping[Digest, Evidence] = field(default_factory=dict)
    """Every measured contestant but the baseline, leader included, against the baseline."""
    tests: Mapping[Digest, Evidence] = field(default_factory=dict)
    """Each challenger against its opponent: the leader, or the baseline when there is none."""
    leader_unstable: float | None = None
    """log(L'/L) when it was beyond the drift bound: the challengers were then compared with the
    leader's mean ratio to the baseline in this round instead of its interpolated launches."""


def measure_round(job: JobSpec, report: RoundReport, sigma: float) -> RoundEvidence:
    """The evidence one round adds; `sigma` is the pooled launch noise of earlier rounds."""
    try:
        speeds = launch_speeds(report)
    except RoundVoid as void:
        return RoundEvidence(pairs=(), void=void.reason)
    return compare(Roster.from_job(job), speeds, sigma)


def compare(roster: Roster, speeds: Iterable[TimedSpeed], sigma: float) -> RoundEvidence:
    """Log-ratios of each launch against the bookended baseline and leader, interpolated in time.

    Both opponents are interpolated linearly in time on the log scale between the launches that
    bracket the contestant, which cancels linear drift; a launch outside the bookends is not
    compared. When the leader's own bookends disagree beyond the drift bound, its launches cannot
    be interpolated, and a contestant can only hurt itself: each challenger's ratio to the
    baseline is compared with the leader's mean ratio to the baseline in this round, which an
    unstable leader can only lower (it cannot run faster than it can).
    """
    by_key: dict[str, list[TimedSpeed]] = defaultdict(list)
    for speed in sorted(speeds, key=lambda s: (s.at, s.key)):
        by_key[speed.key].append(speed)
    baseline = by_key.get(roster.baseline.key, [])
    if len(baseline) < 2:
        return RoundEvidence(pairs=(), void=ReasonCode.BASELINE_UNSTABLE)
    bound = DRIFT_SIGMAS * math.sqrt(2) * sigma
    pair = baseline[-1].log_speed - baseline[0].log_speed
    if abs(pair) > bound:
        return RoundEvidence(pairs=(pair,), void=ReasonCode.DRIFT)

    contestants = [*([roster.leader] if roster.leader else []), *roster.challengers]
    vs_baseline = {
        entry.digest: evidence
        for entry in contestants
        if (evidence := _against(by_key.get(entry.key, []), baseline, roster.baseline.digest))
    }
    challengers = [entry for entry in roster.challengers if entry.digest in vs_baseline]
    if roster.leader is None:
        tests = {entry.digest: vs_baseline[entry.digest] for entry in challengers}
        return RoundEvidence(pairs=(pair,), vs_baseline=vs_baseline, tests=tests)
    against = roster.leader.digest
    leader = by_key.get(roster.leader.key, [])
    swing = leader[-1].log_speed - leader[0].log_speed if len(leader) >= 2 else None
    if swing is not None and abs(swing) <= bound:
        tests = {
            entry.digest: evidence
            for entry in challengers
            if (evidence := _against(by_key.get(entry.key, []), leader, against))
        }
        return RoundEvidence(pairs=(pair,), vs_baseline=vs_baseline, tests=tests)
    measured = vs_baseline.get(against)
    tests = (
        {}
        if measured is None
        else {e.digest: _via(vs_baseline[e.digest], measured, against) for e in challengers}
    )
    return RoundEvidence(pairs=(pair,), vs_baseline=vs_baseline, tests=tests, leader_unstable=swing)


def _via(challenger: Evidence, leader: Evidence, against: Digest) -> Evidence:
    """A challenger's ratios to the baseline less the leader's mean ratio to it, per launch.

    The variance adds the leader's mean's, once per challenger launch and squared (they share
    it); the two share baseline launches too, whose positive covariance is left out, which
    overstates the variance: the bound is conservative, never the challenger's gain.
    """
    n, bar = challenger.launches, leader.mean
    return Evidence(
        against,
        n,
        challenger.total - n * bar,
        challenger.variance_units + n * n * leader.variance_units / leader.launches**2,
        challenger.squares - 2 * bar * challenger.total + n * bar * bar,
    )


def _against(
    runs: Sequence[TimedSpeed], opponent: Sequence[TimedSpeed], digest: Digest
) -> Evidence | None:
    times = [anchor.at for anchor in opponent]
    opponent_weight = [0.0] * len(opponent)
    ratios = []
    for run in runs:
        right = bisect.bisect_left(times, run.at)
        if right == 0 or right == len(times):
            continue
        before, after = opponent[right - 1], opponent[right]
        w = (run.at - before.at) / (after.at - before.at)
        ratios.append(run.log_speed - ((1 - w) * before.log_speed + w * after.log_speed))
        opponent_weight[right - 1] += 1 - w
        opponent_weight[right] += w
    if not ratios:
        return None
    return Evidence(
        digest,
        len(ratios),
        math.fsum(ratios),
        len(ratios) + math.fsum(a * a for a in opponent_weight),
        math.fsum(d * d for d in ratios),
    )
