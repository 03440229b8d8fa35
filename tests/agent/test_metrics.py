"""The §4.3 definitions on hand-made streams, and the contract checks of response parsing."""

from __future__ import annotations

import math

import orjson
import pytest

from cacheon.agent import metrics
from cacheon.agent.response import Event, ResponseFault, parse
from cacheon.protocol import ReasonCode

MS = 1_000_000


def _chunk(tokens: list[int], finish: str | None = None, model: str = "m") -> bytes:
    top = [{"token": f"token_id:{t}", "logprob": -0.5 - i} for i, t in enumerate(range(5))]
    content = [{"token": f"token_id:{t}", "logprob": -0.25, "top_logprobs": top} for t in tokens]
    choice = {
        "index": 0,
        "delta": {"content": "x"},
        "logprobs": {"content": content} if tokens else None,
        "finish_reason": finish,
    }
    return orjson.dumps({"model": model, "choices": [choice]})


def _role() -> bytes:
    return orjson.dumps({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})


def _stream(*events: tuple[int, bytes]) -> list[Event]:
    return [Event(at * MS, data) for at, data in events] + [Event(events[-1][0] * MS, b"[DONE]")]


def test_empty_and_role_chunks_do_not_count() -> None:
    events = _stream((1, _role()), (2, _chunk([])), (40, _chunk([7, 8])), (60, _chunk([9], "stop")))
    response = parse(0, events, "m", 16)
    assert metrics.ttft_ns(response) == 40 * MS
    assert metrics.e2e_ns(response) == 60 * MS
    assert metrics.output_tokens(response) == 3
    assert response.token_ids == (7, 8, 9)
    assert metrics.itl_ns(response) == [20 * MS]
    assert metrics.time_to_token_ns(response, 2) == 40 * MS
    assert metrics.time_to_token_ns(response, 3) == 60 * MS


def test_several_tokens_in_one_event_count_as_several_gaps() -> None:
    events = _stream((10, _chunk([1])), (40, _chunk([2, 3, 4], "length")))
    assert metrics.itl_ns(parse(0, events, "m", 16)) == [10 * MS] * 3


def test_speed_is_the_geometric_mean_of_inverse_times() -> None:
    assert math.isclose(metrics.speed([100 * MS, 400 * MS]), 5.0)
    with pytest.raises(metrics.NoValue):
        metrics.speed([])


def test_k_is_the_baselines_length_whatever_the_contestants() -> None:
    assert metrics.speed_k(30, 64) == 30
    assert metrics.speed_k(80, 64) == 64


def test_a_short_answer_is_timed_as_if_it_went_on_at_its_own_pace() -> None:
    """Stopping at token 4 (at 80 ms) of a k = 6 answer: timed at 80 ms x 6 / 4, as if the stream
    had gone on at the pace it had since the send."""
    events = _stream(
        (20, _chunk([1])), (40, _chunk([2])), (60, _chunk([3])), (80, _chunk([4], "stop"))
    )
    response = parse(0, events, "m", 16)
    assert metrics.time_to_token_ns(response, 4) == 80 * MS
    assert metrics.time_to_token_ns(response, 6) == 120 * MS
    longer = _stream(*((20 + 10 * i, _chunk([i])) for i in range(8)), (100, _chunk([9], "length")))
    assert metrics.time_to_token_ns(parse(0, longer, "m", 16), 6) == 70 * MS  # the k-th token


def test_a_burst_at_the_end_does_not_shorten_what_is_missing() -> None:
    """Holding the tokens back and sending them in one burst makes every gap nothing; the time
    it took to produce them is still in the last token's time."""
    streamed = parse(
        0,
        _stream(*((10 * (i + 1), _chunk([i])) for i in range(3)), (40, _chunk([3], "stop"))),
        "m",
        16,
    )
    burst = parse(
        0, _stream(*((40, _chunk([i])) for i in range(3)), (40, _chunk([3], "stop"))), "m", 16
    )
    assert metrics.itl_ns(burst) == [0.0, 0.0, 0.0]
    assert metrics.time_to_token_ns(burst, 8) == metrics.time_to_token_ns(streamed, 8) == 80 * MS


@pytest.mark.parametrize(
    ("events", "reason", "message"),
    [
        ([Event(0, b"{not json")], ReasonCode.BAD_RESPONSE, "not JSON"),
        (_stream((1, _chunk([1], "stop", model="other"))), ReasonCode.CONFORMANCE, "served model"),
        (
            _stream((1, _chunk([1], "stop").replace(b"token_id:1", b"hello"))),
            ReasonCode.CONFORMANCE,
            "token_id",
        ),
        (_stream((1, _chunk(list(range(20)), "length"))), ReasonCode.BAD_RESPONSE, "max_tokens"),
        ([Event(0, _chunk([1], "stop"))], ReasonCode.BAD_RESPONSE, "DONE"),
        (_stream((1, _chunk([1]))), ReasonCode.BAD_RESPONSE, "finish_reason"),
        (_stream((1, _role()), (2, _chunk([], "stop"))), ReasonCode.CONFORMANCE, "no token ids"),
        (
            _stream((1, _chunk([1], "stop").replace(b"-0.25", b"0.5"))),
            ReasonCode.BAD_RESPONSE,
            "logprob",
        ),
    ],
)
def test_contract_breaks_are_faults(events: list[Event], reason: ReasonCode, message: str) -> None:
    with pytest.raises(ResponseFault, match=message) as caught:
        parse(0, events, "m", 16)
    assert caught.value.reason is reason
