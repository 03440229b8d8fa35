"""The moat decision: noise estimate, error spending and crown / not faster / pending (§4.5)."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheon.arena import (
    ArenaParams,
    Bounds,
    Call,
    Evidence,
    alpha_spent,
    bounds,
    decide,
    pooled_sigma,
)
from cacheon.protocol import Digest

LEADER = Digest("sha256:" + "1" * 64)
OTHER = Digest("sha256:" + "2" * 64)
NORMAL = statistics.NormalDist()


def test_sigma_falls_back_to_the_floor() -> None:
    assert pooled_sigma([], 0.02) == 0.02
    assert pooled_sigma([0.3], 0.02) == 0.02
    assert pooled_sigma([0.001, -0.001, 0.0, 0.002], 0.02) == 0.02


def test_sigma_estimates_launch_noise_from_pairs() -> None:
    rng = random.Random(3)  # noqa: S311 (test data, not a secret)
    pairs = [rng.gauss(0, 0.05) - rng.gauss(0, 0.05) for _ in range(4000)]
    assert pooled_sigma(pairs, 0.001) == pytest.approx(0.05, rel=0.05)
    # drift shifts every pair alike: the interpolation removes it, so it is not noise
    assert pooled_sigma([p + 0.03 for p in pairs], 0.001) == pytest.approx(0.05, rel=0.05)
    # a few wild launches do not move it
    wild = [*pairs[:200], 2.0, -3.0, 5.0]
    assert pooled_sigma(wild, 0.001) == pytest.approx(pooled_sigma(pairs[:200], 0.001), rel=0.05)


def test_alpha_spending_is_obrien_fleming_type(params: ArenaParams) -> None:
    spent = [alpha_spent(n, params) for n in range(10)]
    assert spent[0] == 0
    assert spent[8] == pytest.approx(params.alpha)
    assert spent[9] == spent[8]
    assert all(a < b for a, b in itertools.pairwise(spent[:9]))
    # almost nothing early, most of it at the end
    assert spent[1] < 1e-10
    assert spent[8] - spent[7] > params.alpha / 3
    z = NORMAL.inv_cdf(1 - params.alpha / 2)
    assert spent[4] == pytest.approx(2 * (1 - NORMAL.cdf(z / math.sqrt(0.5))))


def test_crown_golden(params: ArenaParams) -> None:
    prior = Evidence(LEADER, 7, 7 * 0.05, 10.5)
    decision = decide(prior, Evidence(LEADER, 1, 0.05, 1.5), 0.02, params)
    level = params.alpha - alpha_spent(7, params)
    se = 0.02 * math.sqrt(12) / 8
    assert decision.call is Call.CROWNED
    assert decision.evidence == Evidence(LEADER, 8, pytest.approx(0.4), 12.0)
    assert decision.level == pytest.approx(level)
    assert decision.bounds == Bounds(
        pytest.approx(0.05),
        pytest.approx(0.05 + NORMAL.inv_cdf(level) * se),
        pytest.approx(0.05 - NORMAL.inv_cdf(0.1) * se),
    )


@pytest.mark.parametrize(
    ("prior", "increment", "call"),
    [
        # one clearly slower launch: ruled out at once
        (None, Evidence(LEADER, 1, -0.06, 1.5), Call.NOT_FASTER),
        # one launch 3% faster is not enough evidence yet
        (None, Evidence(LEADER, 1, 0.03, 1.5), Call.PENDING),
        # an overwhelming lead crowns early
        (None, Evidence(LEADER, 2, 0.40, 3.0), Call.CROWNED),
        # the eighth launch spends the budget
        (Evidence(LEADER, 7, 7 * 0.012, 10.5), Evidence(LEADER, 1, 0.012, 1.5), Call.NOT_FASTER),
        # evidence against another leader is dropped, so this is a first look
        (Evidence(OTHER, 7, 7 * 0.012, 10.5), Evidence(LEADER, 1, 0.03, 1.5), Call.PENDING),
    ],
)
def test_calls(
    params: ArenaParams, prior: Evidence | None, increment: Evidence, call: Call
) -> None:
    assert decide(prior, increment, 0.02, params).call is call


def test_the_evidence_restarts_against_a_new_leader(params: ArenaParams) -> None:
    decision = decide(Evidence(OTHER, 5, 0.5, 7.5), Evidence(LEADER, 1, 0.03, 1.5), 0.02, params)
    assert decision.evidence == Evidence(LEADER, 1, 0.03, 1.5)


def test_a_look_never_raises_on_persisted_evidence(params: ArenaParams) -> None:
    # no launches at all: nothing to decide, nothing spent
    empty = decide(None, Evidence(LEADER), 0.02, params)
    assert (empty.call, empty.level) == (Call.PENDING, 0.0)
    # a budget spent at an earlier look (or lowered by an upgrade) decides with what it has
    # and spends no more error: even an overwhelming lead is not crowned past the budget
    spent = decide(Evidence(LEADER, 8, 0.0, 12.0), Evidence(LEADER, 1, 0.5, 1.5), 0.02, params)
    assert spent.call is Call.NOT_FASTER
    assert spent.level == 0.0
    assert spent.evidence.launches == 9
    lowered = ArenaParams(**{**vars(params), "max_launches": 3})
    assert (
        decide(Evidence(LEADER, 5, 0.05, 7.5), Evidence(LEADER, 1, 0.01, 1.5), 0.02, lowered).call
        is Call.NOT_FASTER
    )


def test_display_bounds() -> None:
    evidence = Evidence(LEADER, 4, 0.2, 6.0)
    se = 0.02 * math.sqrt(6) / 4
    z = -NORMAL.inv_cdf(0.01)
    assert bounds(evidence, 0.02, 0.01) == Bounds(
        pytest.approx(0.05), pytest.approx(0.05 - z * se), pytest.approx(0.05 + z * se)
    )


@given(
    prior_launches=st.integers(min_value=0, max_value=7),
    new_launches=st.integers(min_value=1, max_value=4),
    mean=st.floats(min_value=-0.2, max_value=0.3),
    extra_variance=st.floats(min_value=0.0, max_value=2.0),
    sigma=st.floats(min_value=0.02, max_value=0.2),
)
def test_never_crown_unless_the_lower_bound_clears_the_moat(
    prior_launches: int, new_launches: int, mean: float, extra_variance: float, sigma: float
) -> None:
    params = ArenaParams(0.01, 0.01, 8, 0.02, 4, 0, 0.8)
    prior = Evidence(
        LEADER, prior_launches, prior_launches * mean, prior_launches * (1 + extra_variance)
    )
    increment = Evidence(
        LEADER, new_launches, new_launches * mean, new_launches * (1 + extra_variance)
    )
    decision = decide(prior if prior_launches else None, increment, sigma, params)
    evidence = decision.evidence
    level = alpha_spent(evidence.launches, params) - alpha_spent(prior_launches, params)
    lower = evidence.mean + NORMAL.inv_cdf(level) * evidence.standard_error(sigma)
    assert decision.bounds.lower == pytest.approx(lower, abs=1e-9)
    assert (decision.call is Call.CROWNED) == (decision.bounds.lower > math.log(1.01))
    if evidence.launches >= params.max_launches:
        assert decision.call is not Call.PENDING
