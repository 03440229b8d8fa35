"""Seasons on simulated pods (issues 19 and 20): the settings' cost per decision, the latency,
and what parallel pods buy, by the validator's own decision code."""

from __future__ import annotations

import dataclasses
import random

import pytest

from cacheon.arena import ArenaParams, season, simulate
from cacheon.cli.validator import main
from cacheon.protocol import Workload

QUIET = simulate.Noise(launch=0.01, block=0.0)
SHORT = Workload(level_prompts=(8, 32, 64), level_blocks=(1, 1, 1), warmup_requests=2)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (a reproducible simulation, not a secret)


def proposed(params: ArenaParams) -> ArenaParams:
    return dataclasses.replace(params, sigma_floor=0.005, max_challengers_per_round=8)


def test_the_cost_model_times_a_launch_from_its_workload() -> None:
    cost = season.CostModel()
    # concurrency 1 of the old workload: 2 blocks of 64 requests in series plus 8 warm-ups
    one = cost.request_s(1, 256)
    assert one == pytest.approx(0.08 + 256 * 0.012)
    old = cost.measure_s(Workload())
    assert old > 130 * one  # nine tenths of the old launch is concurrency 1
    assert cost.measure_s(SHORT) < old / 5
    assert cost.launch_s(SHORT) == pytest.approx(420 + cost.measure_s(SHORT) + 30)


def test_a_season_is_reproducible_and_decides_every_challenger(params: ArenaParams) -> None:
    config = season.SeasonConfig(proposed(params), SHORT, noise=QUIET)
    gains = list(season.LAUNCH_DAY)
    first = season.play(seeded(1), config, gains, [0.0] * len(gains))
    again = season.play(seeded(1), config, gains, [0.0] * len(gains))
    assert first == again
    assert first.decided == first.challengers == len(gains)
    assert first.false_crowns == 0
    assert first.gpu_hours > 0


def test_the_new_settings_cost_a_third_of_the_old_per_decision(params: ArenaParams) -> None:
    rows = season.versus_legacy(seeded(2), proposed(params), SHORT, QUIET, seasons=30, pods=(1,))
    old, new = rows
    assert new.gpu_hours_per_decision * 3 <= old.gpu_hours_per_decision
    assert new.false_crowns == old.false_crowns == 0
    assert new.lost_crowns <= old.lost_crowns


def test_two_pods_drain_a_launch_day_faster_at_about_the_same_cost(params: ArenaParams) -> None:
    one, two = (
        season.summarise(
            seeded(3),
            f"{pods} pods",
            season.SeasonConfig(proposed(params), SHORT, noise=QUIET, pods=pods),
            seasons=40,
        )
        for pods in (1, 2)
    )
    assert two.drained_h < 0.8 * one.drained_h
    assert two.gpu_hours_per_decision < 1.15 * one.gpu_hours_per_decision


def test_thin_rounds_wait_while_others_are_in_flight() -> None:
    assert season.worth_a_round(1, 8, in_flight=0)
    assert not season.worth_a_round(3, 8, in_flight=1)
    assert season.worth_a_round(4, 8, in_flight=2)
    assert not season.worth_a_round(0, 8, in_flight=0)


def test_cli_simulate_season(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--season", "--seasons", "3", "--launch-noise", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "replaced: 2% floor" in out
    assert "8 pods" in out
    assert "GPU-h/decision" in out
