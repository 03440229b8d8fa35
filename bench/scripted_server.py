"""A scripted-timing SSE server for the load-generator benches.

Each request is answered with `tokens` chat chunks in the contract's shape (top-5 logprobs,
about 600 bytes like vLLM's), one every `interval_s`, pre-encoded so the server costs little.
The token id of every chunk is the server's `perf_counter_ns() // 1000` (microseconds: the agent
accepts ids of at most 12 digits) at the moment of the write: on one host CLOCK_MONOTONIC is
shared, so the client's receive time minus that id is the delay the client added (plus the
loopback hop); the first chunk's first alternative is the request's arrival, in microseconds. The
delta's text carries the same times in nanoseconds for clients that keep only text: the first
chunk's is "<request arrival ns> <write ns>", later ones " <write ns>".
"""

from __future__ import annotations

import asyncio
import os
import time

import orjson
from aiohttp import web

MODEL = "bench"


def _chunk(token: int, finish: str | None, text: str, first_alternative: int = 0) -> bytes:
    top = [{"token": f"token_id:{token}", "logprob": -0.01}] + [
        {"token": f"token_id:{i or first_alternative}", "logprob": -5.0 - i} for i in range(4)
    ]
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"content": text},
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
    arrival = time.perf_counter_ns()
    body = orjson.loads(await request.read())
    interval = float(request.app["interval_s"])
    tokens = int(body.get("max_tokens") or body["max_completion_tokens"])
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    due = time.perf_counter()
    for i in range(tokens):
        due += interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter_ns()
        text = f"{arrival} {now}" if i == 0 else f" {now}"
        finish = "length" if i == tokens - 1 else None
        await response.write(_chunk(now // 1000, finish, text, arrival // 1000 if i == 0 else 0))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
        await response.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
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
