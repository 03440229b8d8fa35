"""A toy OpenAI-compatible chat server that keeps the miner contract (DESIGN.md §4.2).

It stands in for a contestant image in tests and the demo: a small deterministic language model
with real log-softmax probabilities (peaked, not uniform), streamed exactly as the contract asks,
with knobs for speed (time to first token, time per token, tokens per event, batch size) and for
misbehaviour (a `Fault`), so the agent can be tested against honest, fast, slow and hostile
servers alike. The model and the cheats live in `toy_lm`.

Only the standard library is used, so the image needs a Python interpreter and these two modules
(`toy_image` lays them out as a package beside the script):
`python3 toy_server.py --knobs '{"speed": {"token_s": 0.01}}'`. It reads `PORT` and
`SERVED_MODEL_NAME` like any contestant and stops at once on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from cacheon.testing.toy_lm import EOS, Cheat, Decoder, Distribution, ToyLM, baseline_answer

LATER_CRASH_AT = 100
"""The chat request on which a CRASH_LATER server exits."""
LATER_ERRORS_FROM = 50
"""The first chat request an HTTP_500_LATER server answers with 500."""
_SSE = "text/event-stream"


@dataclass(frozen=True)
class Speed:
    """How fast the server is. Times are in seconds, on the server's own clock."""

    ttft_s: float = 0.05
    """From the request's arrival to its first token event (prefill)."""
    token_s: float = 0.02
    """Decode time per token; an event of n tokens follows the previous one after n * token_s."""
    tokens_per_event: int = 1
    """Tokens carried by one streamed event (speculative decoding sends several)."""
    max_batch: int = 256
    """Sequences decoded at once; later requests wait for a slot, as on a real engine."""
    startup_s: float = 0.0
    """Time after start before /health answers 200."""


class Fault(StrEnum):
    """A way to break the contract; NONE serves honestly."""

    NONE = "none"
    HANG = "hang"  # never answers a chat request
    SLOW_DRIP = "slow_drip"  # answers headers, then a comment line every 0.2 s forever
    MALFORMED_SSE = "malformed_sse"  # a few tokens, then an event that is not JSON
    INFINITE_STREAM = "infinite_stream"  # ignores max_tokens and never finishes
    WRONG_MODEL = "wrong_model"  # streams under another model name
    MISSING_TOKEN_IDS = "missing_token_ids"  # noqa: S105 tokens as text, not `token_id:<id>`
    HUGE_CHUNK = "huge_chunk"  # one 32 MiB event
    CONNECTION_RESET = "connection_reset"  # resets the connection mid-stream
    FAKE_TTFT = "fake_ttft"  # empty role/content events at once, tokens at the real pace
    CRASH = "crash"  # exits on the first chat request
    NEVER_HEALTHY = "never_healthy"  # /health answers 503 forever
    OOM = "oom"  # allocates memory without bound on the first chat request
    HANG_MID_STREAM = "hang_mid_stream"  # a few tokens, then silence on an open connection
    INVALID_UTF8 = "invalid_utf8"  # a few tokens, then an event whose bytes are not UTF-8
    WRONG_CONTENT_TYPE = "wrong_content_type"  # the stream labelled application/json
    HTTP_500_LATER = "http_500_later"  # the 50th chat request and every later one answer 500
    CRASH_LATER = "crash_later"  # exits on the 100th chat request
    # attacks on the round itself (issue 17), tuned by `Attack`
    COMMENT_PADDING = "comment_padding"  # `padding` comment events before every token chunk
    PADDING_AT_TOP = "padding_at_top"  # the same, only while `pad_in_flight` requests are in flight
    PADDING_WITHIN_LIMITS = "padding_within_limits"  # pads each token to the contract's limits
    OUT_OF_VOCAB = "out_of_vocab"  # one token id `bad_token_id` in the `bad_token_at`-th response
    SLOW_AFTER = "slow_after"  # `slow_factor` times slower once the clock passes a moment


@dataclass(frozen=True)
class Attack:
    """The parameters of the attacks on a round's integrity (the last `Fault` values).

    A server cannot remember across containers, so a leader that wants its second launch to
    differ from its first uses what it can see, the clock: `slow_after_epoch_s` is that moment,
    which a test sets between the leader's two launches.
    """

    padding: int = 5000
    """Empty comment events (`:` and a blank line, 3 bytes each) written before every token
    chunk, in one write, as a strategic miner tried it against the client."""
    pad_in_flight: int = 4
    """PADDING_AT_TOP pads only while at least this many chat requests are in flight: the top
    concurrency level, so the client saturates on one level's blocks only."""
    bad_token_at: int = 3
    """OUT_OF_VOCAB: which chat response (1-based, warm-ups included) carries the bad id."""
    bad_token_id: int = 2_000_000_000
    slow_after_epoch_s: float = 0.0
    """SLOW_AFTER: requests arriving after this unix time are decoded `slow_factor` times slower
    (0: from the start)."""
    slow_factor: float = 3.0


PAD_LIMIT_EVENTS = 3
"""PADDING_WITHIN_LIMITS: comment events after every token chunk (the contract allows 4 events
a token, the token's own included)..."""
PAD_LIMIT_BYTES = 8 << 10
"""...that bring each token's bytes up to this (the contract's bytes a token), each event written
on its own, spaced across the token's interval so that it arrives in a read of its own: the
costliest stream the limits allow."""


@dataclass(frozen=True)
class Knobs:
    speed: Speed = field(default_factory=Speed)
    fault: Fault = Fault.NONE
    model_seed: int = 0
    vocab_size: int = 512
    cheat: Cheat = Cheat.NONE
    cheat_scale: float = 0.0
    attack: Attack = field(default_factory=Attack)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Knobs:
        raw = json.loads(text) if text else {}
        return cls(
            speed=Speed(**raw.get("speed", {})),
            fault=Fault(raw.get("fault", Fault.NONE)),
            model_seed=int(raw.get("model_seed", 0)),
            vocab_size=int(raw.get("vocab_size", 512)),
            cheat=Cheat(raw.get("cheat", Cheat.NONE)),
            cheat_scale=float(raw.get("cheat_scale", 0.0)),
            attack=Attack(**raw.get("attack", {})),
        )


# --- the language model --------------------------------------------------------------------------

# --- the HTTP server -----------------------------------------------------------------------------


_BASELINE_PATHS = frozenset({"/tokenize", "/detokenize", "/v1/completions"})


class _BadRequest(Exception):
    pass


@dataclass
class _Request:
    method: str
    path: str
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, version = lines[0].split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    return _Request(method, path, body, keep_alive)


class ToyServer:
    def __init__(self, knobs: Knobs, served_model_name: str) -> None:
        self.knobs = knobs
        self.model_name = served_model_name
        self.lm = ToyLM(knobs.model_seed, knobs.vocab_size)
        self.decoder = Decoder(self.lm, knobs.cheat, knobs.cheat_scale, knobs.model_seed)
        self.started = time.monotonic()
        self.slots = asyncio.Semaphore(knobs.speed.max_batch)
        self.counter = 0
        self.in_flight = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while (request := await _read_request(reader)) is not None:
                await self._route(request, writer)
                if not request.keep_alive:
                    break
        with contextlib.suppress(ConnectionError):
            writer.close()

    async def _route(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        if request.method == "GET" and request.path == "/health":
            ready = time.monotonic() - self.started >= self.knobs.speed.startup_s
            healthy = ready and self.knobs.fault is not Fault.NEVER_HEALTHY
            await _send_json(writer, 200 if healthy else 503, {"ok": healthy})
        elif request.method == "POST" and request.path in _BASELINE_PATHS:
            try:
                answer = baseline_answer(
                    self.lm, request.path, json.loads(request.body), self.model_name
                )
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                answer = {"error": {"message": repr(exc)}}
            await _send_json(writer, 400 if "error" in answer else 200, answer)
        elif request.method == "POST" and request.path == "/v1/chat/completions":
            try:
                await self._chat(json.loads(request.body), writer)
            except (_BadRequest, ValueError, KeyError, TypeError) as exc:
                await _send_json(writer, 400, {"error": {"message": str(exc)}})
        else:
            await _send_json(writer, 404, {"error": {"message": "not found"}})

    async def _chat(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        arrived = time.monotonic()
        if body.get("model") != self.model_name:
            raise _BadRequest(f"the model `{body.get('model')}` does not exist")
        if not body.get("stream"):
            raise _BadRequest("only stream=true is served")
        fault = self.knobs.fault
        if fault is Fault.CRASH:
            os._exit(3)
        if fault is Fault.OOM:
            hog = [bytearray(64 << 20) for _ in range(1 << 20)]
            raise _BadRequest(str(len(hog)))
        if fault is Fault.HANG:
            await asyncio.Event().wait()
        max_tokens = int(body.get("max_tokens") or 16)
        prompt = self.lm.chat_prompt(body["messages"])
        self.counter += 1
        if fault is Fault.CRASH_LATER and self.counter >= LATER_CRASH_AT:
            os._exit(3)
        if fault is Fault.HTTP_500_LATER and self.counter >= LATER_ERRORS_FROM:
            await _send_json(writer, 500, {"error": {"message": "internal server error"}})
            return
        content_type = "application/json" if fault is Fault.WRONG_CONTENT_TYPE else _SSE
        stream = _Stream(writer, f"chatcmpl-{self.counter}", self._model_in_reply(), content_type)
        await stream.start()
        if fault is Fault.SLOW_DRIP:
            while True:
                await stream.raw(b": still thinking\n\n")
                await asyncio.sleep(0.2)
        if fault is Fault.FAKE_TTFT:
            await stream.event({"role": "assistant", "content": ""})
            for _ in range(3):
                await stream.event({"content": ""})
        self.in_flight += 1
        try:
            async with self.slots:
                await self._decode(stream, prompt, max_tokens, arrived, self.counter)
            await stream.finish()
        finally:
            self.in_flight -= 1

    def _model_in_reply(self) -> str:
        return (
            f"not-{self.model_name}" if self.knobs.fault is Fault.WRONG_MODEL else self.model_name
        )

    async def _decode(
        self, stream: _Stream, prompt: list[int], max_tokens: int, arrived: float, number: int
    ) -> None:
        speed, fault, attack = self.knobs.speed, self.knobs.fault, self.knobs.attack
        limit = 1 << 30 if fault is Fault.INFINITE_STREAM else max_tokens
        dists = _grouped(self.decoder.continuation(prompt, limit), speed.tokens_per_event)
        slow = attack.slow_factor if fault is Fault.SLOW_AFTER and self._late() else 1.0
        bad = (
            attack.bad_token_id
            if fault is Fault.OUT_OF_VOCAB and number == attack.bad_token_at
            else None
        )
        due = arrived + speed.ttft_s * slow
        if fault is not Fault.FAKE_TTFT:
            await _sleep_until(due)
            await stream.event({"role": "assistant", "content": ""})
        start = 0
        for group, last in dists:
            await _sleep_until(due)
            due += speed.token_s * len(group) * slow
            if fault is Fault.COMMENT_PADDING or (
                fault is Fault.PADDING_AT_TOP and self.in_flight >= attack.pad_in_flight
            ):
                await stream.raw(b":\n\n" * attack.padding)
            if fault is Fault.MALFORMED_SSE and start >= 3:
                await stream.raw(b'data: {"choices": [{"delta": \n\n')
                return
            if fault is Fault.HANG_MID_STREAM and start >= 3:
                await asyncio.Event().wait()
            if fault is Fault.INVALID_UTF8 and start >= 3:
                await stream.raw(b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n')
            if fault is Fault.CONNECTION_RESET and start >= 3:
                stream.reset()
                return
            if fault is Fault.HUGE_CHUNK and start >= 2:
                await stream.event({"content": "x" * (32 << 20)})
            finish = ("stop" if group[-1].top[0][0] == EOS else "length") if last else None
            written = await stream.tokens(
                self.lm, group, finish, with_ids=fault is not Fault.MISSING_TOKEN_IDS, bad=bad
            )
            bad = None
            if fault is Fault.PADDING_WITHIN_LIMITS:
                gap = speed.token_s * len(group) * slow / (PAD_LIMIT_EVENTS + 1)
                await stream.pad(PAD_LIMIT_BYTES * len(group) - written, PAD_LIMIT_EVENTS, gap)
            start += len(group)

    def _late(self) -> bool:
        return time.time() >= self.knobs.attack.slow_after_epoch_s


def _grouped(dists: Iterator[Distribution], size: int) -> Iterator[tuple[list[Distribution], bool]]:
    """Groups of `size` distributions, each with whether it is the last group."""
    group: list[Distribution] = []
    for dist in dists:
        if len(group) == size:
            yield group, False
            group = []
        group.append(dist)
    if group:
        yield group, True


async def _sleep_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _Stream:
    """One chunked `text/event-stream` response in the shape vLLM streams chat chunks."""

    def __init__(
        self, writer: asyncio.StreamWriter, ident: str, model: str, content_type: str = ""
    ) -> None:
        self.content_type = content_type or _SSE
        self.writer = writer
        self.ident = ident
        self.model = model
        self.created = int(time.time())
        self.completion_tokens = 0

    async def start(self) -> None:
        self.writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            % self.content_type.encode()
        )
        await self.writer.drain()

    async def raw(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.ident,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    async def event(self, delta: dict[str, Any]) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await self.raw(self._chunk([choice]))

    async def tokens(
        self,
        lm: ToyLM,
        group: list[Distribution],
        finish: str | None,
        *,
        with_ids: bool,
        bad: int | None = None,
    ) -> int:
        """Stream one token event; returns its size. `bad` replaces the first token's id."""

        def name(token: int) -> str:
            return f"token_id:{token}" if with_ids else lm.words[token]

        content = []
        for position, dist in enumerate(group):
            token, logprob = dist.top[0]
            token = bad if bad is not None and position == 0 else token
            top = [{"token": name(t), "logprob": lp} for t, lp in dist.top]
            content.append({"token": name(token), "logprob": logprob, "top_logprobs": top})
        text = lm.detokenize([d.top[0][0] for d in group if d.top[0][0] != EOS])
        choice = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": {"content": content},
            "finish_reason": finish,
        }
        self.completion_tokens += len(group)
        chunk = self._chunk([choice])
        await self.raw(chunk)
        return len(chunk)

    async def pad(self, size: int, events: int, gap_s: float) -> None:
        """`events` comment events of about `size` bytes in all, each in its own write `gap_s`
        after the last, so that each arrives in a read of its own."""
        for _ in range(events):
            await asyncio.sleep(gap_s)
            await self.raw(b":" + b"p" * max(0, size // events - 3) + b"\n\n")

    async def finish(self) -> None:
        usage = {"prompt_tokens": 0, "completion_tokens": self.completion_tokens}
        await self.raw(self._chunk([], usage=usage))
        await self.raw(b"data: [DONE]\n\n")
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    def reset(self) -> None:
        """Close with RST instead of FIN, as a crashed peer or a middlebox does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def _send_json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()


async def serve(knobs: Knobs, host: str, port: int, served_model_name: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server_state = ToyServer(knobs, served_model_name)
    server = await asyncio.start_server(server_state.handle, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knobs", default=os.environ.get("TOY_KNOBS", ""), help="Knobs as JSON")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    model = os.environ.get("SERVED_MODEL_NAME", "toy")
    asyncio.run(serve(Knobs.from_json(args.knobs), args.host, args.port, model))


if __name__ == "__main__":
    main()
