"""The timing metrics of DESIGN.md §4.3, each defined once, here.

Timestamps are `perf_counter_ns`; a request's clock starts when its bytes are sent. Every
definition counts only events that carry a token id and logprob, so a server cannot buy a lower
TTFT with role-only or empty chunks, nor a lower ITL by splitting or padding events. Durations are
integer nanoseconds; a metric with no value for a response raises `NoValue` rather than return a
sentinel.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

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


def median_itl_ns(responses: Iterable[Response]) -> float | None:
    """The median ITL over responses (a launch's): None when none has a gap."""
    gaps = [gap for response in responses for gap in itl_ns(response)]
    return statistics.median(gaps) if gaps else None


def time_to_token_ns(response: Response, k: int, launch_itl_ns: float | None) -> int:
    """T_k: the time to the response's k-th token (1-based), the speed of a request.

    A response shorter than k is timed to its last token plus (k - n) times its own median
    inter-token gap, so output length cannot buy speed in either direction: a stop at a near-tie
    EOS ends the stream early but not the clock. With no gap of its own (one token, or every
    token in one event) it pays the launch's median gap, and with none in the launch either its
    own pace from the send (time to its last token over its token count).
    """
    n = output_tokens(response)
    if n == 0 or k < 1:
        raise NoValue(f"no token {k} in a response of {n}")
    times = response.token_ns
    if k <= n:
        return times[k - 1]
    own = itl_ns(response)
    gap = statistics.median(own) if own else launch_itl_ns
    if gap is None:
        gap = times[-1] / n
    return round(times[-1] + (k - n) * gap)


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
