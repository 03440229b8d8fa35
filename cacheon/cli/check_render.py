"""What `cacheon-miner check` prints: image facts, launches, every gate check, the verdict.

A miner acts on numbers, not on a pass/fail bit: how far each correctness check is from its
threshold, how wide the speed bounds are, which layers a copy check would compare. The verdict
line itself (`verdict: <OUTCOME> <reason>`) is stable, so scripts and tests can read it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from cacheon.agent.correctness import RESPONSE_CHECKS, GateResult
from cacheon.arena import Judgement, Listing, RoundVoid, Screened, launch_speeds
from cacheon.chain.commitments import ImageRef
from cacheon.protocol import GateThresholds, ImageFacts, JobSpec, Outcome, ReasonCode, RoundReport
from cacheon.validator.reasons import meaning


@dataclass(frozen=True)
class Prescreen:
    """What the check's pre-screen found, for display beside the verdict."""

    image: ImageRef | None = None
    listing: Listing | None = None
    base_layers: frozenset[str] | None = None
    """The baseline's layer diff ids: shared by everyone, never counted as a copy."""
    leader_layers: frozenset[str] | None = None
    screened: Screened | None = None
    """The arena's pre-screen finding; None for an attached server."""
    warnings: tuple[str, ...] = ()


def image_facts(out: Console, screened: Prescreen, facts: ImageFacts | None) -> None:
    """The facts a validator's copy detection uses (DESIGN.md §4.6)."""
    table = Table(title="Image facts (what copy detection compares)", show_header=False)
    if screened.image is not None:
        table.add_row("digest", screened.image.digest)
    if screened.listing is not None:
        table.add_row("compressed size", f"{screened.listing.compressed_size / 1e9:.3f} GB")
    if facts is not None and facts.config_digest is not None:
        table.add_row("config digest", facts.config_digest)
    layers = screened.listing.layers if screened.listing else ()
    if not layers and facts is not None:
        layers = facts.layer_diff_ids
    for index, layer in enumerate(layers):
        table.add_row(f"layer {index}", f"{layer}  ({_whose(layer, screened)})")
    if table.row_count:
        out.print(table)
    for warning in screened.warnings:
        out.print(f"[yellow]warning[/yellow]: {warning}", highlight=False)


def _whose(layer: str, screened: Prescreen) -> str:
    if screened.base_layers is not None and layer in screened.base_layers:
        return "baseline"
    if screened.leader_layers is not None and layer in screened.leader_layers:
        return "leader's"
    return "own"


def launches(out: Console, job: JobSpec, report: RoundReport) -> None:
    roles = {c.key: c.role.value for c in job.contestants}
    try:
        speeds = {(s.key, s.at): s.log_speed for s in launch_speeds(report)}
    except RoundVoid:
        speeds = {}
    table = Table(title="Launches")
    for column in ("#", "who", "speed (1/s)", "TTFT (s)", "ITL (s)", "tok/s (top level)", "end"):
        table.add_column(column)
    for launch in report.launches:
        levels = launch.levels
        log_speed = speeds.get((launch.contestant, (launch.started_ns + launch.ended_ns) / 2))
        table.add_row(
            str(launch.index),
            f"{launch.contestant} ({roles.get(launch.contestant, '?')})",
            "—" if log_speed is None else f"{math.exp(log_speed):.3f}",
            _median([lv.ttft_s for lv in levels]),
            _median([lv.itl_s for lv in levels]),
            _top([lv.throughput_tok_s for lv in levels]),
            f"{launch.reason}: {launch.detail[-80:]}" if launch.reason else "ok",
        )
    out.print(table)


def _median(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.3f}" if known else "—"


def _top(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{max(known):.1f}" if known else "—"


def gate_checks(out: Console, gate: GateResult | None, t: GateThresholds) -> None:
    """Every check of DESIGN.md §4.4 with its number and threshold."""
    if gate is None:
        out.print("correctness: not scored (the image did not finish its launch, or B' did not)")
        return
    s = gate.stats
    low, high = t.length_band
    rows: list[tuple[ReasonCode, str, str]] = [
        (
            ReasonCode.FABRICATION,
            f"{s.confident_share:.0%} of {s.uncertain_positions} uncertain positions near-certain",
            f"< {t.fabrication_share:.0%} once ≥ {t.fabrication_min_positions} positions",
        ),
        (
            ReasonCode.DISTRIBUTION,
            f"KL mean {s.kl_mean:.4f}, p99 {s.kl_p99:.4f}",
            f"mean ≤ {t.kl_mean}, p99 ≤ {t.kl_p99}",
        ),
        (ReasonCode.VALUE_CLOSENESS, f"p99 |Δlogprob| {s.abs_delta_p99:.4f}", f"≤ {t.delta}"),
        (
            ReasonCode.LENGTH_BAND,
            f"{s.length_ratio:.3f} x the baseline's length",
            f"{low} .. {high}",
        ),
        (
            ReasonCode.GARBAGE,
            f"lowest reference logprob {s.min_ref_logprob:.2f}",
            f"≥ {t.min_logprob}",
        ),
        (
            ReasonCode.GREEDY_CONSISTENCY,
            f"{s.divergences} near-tie divergences in {s.tokens} tokens (p = {s.divergence_p:.1e};"
            f" worst response p = {s.worst_response_p:.1e})",
            f"p ≥ {t.divergence_alpha:g} at rate {t.divergence_rate}, each ≤ {t.eps_tie} nats",
        ),
    ]
    found = {code for code, _, _ in rows}
    rows += [(code, "", "") for code in RESPONSE_CHECKS if code not in found]
    table = Table(title=f"Correctness gate ({s.responses} responses, {s.tokens} tokens scored)")
    for column in ("check", "result", "measured", "threshold"):
        table.add_column(column)
    for code, number, rule in rows:
        failing = gate.failures.get(code, 0)
        result = "[green]pass[/green]" if not failing else f"[red]FAIL[/red] ({failing})"
        measured, threshold = number, rule
        if code in RESPONSE_CHECKS:  # judged per response: say how many failed on it first
            count = f"{failing}/{s.responses} responses fail first here"
            measured = f"{number}; {count}" if number else count
            threshold = rule or _RESPONSE_RULE[code]
        table.add_row(code.value, result, measured, threshold)
    out.print(table)


_RESPONSE_RULE = {
    ReasonCode.CONFORMANCE: "token ids, top-5 at every token, text matches ids",
    ReasonCode.EOS_HONESTY: "stop only where EOS is within ε_tie of the argmax",
    ReasonCode.PLAUSIBILITY: "every token in the reference top-5",
}


def verdict(out: Console, judged: Judgement, sigma: float, source: str) -> None:
    ratio, evidence = judged.ratio, judged.vs_baseline
    if ratio is not None and evidence is not None:
        n = evidence.launches
        out.print(
            f"speed: x{math.exp(ratio.estimate):.4f} vs the baseline (bounds"
            f" x{math.exp(ratio.lower):.4f} .. x{math.exp(ratio.upper):.4f},"
            f" {n} launch{'es' if n != 1 else ''})",
            highlight=False,
        )
    if ratio is not None or judged.decision is not None:
        out.print(f"launch noise sigma_L = {sigma:.4f} (log scale, {source})", highlight=False)
    if judged.behaves_like is not None:
        out.print(
            f"[yellow]{ReasonCode.BEHAVIOURAL_COPY.value}[/yellow]: "
            f"{meaning(ReasonCode.BEHAVIOURAL_COPY, Outcome.PASS)}"
        )
    verdict_line(out, judged.outcome, judged.reason, judged.detail)


def verdict_line(out: Console, outcome: Outcome, reason: ReasonCode | None, detail: str) -> None:
    """`verdict: <OUTCOME> <reason>`, what it means, and the detail behind it."""
    colour = {Outcome.PASS: "green", Outcome.FAIL: "red"}.get(outcome, "yellow")
    code = reason.value if reason else ""
    out.print(f"verdict: [{colour}]{outcome.value}[/{colour}] {code}".rstrip())
    explained = meaning(reason, outcome)
    if explained:
        out.print(f"  means: {explained}", highlight=False)
    if detail:
        out.print(f"  detail: {detail}", highlight=False, soft_wrap=True)
