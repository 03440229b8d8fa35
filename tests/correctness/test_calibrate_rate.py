"""`cacheon-agent calibrate` on the divergence rate: the suggestion and the margin it reports."""

from __future__ import annotations

import pytest

from cacheon.agent.calibrate import (
    FLOORS,
    SAFETY_MULTIPLE,
    Calibration,
    SettingDrift,
    Spread,
    render,
    suggest,
)
from cacheon.agent.divergence import critical_count
from cacheon.agent.teacher import Cost
from cacheon.protocol import GateThresholds

T = GateThresholds()


def _setting(label: str, rate: float, tokens: int = 8000) -> SettingDrift:
    flat = Spread.of([0.001, 0.002])
    return SettingDrift(
        label=label,
        responses=64,
        tokens=tokens,
        abs_delta=flat,
        kl=flat,
        kl_mean=1e-5,
        divergences=Spread.of([rate * tokens / 64] * 64),
        divergence_rate=rate,
        gap_at_divergence=Spread.of([0.05]),
        length_ratio=1.0,
        identical_share=0.5,
        verdict="PASS",
    )


def test_the_suggested_rate_is_a_multiple_of_the_worst_settings_own_rate() -> None:
    settings = [_setting("c=1", 0.001), _setting("c=16", 0.003)]
    assert suggest(settings, T).divergence_rate == pytest.approx(SAFETY_MULTIPLE * 0.003)
    exact = [_setting("c=1", 0.0)]  # a bit-exact engine: the floor, never a zero rate
    assert suggest(exact, T).divergence_rate == FLOORS["divergence_rate"]


def test_the_report_gives_the_margin_and_what_it_means_in_counts() -> None:
    settings = (_setting("c=1", 0.001), _setting("c=16", 0.004))
    cal = Calibration(settings, T, suggest(settings, T), Cost(), max_tokens=256)
    text = render(cal)
    per_response = critical_count(256, T.divergence_rate, T.divergence_alpha)
    assert "the baseline's own divergence rate is 4.00e-03 per token" in text
    assert "current divergence_rate 0.02 (5.0x its own rate) at alpha 1e-06: a 256-token" in text
    assert f"fails from {per_response} divergences, a run of 8000 tokens from" in text
    assert "suggested divergence_rate 0.016 (4.0x its own rate)" in text
