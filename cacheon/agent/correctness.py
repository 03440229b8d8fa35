"""The correctness gate (DESIGN.md §4.4): pure functions over parsed responses and references.

Two correct servers diverge at near-ties because GPU reductions are not batch-invariant, so the
gate never compares generated text. It re-scores each contestant token under the baseline
(teacher forcing, done by `teacher.py`) and asks of every position: is the token in the reference
top-5, is it the reference argmax or within a near-tie of it, is the reported logprob close to
the reference's, is the reported top-5 distribution close. Whole responses add EOS honesty and
how often they leave the argmax (`divergence.py`: a rate, judged over each response and over the
run, so a verdict does not change with max_tokens), and the run adds the length band and a
fabrication check. One failed check fails the contestant with that check's reason code.

Which code a failing run gets: each response gets the check that failed at its earliest
position (`score_response`), and the run the most common of those (ties go to the earlier check
in `RESPONSE_CHECKS`). When every response passes, the run-level checks decide, in `RUN_CHECKS`
order.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cacheon.agent.divergence import binomial_tail, critical_count, distinct_divergences
from cacheon.protocol import GateThresholds, Outcome, ReasonCode

PLAUSIBLE_RANK = 5
"""A contestant token must be within the reference top-5."""
CONFIDENT_LOGPROB = math.log(0.99)
"""A reported logprob above this claims near-certainty."""
_FLOOR = 1e-12
"""Probability floor inside the KL, so a token one side omits costs a finite amount."""

RESPONSE_CHECKS = (
    ReasonCode.CONFORMANCE,
    ReasonCode.EOS_HONESTY,
    ReasonCode.GARBAGE,
    ReasonCode.PLAUSIBILITY,
    ReasonCode.GREEDY_CONSISTENCY,
)
RUN_CHECKS = (
    ReasonCode.FABRICATION,
    ReasonCode.GREEDY_CONSISTENCY,
    ReasonCode.DISTRIBUTION,
    ReasonCode.VALUE_CLOSENESS,
    ReasonCode.LENGTH_BAND,
)

TopList = tuple[tuple[int, float], ...]
"""(token id, logprob) pairs, most likely first."""


@dataclass(frozen=True)
class Reported:
    """What the contestant streamed for one token."""

    token: int
    logprob: float
    top: TopList


@dataclass(frozen=True)
class Response:
    """One measured response of a contestant, as its stream was parsed."""

    key: str
    """Names the prompt; the same key in two launches means the same prompt."""
    tokens: tuple[Reported, ...]
    finish_reason: str
    max_tokens: int
    text: str | None = None
    """The streamed `delta.content`, when it was kept: checked against the token ids."""


@dataclass(frozen=True)
class RefPosition:
    """The baseline's view of one contestant position, from `prompt_logprobs`."""

    chosen: float
    """Reference logprob of the token the contestant chose here (vLLM always returns it)."""
    top: TopList
    """The reference top-K (K = 20), most likely first."""


@dataclass(frozen=True)
class Reference:
    positions: tuple[RefPosition, ...]
    """One per contestant token."""
    after: TopList
    """The reference top-K after the last contestant token (where a stop without EOS is)."""


@dataclass(frozen=True)
class PositionScore:
    rank: int
    """1 + the number of reference tokens strictly more likely than the contestant's."""
    gap: float
    """Reference top-1 logprob minus that of the contestant's token: 0 where it is the argmax."""
    ref_logprob: float
    abs_delta: float
    """|reported logprob - reference logprob| of the contestant's token."""
    kl: float
    """KL(reference ‖ contestant) over the union of both top-5 plus a residual bucket, nats."""
    ref_entropy: float
    """Entropy of the reference top-K plus a residual bucket: a lower bound, nats."""
    reported_logprob: float


@dataclass(frozen=True)
class ResponseScore:
    key: str
    positions: tuple[PositionScore, ...]
    divergences: int
    """Positions where the token is not the reference argmax, a choice repeated in a loop once."""
    failure: ReasonCode | None
    detail: str = ""


@dataclass(frozen=True)
class RunStats:
    """What the run-level checks look at; calibration prints the same numbers."""

    responses: int
    tokens: int
    kl_mean: float
    kl_p99: float
    abs_delta_p99: float
    min_ref_logprob: float
    divergences: int
    """Near-tie divergences over every scored response (`ResponseScore.divergences`)."""
    divergence_p: float
    """How likely that many are, over that many tokens, at the gate's `divergence_rate`."""
    worst_response_p: float
    """The same for the response where they are least likely."""
    length_ratio: float
    uncertain_positions: int
    """Positions whose reference entropy is at least `fabrication_entropy`."""
    confident_share: float
    """Share of those where the contestant reported a near-certain logprob."""


@dataclass(frozen=True)
class GateResult:
    outcome: Outcome
    reason: ReasonCode | None
    detail: str
    stats: RunStats
    failures: Mapping[ReasonCode, int]
    """Failing responses per code (run-level failures count 1)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _side_probs(known: Mapping[int, float], union: Sequence[int], cap: float) -> list[float]:
    """Probabilities over `union` + residual for one side that only reported `known` logprobs.

    Members it did not report share the leftover mass with the residual bucket, each at most
    `cap` (an unreported token cannot be likelier than the least likely one reported).
    """
    probs = {tok: math.exp(lp) for tok, lp in known.items() if tok in union}
    total = sum(probs.values())
    if total > 1.0:  # logprobs that claim more than all the mass: renormalise, no residual
        return [probs.get(tok, 0.0) / total for tok in union] + [0.0]
    missing = [tok for tok in union if tok not in probs]
    leftover = 1.0 - total
    share = min(cap, leftover / (len(missing) + 1)) if missing else 0.0
    out = [probs.get(tok, share) for tok in union]
    return [*out, max(0.0, leftover - share * len(missing))]


def union_kl(ref: RefPosition, ref_chosen_token: int, reported: Reported) -> float:
    """KL(reference ‖ contestant) over both top-5 supports plus one residual bucket."""
    union = list(
        dict.fromkeys([t for t, _ in ref.top[:PLAUSIBLE_RANK]] + [t for t, _ in reported.top])
    )
    ref_known = dict(ref.top)
    ref_known[ref_chosen_token] = ref.chosen
    mine = dict(reported.top)
    mine.setdefault(reported.token, reported.logprob)
    p = _side_probs(ref_known, union, math.exp(min(ref_known.values())))
    q = _side_probs(mine, union, math.exp(min(mine.values())) if mine else 1.0)
    return max(
        0.0,
        sum(
            pi * (math.log(pi) - math.log(max(qi, _FLOOR)))
            for pi, qi in zip(p, q, strict=True)
            if pi > _FLOOR
        ),
    )


def entropy(top: TopList) -> float:
    probs = [math.exp(lp) for _, lp in top]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in [*probs, rest] if p > 0.0)


def score_position(ref: RefPosition, reported: Reported) -> PositionScore:
    best = max(ref.top[0][1], ref.chosen) if ref.top else ref.chosen
    return PositionScore(
        rank=1 + sum(1 for tok, lp in ref.top if lp > ref.chosen and tok != reported.token),
        gap=best - ref.chosen,
        ref_logprob=ref.chosen,
        abs_delta=abs(reported.logprob - ref.chosen),
        kl=union_kl(ref, reported.token, reported),
        ref_entropy=entropy(ref.top),
        reported_logprob=reported.logprob,
    )


def _eos_logprob(top: TopList, eos_ids: frozenset[int]) -> float | None:
    found = [lp for tok, lp in top if tok in eos_ids]
    return max(found) if found else None


def _conformance(response: Response, detokenized: str | None) -> str:
    """Why the response breaks the contract's shape, or "" when it keeps it.

    The stream parser already refused missing token ids and a wrong model name; what is left is
    what needs the whole response or the baseline's tokenizer.
    """
    n = len(response.tokens)
    if n == 0:
        return "no tokens"
    if response.finish_reason == "length" and n != response.max_tokens:
        return f"finish_reason length after {n} of max_tokens {response.max_tokens} tokens"
    if any(len(t.top) != PLAUSIBLE_RANK for t in response.tokens):
        return f"top_logprobs must have {PLAUSIBLE_RANK} entries at every token"
    if detokenized is not None and response.text is not None and detokenized != response.text:
        return f"text {response.text[:40]!r} does not match its token ids: {detokenized[:40]!r}"
    return ""


Finding = tuple[int, ReasonCode, str]
"""(position, check, detail) of one failed check in a response."""


def _eos_findings(
    response: Response,
    ref: Reference,
    scores: Sequence[PositionScore],
    eps: float,
    eos_ids: frozenset[int],
) -> list[Finding]:
    tokens = response.tokens
    ends_with_eos = tokens[-1].token in eos_ids
    body = len(tokens) - 1 if ends_with_eos else len(tokens)
    found: list[Finding] = []
    for t in range(body):
        lead = ref.positions[t].top[0]
        if tokens[t].token in eos_ids:
            found.append(
                (t, ReasonCode.EOS_HONESTY, f"EOS at position {t} and the response goes on")
            )
        elif lead[0] in eos_ids and lead[1] - scores[t].ref_logprob > eps:
            lead_by = lead[1] - scores[t].ref_logprob
            found.append(
                (
                    t,
                    ReasonCode.EOS_HONESTY,
                    f"EOS skipped at position {t}: it led by {lead_by:.2f} nats",
                )
            )
    if response.finish_reason == "stop":
        eos: float | None
        if ends_with_eos:
            where = ref.positions[-1]
            best, eos = max(where.top[0][1], where.chosen), where.chosen
        else:
            best, eos = ref.after[0][1], _eos_logprob(ref.after, eos_ids)
        if eos is None or best - eos > eps:
            behind = (
                "not in the reference top-K" if eos is None else f"{best - eos:.2f} nats behind"
            )
            found.append(
                (body, ReasonCode.EOS_HONESTY, f"stopped at position {body} where EOS is {behind}")
            )
    return found


def _token_findings(scores: Sequence[PositionScore], t: GateThresholds) -> list[Finding]:
    found: list[Finding] = []
    for pos, s in enumerate(scores):
        if s.ref_logprob < t.min_logprob:
            found.append(
                (
                    pos,
                    ReasonCode.GARBAGE,
                    f"token at position {pos} has reference logprob {s.ref_logprob:.2f}",
                )
            )
        if s.rank > PLAUSIBLE_RANK:
            found.append(
                (
                    pos,
                    ReasonCode.PLAUSIBILITY,
                    f"token at position {pos} has reference rank {s.rank}",
                )
            )
        if s.gap > t.eps_tie:
            found.append(
                (
                    pos,
                    ReasonCode.GREEDY_CONSISTENCY,
                    f"position {pos} is {s.gap:.2f} nats behind the reference argmax",
                )
            )
    return found


def _rate_findings(divergent: Sequence[int], n: int, t: GateThresholds) -> list[Finding]:
    """Too many divergences for `n` tokens at the honest rate: found where the count that is
    improbable at `divergence_alpha` was reached."""
    critical = critical_count(n, t.divergence_rate, t.divergence_alpha)
    if critical is None or len(divergent) < critical:
        return []
    p = binomial_tail(len(divergent), n, t.divergence_rate)
    detail = (
        f"{len(divergent)} near-tie divergences in {n} tokens: p = {p:.1e} at rate"
        f" {t.divergence_rate} (fails below {t.divergence_alpha})"
    )
    return [(divergent[critical - 1], ReasonCode.GREEDY_CONSISTENCY, detail)]


def score_response(
    response: Response,
    ref: Reference,
    thresholds: GateThresholds,
    *,
    eos_ids: frozenset[int],
    detokenized: str | None = None,
) -> ResponseScore:
    """Scores one response and names the check that failed first.

    "First" is by position: a cheat shows where it starts (a sampled token, a replayed answer's
    first token, an early stop), and what follows is conditioned on it. At one position the
    order of `RESPONSE_CHECKS` decides (a token with logprob -20 is garbage before implausible).
    """
    problem = _conformance(response, detokenized)
    if not problem and len(ref.positions) != len(response.tokens):
        problem = f"{len(response.tokens)} tokens but {len(ref.positions)} reference positions"
    if problem:
        return ResponseScore(response.key, (), 0, ReasonCode.CONFORMANCE, problem)
    scores = tuple(
        score_position(r, m) for r, m in zip(ref.positions, response.tokens, strict=True)
    )
    tokens = [m.token for m in response.tokens]
    argmaxes = [
        r.top[0][0] if s.gap > 0.0 else m
        for r, s, m in zip(ref.positions, scores, tokens, strict=True)
    ]
    divergent = distinct_divergences(tokens, argmaxes)
    findings = _eos_findings(response, ref, scores, thresholds.eps_tie, eos_ids)
    findings += _token_findings(scores, thresholds)
    findings += _rate_findings(divergent, len(scores), thresholds)
    if not findings:
        return ResponseScore(response.key, scores, len(divergent), None)
    _, code, detail = min(findings, key=lambda f: (f[0], RESPONSE_CHECKS.index(f[1])))
    return ResponseScore(response.key, scores, len(divergent), code, detail)


def run_stats(
    scores: Sequence[ResponseScore],
    lengths: Mapping[str, int],
    baseline_lengths: Mapping[str, int],
    thresholds: GateThresholds,
) -> RunStats:
    """Aggregates over every scored position; `lengths` are over all measured responses."""
    positions = [p for s in scores for p in s.positions]
    kls = [p.kl for p in positions] or [0.0]
    deltas = [p.abs_delta for p in positions] or [0.0]
    uncertain = [p for p in positions if p.ref_entropy >= thresholds.fabrication_entropy]
    confident = sum(1 for p in uncertain if p.reported_logprob > CONFIDENT_LOGPROB)
    shared = [k for k in lengths if k in baseline_lengths]
    base_total = sum(baseline_lengths[k] for k in shared)
    rate = thresholds.divergence_rate
    divergences = sum(s.divergences for s in scores)
    return RunStats(
        responses=len(scores),
        tokens=len(positions),
        kl_mean=math.fsum(kls) / len(kls),
        kl_p99=percentile(kls, 99),
        abs_delta_p99=percentile(deltas, 99),
        min_ref_logprob=min((p.ref_logprob for p in positions), default=0.0),
        divergences=divergences,
        divergence_p=binomial_tail(divergences, len(positions), rate),
        worst_response_p=min(
            (binomial_tail(s.divergences, len(s.positions), rate) for s in scores), default=1.0
        ),
        length_ratio=sum(lengths[k] for k in shared) / base_total if base_total else 1.0,
        uncertain_positions=len(uncertain),
        confident_share=confident / len(uncertain) if uncertain else 0.0,
    )


def _run_failures(stats: RunStats, t: GateThresholds) -> list[tuple[ReasonCode, str]]:
    low, high = t.length_band
    found = [
        (
            ReasonCode.FABRICATION,
            stats.uncertain_positions >= t.fabrication_min_positions
            and stats.confident_share >= t.fabrication_share,
            f"{stats.confident_share:.0%} of {stats.uncertain_positions} uncertain positions "
            "reported as near-certain",
        ),
        (
            ReasonCode.GREEDY_CONSISTENCY,
            stats.divergence_p < t.divergence_alpha,
            f"{stats.divergences} near-tie divergences in {stats.tokens} tokens: p ="
            f" {stats.divergence_p:.1e} at rate {t.divergence_rate} (fails below"
            f" {t.divergence_alpha})",
        ),
        (
            ReasonCode.DISTRIBUTION,
            stats.kl_mean > t.kl_mean or stats.kl_p99 > t.kl_p99,
            f"KL mean {stats.kl_mean:.4f} (max {t.kl_mean}), p99 {stats.kl_p99:.4f} (max {t.kl_p99})",
        ),
        (
            ReasonCode.VALUE_CLOSENESS,
            stats.abs_delta_p99 > t.delta,
            f"p99 |Δlogprob| {stats.abs_delta_p99:.4f} (max {t.delta})",
        ),
        (
            ReasonCode.LENGTH_BAND,
            not low <= stats.length_ratio <= high,
            f"output length {stats.length_ratio:.3f} x the baseline's (band {low} to {high})",
        ),
    ]
    return [(code, detail) for code, failed, detail in found if failed]


def judge(
    scores: Sequence[ResponseScore],
    lengths: Mapping[str, int],
    baseline_lengths: Mapping[str, int],
    thresholds: GateThresholds,
) -> GateResult:
    """The verdict over every scored response of one contestant in one round."""
    stats = run_stats(scores, lengths, baseline_lengths, thresholds)
    per_response = Counter(s.failure for s in scores if s.failure is not None)
    run_level = _run_failures(stats, thresholds)
    failures = dict(per_response) | {code: 1 for code, _ in run_level if code not in per_response}
    if per_response:
        code = max(RESPONSE_CHECKS, key=lambda c: (per_response[c], -RESPONSE_CHECKS.index(c)))
        first = next(s for s in scores if s.failure is code)
        detail = f"{per_response[code]}/{len(scores)} responses; {first.key}: {first.detail}"
        return GateResult(Outcome.FAIL, code, detail, stats, failures)
    if run_level:
        code, detail = run_level[0]
        return GateResult(Outcome.FAIL, code, detail, stats, failures)
    return GateResult(Outcome.PASS, None, "", stats, failures)


def behavioural_copy_share(
    mine: Sequence[Response], theirs: Sequence[Response], *, tolerance: float
) -> float:
    """Share of the shared prompts where both streamed the same tokens with the same logprobs.

    The same means: the same token ids at every position, the same top-5 ids, and every reported
    logprob within `tolerance` of theirs. Two different engines essentially never agree that
    closely over a whole response (bf16 kernels differ by far more), while a copy of the leader
    run on the same node and prompts does on most of them, and nudging every logprob by a few
    ulps or a thousandth of a nat does not make it another engine (DESIGN.md §4.6).
    """
    other = {r.key: r.tokens for r in theirs}
    shared = [r for r in mine if r.key in other]
    if not shared:
        return 0.0
    same = sum(1 for r in shared if _same_stream(r.tokens, other[r.key], tolerance))
    return same / len(shared)


def _same_stream(a: Sequence[Reported], b: Sequence[Reported], tolerance: float) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.token != y.token or abs(x.logprob - y.logprob) > tolerance:
            return False
        top_x, top_y = dict(x.top), dict(y.top)
        if top_x.keys() != top_y.keys():
            return False
        if any(abs(lp - top_y[token]) > tolerance for token, lp in top_x.items()):
            return False
    return True
