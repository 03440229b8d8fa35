"""The moat decision under launch noise: crown, not faster, or pending (DESIGN.md §4.5).

A 1% moat judged on one launch crowns noise: rented pods move 5-17% between launches. So
evidence accumulates over launches (and rounds) and is looked at after each round, with the
launch noise estimated from the bookend pairs of past rounds, never below a floor.

Error spending: O'Brien-Fleming-type (Lan-DeMets), alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))
with t = launches / max_launches. Each look tests its lower bound at the increment
alpha(t_k) - alpha(t_{k-1}), so by the Bonferroni inequality over looks the chance of crowning a
challenger that is not faster by the moat stays below alpha however irregular the looks are,
without the numerical integration of exact group-sequential boundaries. Early looks spend almost
nothing (only an overwhelming lead crowns after one launch) and the last keeps most of alpha,
which buys more power at `max_launches` than alpha / max_launches at every look. A challenger
whose upper bound (at FUTILITY_LEVEL) falls below the moat is ruled not faster at once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cacheon.arena.measure import Evidence
from cacheon.arena.params import ArenaParams

_NORMAL: Final = statistics.NormalDist()
_MAD_TO_SIGMA: Final = 1 / _NORMAL.inv_cdf(0.75)
"""MAD of a normal sample times this is its standard deviation."""
OUTLIER_SIGMAS: Final = 5.0
"""Pairs further than this from the median, in MAD-estimated sigmas, are left out of the spread."""
FUTILITY_LEVEL: Final = 0.1
"""One-sided level of the upper bound that rules a challenger not faster before its budget is
spent. Stopping early can only lower the crown rate; at 0.1 it saves a copy about two of its
eight launches and costs no measurable power at +3% or +5% (bench/verdict_sim.py)."""


MIN_PAIRS: Final = 3
"""Baseline pairs needed before the launch noise is measured rather than assumed (`sigma_prior`)."""
OWN_SPREAD_LAUNCHES: Final = 3
"""Launches after which a contestant's own spread also bounds the noise it is judged with."""
LAUNCH_VARIANCE_UNITS: Final = 1.5
"""Var(d_i) / sigma_L^2 of one launch midway between two opponent launches: its own noise (1)
and the interpolated opponent's (0.5^2 + 0.5^2). A launch nearer one opponent launch has more,
so dividing a contestant's spread by this can only overstate its noise."""


def _kept(values: list[float]) -> list[float]:
    """The values within OUTLIER_SIGMAS MAD-estimated sigmas of their median."""
    centre = statistics.median(values)
    cut = OUTLIER_SIGMAS * _MAD_TO_SIGMA * statistics.median(abs(v - centre) for v in values)
    return [value for value in values if abs(value - centre) <= cut]


@dataclass(frozen=True)
class LaunchNoise:
    """The launch noise decisions use (log scale), both as upper confidence bounds on sigma_L."""

    core: float
    """From the baseline pairs within OUTLIER_SIGMAS of their median: the pod's usual noise."""
    tail: float
    """From every pair, outliers included (never below `core`). A contestant with fewer than
    OWN_SPREAD_LAUNCHES launches is judged with it: with one or two launches nobody can tell
    an outlier launch from a real gain, so a single lucky launch must not crown a copy."""

    @classmethod
    def known(cls, sigma: float) -> LaunchNoise:
        """A noise given from outside (a validator's published value, a simulation's truth)."""
        return cls(sigma, sigma)


def noise_bound(pairs: Iterable[float], params: ArenaParams) -> LaunchNoise:
    """The launch noise from B/B' pairs: chi-square upper confidence bounds on sigma_L.

    Only the pinned baseline's pairs count (no miner can tune it). Each bound is the chi-square
    one on the pooled variance at `sigma_confidence`: with few pairs it sits well above the
    estimate (3.1x at 3 pairs, 1.3x at 16, 1.15x at 64 at 0.9) and it shrinks as pairs
    accumulate, so a short or lucky history cannot crown on noise. Until `MIN_PAIRS` pairs exist
    the noise is assumed to be `sigma_prior`; `sigma_floor` is a hard minimum throughout.
    """
    values = list(pairs)
    kept = _kept(values) if len(values) >= MIN_PAIRS else []
    if len(kept) < MIN_PAIRS:
        prior = max(params.sigma_floor, params.sigma_prior)
        return LaunchNoise(prior, prior)
    core = _chi2_bound(kept, params)
    return LaunchNoise(core, max(core, _chi2_bound(values, params)))


def _chi2_bound(pairs: list[float], params: ArenaParams) -> float:
    mean = math.fsum(pairs) / len(pairs)
    squares = math.fsum((value - mean) ** 2 for value in pairs)
    variance = squares / chi2_quantile(1 - params.sigma_confidence, len(pairs) - 1)
    return max(params.sigma_floor, math.sqrt(variance / 2))


def contestant_sigma(noise: LaunchNoise, evidence: Evidence | None) -> float:
    """The noise one contestant is judged with. Below OWN_SPREAD_LAUNCHES launches, the tail
    bound; from then on the usual bound, or its own launches' spread when that is larger (a
    noisy server, or one lucky launch, is judged with its own noise, never the quiet pod's)."""
    if evidence is None or evidence.launches < OWN_SPREAD_LAUNCHES or evidence.spread is None:
        return noise.tail
    return max(noise.core, evidence.spread / math.sqrt(LAUNCH_VARIANCE_UNITS))


def chi2_quantile(p: float, df: int) -> float:
    """The p-quantile of the chi-square distribution with `df` degrees of freedom (bisection on
    the regularised lower incomplete gamma function, exact to 1e-10 relative)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"chi2_quantile({p}, {df}): need 0 < p < 1 and df >= 1")
    low, high = 0.0, df + 20 * math.sqrt(df) + 40
    while high - low > 1e-10 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if _gamma_p(df / 2, middle / 2) < p else (low, middle)
    return (low + high) / 2


def _gamma_p(a: float, x: float) -> float:
    """P(a, x) by its series (converges for every x; the quantiles asked for lie below a + 40)."""
    if x <= 0:
        return 0.0
    term = total = 1 / a
    n = 0
    while abs(term) > 1e-16 * abs(total) and n < 10_000:
        n += 1
        term *= x / (a + n)
        total += term
    return min(1.0, total * math.exp(a * math.log(x) - x - math.lgamma(a)))


def pooled_sigma(pairs: Iterable[float], floor: float) -> float:
    """The point estimate of sigma_L from baseline pairs log(B'/B), for display.

    A pair is the difference of two launches, so its spread is sqrt(2) sigma_L. The spread is the
    standard deviation about the mean, which leaves out drift (the interpolation removes it), of
    the pairs within OUTLIER_SIGMAS MAD-estimated sigmas of the median: robust to the odd wild
    launch like the MAD, but nearly as efficient as the standard deviation, which matters
    because an underestimated sigma crowns copies.
    """
    values = list(pairs)
    if len(values) < 2:
        return floor
    kept = _kept(values)
    if len(kept) < 2:
        return floor
    mean = math.fsum(kept) / len(kept)
    variance = math.fsum((value - mean) ** 2 for value in kept) / (len(kept) - 1)
    return max(floor, math.sqrt(variance / 2))


def alpha_spent(launches: int, params: ArenaParams) -> float:
    """Error spent once `launches` of at most `max_launches` have been looked at."""
    if launches <= 0:
        return 0.0
    fraction = min(launches, params.max_launches) / params.max_launches
    z = _NORMAL.inv_cdf(1 - params.alpha / 2)
    return 2 * _NORMAL.cdf(-z / math.sqrt(fraction))


def _z(level: float) -> float:
    # The one-sided quantile, math.inf when the level underflows (very early looks).
    return -_NORMAL.inv_cdf(level) if level > 0 else math.inf


@dataclass(frozen=True)
class Bounds:
    """A mean log speed ratio with one-sided lower and upper confidence bounds."""

    estimate: float
    lower: float
    upper: float


def bounds(evidence: Evidence, sigma: float, alpha: float) -> Bounds:
    """Bounds at one-sided level `alpha` each, for ranking and display (no sequential test)."""
    z = _z(alpha)
    se = evidence.standard_error(sigma)
    return Bounds(evidence.mean, evidence.mean - z * se, evidence.mean + z * se)


class Call(StrEnum):
    """The speed decision; values match the published ReasonCode of the same name."""

    CROWNED = "crowned"
    NOT_FASTER = "not_faster"
    PENDING = "pending"


@dataclass(frozen=True)
class Decision:
    call: Call
    evidence: Evidence
    """All evidence against this opponent, this look included."""
    bounds: Bounds
    """Lower bound at this look's spent level, upper bound at the full alpha."""
    level: float
    """The error this look spent."""


def decide(
    prior: Evidence | None, increment: Evidence, sigma: float, params: ArenaParams
) -> Decision:
    """Add a round's evidence to a pending challenger's and look once.

    Prior evidence against another opponent (the leader changed) is discarded: the question, and
    its error budget, start afresh. The lower bound must clear log(1 + moat) to crown. Persisted
    evidence may come from other parameters (an upgrade lowered `max_launches`, say): a look
    never raises on it; a budget already spent decides with what it has, spending no more error.
    """
    if prior is None or prior.against != increment.against:
        prior = Evidence(increment.against)
    evidence = prior.plus(increment)
    if evidence.launches <= 0:
        return Decision(Call.PENDING, evidence, Bounds(0.0, -math.inf, math.inf), 0.0)
    level = max(0.0, alpha_spent(evidence.launches, params) - alpha_spent(prior.launches, params))
    se = evidence.standard_error(sigma)
    lower = evidence.mean - _z(level) * se
    upper = evidence.mean + _z(FUTILITY_LEVEL) * se
    if lower > params.log_moat:
        call = Call.CROWNED
    elif upper < params.log_moat or evidence.launches >= params.max_launches:
        call = Call.NOT_FASTER
    else:
        call = Call.PENDING
    return Decision(call, evidence, Bounds(evidence.mean, lower, upper), level)


def look(
    prior: Evidence | None, increment: Evidence, noise: LaunchNoise, params: ArenaParams
) -> Decision:
    """One look as the validator takes it: `decide` with the noise this challenger is judged
    with (`contestant_sigma` over all its launches against this opponent)."""
    spread = increment
    if prior is not None and prior.against == increment.against:
        spread = prior.plus(increment)
    return decide(prior, increment, contestant_sigma(noise, spread), params)
