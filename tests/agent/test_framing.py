"""The stream limits: the framer counts every event, line, read and byte, caps them while the
stream runs, checks them against the tokens streamed after the block, and costs time linear in
the bytes; token ids are checked against the model's vocabulary as they are parsed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from cacheon import contract
from cacheon.agent import framing
from cacheon.agent.framing import Framer, StreamStats
from cacheon.agent.response import Event, ResponseFault, parse, read_vocab_size
from cacheon.contract import EXAMPLE_CHUNK, EXAMPLE_MODEL
from cacheon.protocol import ReasonCode


def _token_chunk(token: int = 9043, finish: str | None = None) -> bytes:
    chunk = orjson.loads(orjson.dumps(EXAMPLE_CHUNK))
    chunk["choices"][0]["logprobs"]["content"][0]["token"] = f"token_id:{token}"
    chunk["choices"][0]["finish_reason"] = finish
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _stream(tokens: int, between: bytes = b"") -> bytes:
    body = b"".join(
        between + _token_chunk(finish="length" if i == tokens - 1 else None) for i in range(tokens)
    )
    return body + b"data: [DONE]\n\n"


def _frame(data: bytes, max_tokens: int, piece: int) -> tuple[list[Event], StreamStats]:
    framer, events = Framer(max_tokens), []
    for start in range(0, len(data), piece):
        if framer.feed(data[start : start + piece], start, events):
            break
    return events, framer.stats


def test_the_contract_states_the_limits_the_framer_enforces() -> None:
    stated = {
        framing.EVENTS: (contract.EVENTS_PER_TOKEN, contract.EVENTS_PER_RESPONSE),
        framing.NON_DATA_LINES: (
            contract.NON_DATA_LINES_PER_TOKEN,
            contract.NON_DATA_LINES_PER_RESPONSE,
        ),
        framing.READS: (contract.READS_PER_TOKEN, contract.READS_PER_RESPONSE),
        framing.BYTES: (contract.BYTES_PER_TOKEN, contract.BYTES_PER_RESPONSE),
    }
    assert set(stated) == set(framing.ALLOWANCES)
    for allowance, (per_token, per_response) in stated.items():
        assert (allowance.per_token, allowance.per_response) == (per_token, per_response)
    assert framing.MAX_EVENT_BYTES == contract.MAX_EVENT_BYTES


@pytest.mark.parametrize("piece", [1, 7, 100, 1 << 20])
def test_events_are_the_same_however_the_bytes_are_cut(piece: int) -> None:
    data = _stream(3, between=b": keep-alive\n\nevent: x\ndata: {}\n\n")
    events, stats = _frame(data, max_tokens=4096, piece=piece)
    assert [e.data for e in events][-1] == b"[DONE]"
    assert len(events) == 3 + 3 + 1  # three `{}` events, three tokens, [DONE]
    assert events[1].data == _token_chunk()[6:-2]
    assert stats.events == 10  # the three comment-only events count too
    assert stats.non_data_lines == 6  # a comment and an `event:` line before every token
    assert stats.bytes == len(data)
    assert stats.reads == -(-len(data) // piece)


def test_comment_padding_fails_while_it_streams_with_the_numbers() -> None:
    data = (b":\n\n" * 5000 + _token_chunk()) * 2
    with pytest.raises(ResponseFault) as failed:
        _frame(data, max_tokens=24, piece=len(data))
    assert failed.value.reason is ReasonCode.BAD_RESPONSE
    assert "more than 112 events (at most 4 a token + 16)" in failed.value.detail


def test_comments_inside_one_event_are_counted_as_lines() -> None:
    data = b":\n" * 500 + _token_chunk()
    with pytest.raises(ResponseFault, match="more than 112 lines that are not"):
        _frame(data, max_tokens=24, piece=len(data))


def test_a_stream_written_byte_by_byte_exceeds_the_reads() -> None:
    with pytest.raises(ResponseFault, match="more than 112 reads"):
        _frame(_stream(2), max_tokens=24, piece=1)


def test_after_the_block_the_limits_follow_the_tokens_streamed() -> None:
    padded = _stream(2, between=b": pad\n\n" * 3)  # 4 events a token: at the limit
    events, stats = _frame(padded, max_tokens=256, piece=4096)
    assert stats.over(2) is None
    stats.check(2)
    more = _stream(2, between=b": pad\n\n" * 13)  # fine for max_tokens=256, not for 2 tokens
    events, stats = _frame(more, max_tokens=256, piece=4096)
    assert len(events) == 3
    problem = stats.over(2)
    assert problem is not None
    assert "for 2 tokens: 29 events (at most 4 a token + 16 = 24)" in problem
    assert "26 lines that are not `data:` lines (at most 4 a token + 16 = 24)" in problem
    with pytest.raises(ResponseFault) as failed:
        stats.check(2)
    assert failed.value.reason is ReasonCode.BAD_RESPONSE


def test_one_event_may_not_outgrow_its_cap() -> None:
    with pytest.raises(ResponseFault, match="an event exceeds"):
        _frame(b"data: " + b"x" * (framing.MAX_EVENT_BYTES + 1), max_tokens=1 << 12, piece=1 << 16)


def _seconds(data: bytes, max_tokens: int) -> float:
    start = time.process_time()
    _frame(data, max_tokens, piece=1 << 16)
    return time.process_time() - start


def test_framing_time_is_linear_in_the_bytes() -> None:
    """Re-slicing the buffer once per event made 80,000 comment events in one read cost 16x
    what 20,000 cost; scanning with an offset keeps it at 4x (with room for a busy host)."""
    small, large = b":\n\n" * 20_000, b":\n\n" * 80_000
    caps = 1 << 16  # max_tokens high enough that no cap cuts the stream short
    _seconds(small, caps)  # warm up
    ratio = min(_seconds(large, caps) for _ in range(3)) / min(
        _seconds(small, caps) for _ in range(3)
    )
    assert ratio < 8, ratio


def test_token_ids_outside_the_vocabulary_are_conformance() -> None:
    last = _token_chunk(token=5, finish="length")
    events = [Event(1, last[6:-2]), Event(2, b"[DONE]")]
    assert parse(0, events, EXAMPLE_MODEL, 4, vocab_size=9044).token_ids == (5,)
    with pytest.raises(ResponseFault) as failed:
        parse(0, events, EXAMPLE_MODEL, 4, vocab_size=9000)  # an alternative, 9043, is outside
    assert failed.value.reason is ReasonCode.CONFORMANCE
    assert "token id 9043 is outside the model's vocabulary of 9000" in failed.value.detail
    bad = [Event(1, _token_chunk(token=2_000_000_000, finish="length")[6:-2]), events[1]]
    with pytest.raises(ResponseFault, match="2000000000 is outside"):
        parse(0, bad, EXAMPLE_MODEL, 4, vocab_size=152_064)


def test_the_vocabulary_size_comes_from_the_model_config(tmp_path: Path) -> None:
    assert read_vocab_size(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    assert read_vocab_size(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 152064}))
    assert read_vocab_size(tmp_path) == 152064
