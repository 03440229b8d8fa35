"""`cacheon-agent calibrate`: the baseline against itself, to set the gate's thresholds.

Two correct servers disagree a little (batch shape, kernels, concurrency change float
reductions), so every threshold of the correctness gate must sit above that natural drift and
far below what a cheat produces (DESIGN.md §4.4). This runs the pinned baseline under several
settings (each URL is one baseline instance, e.g. another `--max-num-seqs` or chunked-prefill
choice, and each at several concurrencies), teacher-forces every response through the first
URL, and reports the distributions the gate thresholds: per-token |Δlogprob|, per-token KL,
the near-tie divergence rate (per scored token, the quantity greedy consistency bounds) and the
reference gap at each divergence. The suggestion is `SAFETY_MULTIPLE` times the 99.9th
percentile (the maximum for the gap at divergences, the worst setting's rate for the divergence
rate), never below a floor that keeps a bit-exact engine from yielding a zero threshold; the
report says how far the baseline's own rate sits below the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cacheon.agent.correctness import (
    Response,
    ResponseScore,
    behavioural_copy_share,
    judge,
    percentile,
)
from cacheon.agent.divergence import critical_count
from cacheon.agent.loadgen import LoadGenerator, Target, workers_for
from cacheon.agent.teacher import (
    Cost,
    Teacher,
    eos_token_ids,
    response_from_stream,
    score_responses,
)
from cacheon.agent.workload import Prompt, PromptSource, Purpose
from cacheon.protocol import GateThresholds, Workload

SAFETY_MULTIPLE = 4.0
FLOORS = {"delta": 0.05, "eps_tie": 0.1, "kl_mean": 1e-3, "kl_p99": 1e-2, "divergence_rate": 0.005}
"""Lowest suggestions: a deterministic engine drifts by 0, and a 0 threshold fails everyone."""


@dataclass(frozen=True)
class Spread:
    """The distribution of one drift metric."""

    n: int
    p50: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        return cls(
            len(values),
            percentile(values, 50),
            percentile(values, 99),
            percentile(values, 99.9),
            max(values),
        )


@dataclass(frozen=True)
class SettingDrift:
    """One baseline setting scored by the reference."""

    label: str
    responses: int
    tokens: int
    abs_delta: Spread
    kl: Spread
    kl_mean: float
    divergences: Spread
    """Per response: tokens that are not the reference argmax (a loop's repeat counted once)."""
    divergence_rate: float
    """Those divergences per scored token, over the setting: what greedy consistency bounds."""
    gap_at_divergence: Spread
    length_ratio: float
    """Output tokens against the first setting's, over the same prompts."""
    identical_share: float
    """Responses the behavioural copy check calls the same as the first setting's (token ids
    exact, logprobs within `copy_logprob_tolerance`): how often the same engine looks a copy."""
    verdict: str
    """What the gate with the current thresholds says about this setting."""


@dataclass(frozen=True)
class Calibration:
    settings: tuple[SettingDrift, ...]
    current: GateThresholds
    suggested: GateThresholds
    cost: Cost
    max_tokens: int


def drift_of(
    label: str,
    scores: Sequence[ResponseScore],
    responses: Sequence[Response],
    first: Sequence[Response],
    thresholds: GateThresholds,
) -> SettingDrift:
    positions = [p for s in scores for p in s.positions]
    lengths = {r.key: len(r.tokens) for r in responses}
    first_lengths = {r.key: len(r.tokens) for r in first}
    result = judge(scores, lengths, first_lengths, thresholds)
    kls = [p.kl for p in positions]
    return SettingDrift(
        label=label,
        responses=len(scores),
        tokens=len(positions),
        abs_delta=Spread.of([p.abs_delta for p in positions]),
        kl=Spread.of(kls),
        kl_mean=math.fsum(kls) / len(kls) if kls else 0.0,
        divergences=Spread.of([float(s.divergences) for s in scores]),
        divergence_rate=sum(s.divergences for s in scores) / len(positions) if positions else 0.0,
        gap_at_divergence=Spread.of([p.gap for p in positions if p.gap > 0.0]),
        length_ratio=result.stats.length_ratio,
        identical_share=behavioural_copy_share(
            responses, first, tolerance=thresholds.copy_logprob_tolerance
        ),
        verdict=f"{result.outcome}"
        + (f" {result.reason}: {result.detail}" if result.reason else ""),
    )


def suggest(settings: Sequence[SettingDrift], current: GateThresholds) -> GateThresholds:
    """Thresholds at a safe multiple of the worst setting's drift, floored (module docstring)."""
    m = SAFETY_MULTIPLE
    delta_999 = max(s.abs_delta.p999 for s in settings)
    gap_max = max(s.gap_at_divergence.max for s in settings)
    ratios = [s.length_ratio for s in settings]
    low, high = current.length_band
    return current.model_copy(
        update={
            "delta": max(FLOORS["delta"], m * delta_999),
            "eps_tie": max(FLOORS["eps_tie"], m * max(gap_max, 2 * delta_999)),
            "divergence_rate": max(
                FLOORS["divergence_rate"], m * max(s.divergence_rate for s in settings)
            ),
            "kl_mean": max(FLOORS["kl_mean"], m * max(s.kl_mean for s in settings)),
            "kl_p99": max(FLOORS["kl_p99"], m * max(s.kl.p999 for s in settings)),
            "length_band": (min(low, 0.95 * min(ratios)), max(high, 1.05 * max(ratios))),
            "version": current.version + 1,
            "provisional": True,
        }
    )


async def _generate(
    url: str, model: str, prompts: Sequence[Prompt], concurrency: int, timeout_s: float
) -> list[Response]:
    workers = workers_for(concurrency)
    async with LoadGenerator(Target(url), model, workers, timeout_s) as load:
        block = await load.run_block(prompts, concurrency)
    fault = block.fault
    if fault is not None:
        raise CalibrationError(
            f"{url} at concurrency {concurrency}: {fault.reason}: {fault.detail}"
        )
    return [
        response_from_stream(f"p{m.index}", prompts[m.index].max_tokens, m.response)
        for m in block.measured
        if m.response is not None  # every one, as the block had no fault
    ]


class CalibrationError(Exception):
    """The baseline failed while being calibrated; nothing is suggested."""


async def calibrate(
    urls: Sequence[str],
    model: str,
    model_dir: Path,
    *,
    concurrencies: Sequence[int],
    prompts: int,
    max_tokens: int,
    max_model_len: int,
    seed: str,
    thresholds: GateThresholds,
    request_timeout_s: float = 300.0,
) -> Calibration:
    eos_ids = eos_token_ids(model_dir)
    source = PromptSource(Workload(max_tokens=max_tokens), seed, max_model_len)
    block = source.block(Purpose.MEASURE, 0, 0, prompts)
    messages = {f"p{i}": p.messages for i, p in enumerate(block)}
    runs: list[tuple[str, list[Response]]] = []
    for url in urls:
        for concurrency in concurrencies:
            label = f"{url} c={concurrency}"
            runs.append((label, await _generate(url, model, block, concurrency, request_timeout_s)))
    async with aiohttp.ClientSession() as session:
        teacher = Teacher(session, urls[0], model)
        cache: dict[str, list[int]] = {}
        settings = []
        for label, responses in runs:
            scores = await score_responses(
                teacher,
                responses,
                messages,
                thresholds,
                eos_ids=eos_ids,
                seed=seed,
                prompt_ids=cache,
            )
            settings.append(drift_of(label, scores, responses, runs[0][1], thresholds))
    suggested = suggest(settings, thresholds)
    return Calibration(tuple(settings), thresholds, suggested, teacher.cost, max_tokens)


def render(cal: Calibration) -> str:
    """The report `cacheon-agent calibrate` prints."""
    lines = [
        f"{'setting':<34} {'resp':>5} {'tokens':>6} | {'|dlp| p50':>9} {'p99':>9} {'p99.9':>9} "
        f"{'max':>9} | {'KL mean':>9} {'KL p99':>9} {'p99.9':>9} | {'div rate':>9} "
        f"{'max/resp':>8} {'gap@div max':>11} | {'len':>5} {'ident':>5}"
    ]
    for s in cal.settings:
        lines.append(
            f"{s.label[-34:]:<34} {s.responses:>5} {s.tokens:>6} | {s.abs_delta.p50:>9.2e} "
            f"{s.abs_delta.p99:>9.2e} {s.abs_delta.p999:>9.2e} {s.abs_delta.max:>9.2e} | "
            f"{s.kl_mean:>9.2e} {s.kl.p99:>9.2e} {s.kl.p999:>9.2e} | {s.divergence_rate:>9.2e} "
            f"{s.divergences.max:>8.0f} {s.gap_at_divergence.max:>11.3f} | {s.length_ratio:>5.3f} "
            f"{s.identical_share:>5.2f}"
        )
    lines.append("")
    lines += [f"gate with current thresholds: {s.label}: {s.verdict}" for s in cal.settings]
    lines.append("")
    lines += greedy_margin(cal)
    lines.append("")
    fields = ("eps_tie", "divergence_rate", "delta", "kl_mean", "kl_p99", "length_band")
    lines.append(f"suggested thresholds ({SAFETY_MULTIPLE:g} x p99.9 of the drift, floored):")
    for name in fields:
        now, new = getattr(cal.current, name), getattr(cal.suggested, name)
        lines.append(f"  {name:<16} {_fmt(new):>22}   (current {_fmt(now)})")
    c = cal.cost
    per_position_us = 1e6 * c.parse_s / c.positions if c.positions else 0.0
    lines.append(
        f"teacher forcing: {c.requests} requests, {c.scored_tokens} scored tokens, "
        f"{c.positions} positions returned, {c.response_bytes / 1e6:.1f} MB, "
        f"request time {c.request_s:.1f}s, client parse {c.parse_s:.2f}s "
        f"({per_position_us:.1f} us/position), {len(c.skipped)} skipped by the prompt cap"
    )
    return "\n".join(lines)


def greedy_margin(cal: Calibration) -> list[str]:
    """The baseline's own divergence rate against the threshold, and what the threshold means
    in counts: how many divergences fail a response of max_tokens and a run of this size."""
    own = max(s.divergence_rate for s in cal.settings)
    tokens = max(s.tokens for s in cal.settings)
    lines = [f"greedy consistency: the baseline's own divergence rate is {own:.2e} per token"]
    for label, t in (("current", cal.current), ("suggested", cal.suggested)):
        margin = f"{t.divergence_rate / own:.1f}x its own rate" if own else "it has none"
        per_response = critical_count(cal.max_tokens, t.divergence_rate, t.divergence_alpha)
        per_run = critical_count(tokens, t.divergence_rate, t.divergence_alpha)
        lines.append(
            f"  {label} divergence_rate {t.divergence_rate:.4g} ({margin}) at alpha"
            f" {t.divergence_alpha:g}: a {cal.max_tokens}-token response fails from"
            f" {per_response} divergences, a run of {tokens} tokens from {per_run}"
        )
    return lines


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)
