"""The HTTP side: `/health` and streaming `/v1/chat/completions`, and the timestamp records.

Each token is streamed as its own server-sent event in the exact shape of the miner contract
(DESIGN.md §4.2); `/health` is 200 only once warmed up. For every streamed token the server
records `time.perf_counter_ns()` (CLOCK_MONOTONIC, the clock the agent's client uses on the same
machine) just before the write, beside the time the engine produced it; the records go to a
JSON-lines file at exit, one line per request, keyed by the `x-request-id` header or else the
sha256 of the request body.

With a known slowdown (the engine's `slowdown`) each record also keeps the request's arrival
and its tokens on the engine's natural clock (every wait the slowdown added taken out), so the
slowdown actually applied to each request is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .engine import Engine, Sequence, warm_up
from .tokens import chat_tokens, token_text

try:
    import orjson

    def _dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # the server needs only torch, transformers and aiohttp

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


class Server:
    """The aiohttp application: health, chat completions, and the timestamp records."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        timestamps: Path,
        header: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.timestamps = timestamps
        self.records: list[bytes] = [_dumps({"kind": "server", **header})]
        self.ready = False
        self.counter = 0
        self._flushed = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._cleanup)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": self.ready}, status=200 if self.ready else 503)

    async def _start(self, _app: web.Application) -> None:
        self._warmup_task = asyncio.create_task(self._warmup())

    async def _warmup(self) -> None:
        started = time.perf_counter()
        await warm_up(self.engine)
        self.ready = True
        print(f"warm-up done in {time.perf_counter() - started:.1f}s; healthy", flush=True)

    async def _cleanup(self, _app: web.Application) -> None:
        self.engine.stopping.set()
        self.flush()

    def flush(self) -> None:
        if self._flushed:
            return
        self._flushed = True
        self.timestamps.parent.mkdir(parents=True, exist_ok=True)
        with self.timestamps.open("wb") as out:
            out.writelines(record + b"\n" for record in self.records)
        print(f"wrote {len(self.records) - 1} request records to {self.timestamps}", flush=True)

    def _chunk(self, ident: str, created: int, choices: list[Any], **extra: Any) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_name,
            "choices": choices,
            **extra,
        }
        return b"data: " + _dumps(body) + b"\n\n"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        recv_ns = time.perf_counter_ns()
        natural_recv_ns = recv_ns - self.engine.added_ns
        raw = await request.read()
        try:
            body = json.loads(raw)
            if body.get("model") != self.model_name:
                raise ValueError(f"the model `{body.get('model')}` does not exist")
            if not body.get("stream"):
                raise ValueError("only stream=true is served")
            prompt = chat_tokens(body["messages"])
            max_tokens = int(body.get("max_tokens") or 16)
            if not 1 <= max_tokens < self.engine.runner.context:
                raise ValueError(f"max_tokens {max_tokens} is out of range")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        rid = request.headers.get("x-request-id") or hashlib.sha256(raw).hexdigest()
        self.counter += 1
        ident, created = f"chatcmpl-{self.counter}", int(time.time())
        seq = Sequence(prompt, max_tokens, asyncio.Queue())
        self.engine.submit(seq)
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        await response.write(self._chunk(ident, created, [{**role, "finish_reason": None}]))
        write_ns: list[int] = []
        gen_ns: list[int] = []
        natural_ns: list[int] = []
        finish = None
        try:
            while finish is None:
                out = await seq.queue.get()
                finish = out.finish
                ids, lps = out.top
                name = f"token_id:{out.token}"
                entry = {
                    "token": name,
                    "logprob": lps[0],
                    "top_logprobs": [
                        {"token": f"token_id:{i}", "logprob": lp}
                        for i, lp in zip(ids, lps, strict=True)
                    ],
                }
                choice = {
                    "index": 0,
                    "delta": {
                        "content": "" if out.token == self.engine.eos else token_text(out.token)
                    },
                    "logprobs": {"content": [entry]},
                    "finish_reason": finish,
                }
                data = self._chunk(ident, created, [choice])
                now = time.perf_counter_ns()
                await response.write(data)
                write_ns.append(now)
                gen_ns.append(out.gen_ns)
                natural_ns.append(out.natural_ns)
            usage = {
                "prompt_tokens": len(seq.prompt),
                "completion_tokens": len(write_ns),
                "total_tokens": len(seq.prompt) + len(write_ns),
            }
            await response.write(self._chunk(ident, created, [], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            seq.cancelled = finish is None
            self.records.append(
                _dumps(
                    {
                        "kind": "request",
                        "id": rid,
                        "recv_ns": recv_ns,
                        "prompt_tokens": len(seq.prompt),
                        "max_tokens": max_tokens,
                        "finish": finish,
                        "gen_ns": gen_ns,
                        "natural_recv_ns": natural_recv_ns,
                        "natural_ns": natural_ns,
                        "write_ns": write_ns,
                    }
                )
            )
        return response
