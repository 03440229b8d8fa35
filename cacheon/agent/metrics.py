"""The timing metrics of DESIGN.md §4.3, each defined once, here.

Timestamps are `perf_counter_ns`; a request's clock starts when its bytes are sent. Every
definition counts only events that carry a token id and logprob, so a server cannot buy a lower
TTFT with role-only or empty chunks, nor a lower ITL by splitting or padding events. Durations are
integer nanoseconds; a metric with no value for a response raises `NoValue` rather than return a
sentinel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cacheon.agent.response import Response


class NoValue(ValueError):
    """The metric is undefined for this response (too few tokens)."""


def ttft_ns(response: Response) -> int:
    """TTFT: until the first event that carries a token id and logprob (role-only or empty
    chunks do not count)."""
    if not response.events:
        raise NoValue("no token-carrying event")
    return response.events[0].at_ns - response.sent_ns


def itl_ns(response: Response) -> list[float]:
    """ITL: gaps between token-carrying events (several tokens in one event count as several).

    An event with m tokens that arrives g after the previous one contributes m gaps of g / m.
    """
    gaps: list[float] = []
    for before, after in zip(response.events, response.events[1:], strict=False):
        gap = (after.at_ns - before.at_ns) / after.tokens
        gaps.extend([gap] * after.tokens)
    return gaps


def e2e_ns(response: Response) -> int:
    """E2E: until the last token-carrying event."""
    if not response.events:
        raise NoValue("no token-carrying event")
    return response.events[-1].at_ns - response.sent_ns


def output_tokens(response: Response) -> int:
    """Output tokens: token ids received, never `usage`, never re-tokenised text."""
    return len(response.token_ids)


def speed_k(n_baseline: int, max_tokens: int) -> int:
    """k = min(n_baseline, max_tokens) for one prompt: the baseline's answer length, whatever the
    length of the contestant's."""
    return min(n_baseline, max_tokens)


def time_to_token_ns(response: Response, k: int) -> int:
    """T_k: the time to the response's k-th token (1-based), the speed of a request.

    A response shorter than k is timed as if it had gone on at its own pace since the send,
    T_n * k / n, so output length cannot buy speed in either direction: a stop at a near-tie EOS
    ends the stream early but not the clock. Its pace since the send, not its gaps between
    events: a server that holds its tokens and sends them in one burst at the end shows gaps of
    nothing (and so does an overloaded host whose events bunch up), while the time it took to
    produce them is all in T_n.
    """
    n = output_tokens(response)
    if n == 0 or k < 1:
        raise NoValue(f"no token {k} in a response of {n}")
    times = response.token_ns
    return times[k - 1] if k <= n else round(times[-1] * k / n)


def speed(times_ns: Sequence[int]) -> float:
    """The speed at a level: the geometric mean of 1/T_k over its requests, in 1/s."""
    if not times_ns:
        raise NoValue("no requests")
    return math.exp(-math.fsum(math.log(t / 1e9) for t in times_ns) / len(times_ns))


def throughput(responses: Sequence[Response]) -> float:
    """Output tokens per second over a block: all tokens over the span from the first send to
    the last token-carrying event."""
    if not responses:
        raise NoValue("no responses")
    start = min(r.sent_ns for r in responses)
    end = max(r.events[-1].at_ns for r in responses if r.events)
    return sum(output_tokens(r) for r in responses) / ((end - start) / 1e9)
