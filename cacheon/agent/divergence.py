"""Greedy consistency as a rate: how many near-tie divergences a response or a launch may have.

A correct engine that is not the baseline picks the runner-up at a near-tie now and then (GPU
reductions are not batch-invariant), so some divergences from the reference argmax are honest;
a server that samples diverges far more often. A fixed count per response cannot tell the two
apart: it grows with the response's length, so the verdict on one server would change with
max_tokens. The rule is a rate instead: an honest engine diverges at most `divergence_rate` per
scored token (calibrated on the baseline against itself), and a count is too many when it is
improbable at that rate, by a one-sided binomial test at significance `divergence_alpha`, over
each response and over the launch.

A divergence that repeats in a loop (the same choice after the same tokens) is one decision,
counted once: greedy text can cycle, and a cycle through one near-tie would otherwise multiply
a single honest flip by the length of the response.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LOOP_CONTEXT = 4
"""Tokens before a divergence that, with its two tokens, name it: the same key twice is a loop."""
_TAIL = 1e-18
"""Relative size of a binomial term below which the rest of the tail is negligible."""


def distinct_divergences(tokens: Sequence[int], argmaxes: Sequence[int]) -> list[int]:
    """Positions where the token is not the reference argmax, each (context, argmax, token) once."""
    seen: set[tuple[tuple[int, ...], int, int]] = set()
    found = []
    for pos, (token, best) in enumerate(zip(tokens, argmaxes, strict=True)):
        if token == best:
            continue
        key = (tuple(tokens[max(0, pos - LOOP_CONTEXT) : pos]), best, token)
        if key not in seen:
            seen.add(key)
            found.append(pos)
    return found


def binomial_tail(count: int, n: int, rate: float) -> float:
    """P(X >= count) for X ~ Binomial(n, rate): how likely this many divergences are at `rate`."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    if rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return 1.0
    log_term = (
        math.lgamma(n + 1)
        - math.lgamma(count + 1)
        - math.lgamma(n - count + 1)
        + count * math.log(rate)
        + (n - count) * math.log1p(-rate)
    )
    term, total = math.exp(log_term), 0.0
    odds = rate / (1.0 - rate)
    for i in range(count, n + 1):
        total += term
        if i > n * rate and term <= _TAIL * total:
            break
        term *= (n - i) / (i + 1) * odds
    return min(1.0, total)


def critical_count(n: int, rate: float, alpha: float) -> int | None:
    """The fewest divergences in `n` tokens that fail at significance `alpha`; None: none can."""
    low, high = 0, n
    if binomial_tail(n, n, rate) >= alpha:
        return None
    while low < high:  # the tail falls as the count grows
        mid = (low + high) // 2
        if binomial_tail(mid, n, rate) < alpha:
            high = mid
        else:
            low = mid + 1
    return low
