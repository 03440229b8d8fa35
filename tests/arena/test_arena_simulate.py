"""The simulator runs the real rules, reproducibly; the full-size run is bench/verdict_sim.py."""

from __future__ import annotations

import random

import pytest

from cacheon.arena import ArenaParams, simulate
from cacheon.cli.validator import main

QUIET = simulate.Noise(launch=0.02, block=0.01)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (a reproducible simulation, not a secret)


def test_lifetimes_are_reproducible_from_the_seed(params: ArenaParams) -> None:
    first = [simulate.lifetime(seeded(5), 0.03, QUIET, params) for _ in range(3)]
    again = [simulate.lifetime(seeded(5), 0.03, QUIET, params) for _ in range(3)]
    assert first == again


def test_the_sequential_rule_beats_the_naive_one(params: ArenaParams) -> None:
    rng = seeded(1)
    copy_sequential, copy_naive = simulate.rates(rng, 0.0, QUIET, params, 300)
    win_sequential, _ = simulate.rates(rng, 0.10, QUIET, params, 100)
    assert copy_sequential.crowned == 0
    assert copy_naive.crown_rate > 0.2  # the first arena's rule crowns copies on noise
    assert win_sequential.crown_rate > 0.95
    assert win_sequential.mean_launches < 4
    assert max(copy_sequential.launches) <= 4 * params.max_launches


def test_a_systematic_bias_beyond_the_moat_crowns_copies(params: ArenaParams) -> None:
    # more launches cannot remove a bias, only the run order can (DESIGN.md §3 step 6)
    biased = simulate.Noise(launch=0.02, block=0.01, position_bias=0.03)
    sequential, _ = simulate.rates(seeded(2), 0.0, biased, params, 100)
    assert sequential.crown_rate > 0.1


def test_launches_for_power(params: ArenaParams) -> None:
    rng = seeded(3)
    needed = simulate.launches_for_power(rng, 0.10, QUIET, params, trials=40, limit=16)
    assert needed is not None
    assert needed <= 4
    assert simulate.launches_for_power(rng, 0.0, QUIET, params, trials=20, limit=4) is None


def test_table_renders_every_row(params: ArenaParams) -> None:
    table = simulate.run(seeded(4), QUIET, params, trials=20, power_speedups=(0.05,), power_limit=8)
    text = simulate.render(table)
    assert [row.speedup for row in table.rows] == list(simulate.SPEEDUPS)
    for label in ("exact copy", "+0.5%", "+2.0%", "+3.0%", "+5.0%", "naive", "O'Brien-Fleming"):
        assert label in text
    assert "power at +5.0% needs max_launches" in text
    assert "two crowns in one round" in text


def test_cli_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trials", "10", "--launch-noise", "0.05", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "launch noise 5.0%" in out
    assert "exact copy" in out


def test_the_faster_of_two_crowns_leads(params: ArenaParams) -> None:
    # +6.7% pending for three rounds, +21% arriving in its fourth: the faster ends up leading
    rng = seeded(6)
    quiet = simulate.Noise(launch=0.01, block=0.0)
    wins = sum(simulate.two_crowns(rng, quiet, params) for _ in range(100))
    assert wins >= 99
