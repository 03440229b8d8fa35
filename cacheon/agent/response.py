"""Turn the server-sent events of one streamed response into token ids, logprobs and times.

The load generator only frames events and stamps them while a block runs; this parsing happens
after the block, off the measured path. It trusts nothing the server says about itself: tokens
are the `token_id:<id>` entries of `choices[0].logprobs.content`, never `usage` and never
re-tokenised text; an event with no such entry (a role-only or empty chunk) carries no token and
times nothing. Any break of the miner contract (DESIGN.md §4.2) raises `ResponseFault` with the
reason the launch fails with.

Token ids are checked against the model's vocabulary here, as they are parsed: an id the model
does not have is the contestant's `conformance` failure at once, rather than a request the
baseline refuses later in teacher forcing, where it would have to be told apart from the
baseline's own failure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from cacheon.protocol import ReasonCode

TOKEN_PREFIX = "token_id:"  # noqa: S105 (a wire prefix, not a password)
DONE = b"[DONE]"
MAX_TOKEN_ID_DIGITS = 12


class ResponseFault(Exception):
    """A response that breaks the contract; the contestant's launch fails with `reason`."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """One server-sent event as received: when its last byte arrived, and its data payload."""

    at_ns: int
    data: bytes


@dataclass(frozen=True)
class TokenEvent:
    """An event that carried tokens: when it arrived and how many tokens it carried."""

    at_ns: int
    tokens: int


@dataclass(frozen=True)
class Response:
    """One parsed response. Times are `perf_counter_ns` values, comparable with `sent_ns`."""

    sent_ns: int
    events: tuple[TokenEvent, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...]
    finish_reason: str
    text: str = ""
    """The `delta.content` of every event, joined: the gate checks it against the token ids."""

    @property
    def token_ns(self) -> tuple[int, ...]:
        """Arrival of each token, relative to the send: tokens of one event share its time."""
        return tuple(
            event.at_ns - self.sent_ns for event in self.events for _ in range(event.tokens)
        )


def read_vocab_size(model_dir: Path) -> int | None:
    """The model's vocabulary size from its `config.json`; None when it declares none."""
    path = model_dir / "config.json"
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("vocab_size")
    return value if isinstance(value, int) and value > 0 else None


def parse(
    sent_ns: int,
    events: Sequence[Event],
    model: str,
    max_tokens: int,
    vocab_size: int | None = None,
) -> Response:
    """The response the events make up; `vocab_size` bounds every token id, reported and
    alternative (None: the ids are not checked against a vocabulary)."""
    token_events: list[TokenEvent] = []
    ids: list[int] = []
    logprobs: list[float] = []
    tops: list[tuple[tuple[int, float], ...]] = []
    finish: str | None = None
    text: list[str] = []
    done = False
    for event in events:
        if event.data == DONE:
            done = True
            break
        if finish is not None:
            continue  # the usage chunk and anything else after the last token
        choice = _choice(_json(event.data), model)
        if choice is None:
            continue
        entries = _entries(choice)
        text.append(_content(choice))
        for entry in entries:
            token, logprob, top = _token(entry, vocab_size)
            ids.append(token)
            logprobs.append(logprob)
            tops.append(top)
        if entries:
            token_events.append(TokenEvent(event.at_ns, len(entries)))
        if len(ids) > max_tokens:
            raise ResponseFault(
                ReasonCode.BAD_RESPONSE, f"more than max_tokens={max_tokens} tokens streamed"
            )
        reason = choice.get("finish_reason")
        if reason is not None:
            if reason not in ("stop", "length"):
                raise ResponseFault(ReasonCode.BAD_RESPONSE, f"finish_reason {reason!r}")
            finish = reason
    if not done:
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "the stream ended without data: [DONE]")
    if finish is None:
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "no event carried a finish_reason")
    if not ids:
        raise ResponseFault(ReasonCode.CONFORMANCE, "the response carried no token ids")
    return Response(
        sent_ns,
        tuple(token_events),
        tuple(ids),
        tuple(logprobs),
        tuple(tops),
        finish,
        "".join(text),
    )


def _json(data: bytes) -> dict[str, object]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ResponseFault(
            ReasonCode.BAD_RESPONSE, f"an event is not JSON: {data[:80]!r}"
        ) from None
    if not isinstance(chunk, dict):
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "an event is not a JSON object")
    return chunk


def _choice(chunk: dict[str, object], model: str) -> dict[str, object] | None:
    if chunk.get("model") != model:
        raise ResponseFault(
            ReasonCode.CONFORMANCE,
            f"served model {chunk.get('model')!r}, the request asked for {model!r}",
        )
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "a choice is not an object")
    return choice


def _content(choice: dict[str, object]) -> str:
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _entries(choice: dict[str, object]) -> list[object]:
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return []
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if content is None:
        return []
    if not isinstance(content, list):
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "logprobs.content is not a list")
    return content


def _token(
    entry: object, vocab_size: int | None
) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    if not isinstance(entry, dict):
        raise ResponseFault(ReasonCode.BAD_RESPONSE, "a logprobs entry is not an object")
    token = _token_id(entry.get("token"), vocab_size)
    logprob = _logprob(entry.get("logprob"))
    top = entry.get("top_logprobs")
    if not isinstance(top, list) or len(top) != 5:
        raise ResponseFault(ReasonCode.CONFORMANCE, "top_logprobs does not hold 5 entries")
    pairs = []
    for item in top:
        if not isinstance(item, dict):
            raise ResponseFault(ReasonCode.BAD_RESPONSE, "a top_logprobs entry is not an object")
        pairs.append((_token_id(item.get("token"), vocab_size), _logprob(item.get("logprob"))))
    return token, logprob, tuple(pairs)


def _token_id(token: object, vocab_size: int | None) -> int:
    if isinstance(token, str) and token.startswith(TOKEN_PREFIX):
        digits = token[len(TOKEN_PREFIX) :]
        # ASCII only and bounded: `int` refuses '²' (which `isdigit` accepts) and over 4300
        # digits with a ValueError that would kill the load worker and void the round
        if digits.isascii() and digits.isdigit() and len(digits) <= MAX_TOKEN_ID_DIGITS:
            value = int(digits)
            if vocab_size is not None and value >= vocab_size:
                raise ResponseFault(
                    ReasonCode.CONFORMANCE,
                    f"token id {value} is outside the model's vocabulary of {vocab_size}",
                )
            return value
    raise ResponseFault(ReasonCode.CONFORMANCE, f"token {str(token)[:40]!r} is not `token_id:<id>`")


def _logprob(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        return float(value)
    raise ResponseFault(ReasonCode.BAD_RESPONSE, f"logprob {str(value)[:40]!r} is not <= 0")
