"""A scripted-timing SSE server for the load-generator benches.

Each request is answered with `tokens` chat chunks in the contract's shape (top-5 logprobs,
about 600 bytes like vLLM's), one every `interval_s`, pre-encoded so the server costs little.
The token id of every chunk is the server's `perf_counter_ns()` at the moment of the write: on
one host CLOCK_MONOTONIC is shared, so the client's receive time minus that id is the delay the
client added (plus the loopback hop).
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson
from aiohttp import web

MODEL = "bench"


def _chunk(token: int, finish: str | None) -> bytes:
    top = [{"token": f"token_id:{token}", "logprob": -0.01}] + [
        {"token": f"token_id:{i}", "logprob": -5.0 - i} for i in range(4)
    ]
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"content": " word"},
                "logprobs": {
                    "content": [
                        {"token": f"token_id:{token}", "logprob": -0.01, "top_logprobs": top}
                    ]
                },
                "finish_reason": finish,
            }
        ],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    interval = float(request.app["interval_s"])
    tokens = int(body["max_tokens"])
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    due = time.perf_counter()
    for i in range(tokens):
        due += interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await response.write(_chunk(time.perf_counter_ns(), "length" if i == tokens - 1 else None))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve(port: int, interval_s: float, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    app = web.Application()
    app["interval_s"] = interval_s
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
