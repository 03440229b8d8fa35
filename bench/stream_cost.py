"""What a response's stream costs the agent's client: an honest stream, the costliest stream the
contract's stream limits allow, and (with --vllm) what vLLM actually streams.

Issue 17. The stream limits (`cacheon/agent/framing.py`, stated in the miner contract) must
leave honest servers wide room and still keep the costliest stream within them far inside what
one load worker can take, or a contestant could saturate the client on purpose (and have a
block re-measured, or dropped for everyone). So this bench runs one real load worker
(`LoadGenerator`, one process) against toy servers on loopback:

- honest: the toy server's ordinary stream, one event of about 600 bytes per token;
- at the limits: each token followed by three comment events that bring it to 8 KiB, every
  event written on its own and spaced so it arrives in a read of its own (4 events, 3 non-data
  lines, 4 reads and 8 KiB a token: every limit reached at once);
- comment padding: 5,000 empty comments before every token (the attack), cut off by the caps.

For each: per response, the tokens, events, reads and bytes the framer counted, the worker's
CPU time while the block streamed (the hot path: aiohttp reads, framing, and the loop's own
wake-ups, which grow with wall time) and parsing after it, per response and per token, and the
worker's CPU share over the block, which the agent calls saturated above 0.85. At 32 streams
(`STREAMS_PER_WORKER`, the most one worker takes) of 100 tokens a second, one worker takes
3,200 tokens a second, more than a 72B server streams to it. With --vllm it also streams a block from the CPU vLLM
(`.venv-vllm`, the tiny Qwen2) and prints the same counts, the evidence for the limits' headroom.

    python bench/stream_cost.py [--prompts 64] [--concurrency 1,8,32] [--reps 3] [--vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cacheon.agent.loadgen import CLIENT_CPU_LIMIT, BlockResult, LoadGenerator, Target
from cacheon.agent.workload import PromptSource, Purpose
from cacheon.protocol import Workload
from cacheon.testing import toy_server
from cacheon.testing.toy_server import Fault, Knobs, Speed

MAX_TOKENS = 256
SEED = "5c" * 32
PACE = Speed(ttft_s=0.01, token_s=0.01)
"""100 tokens a second a stream, as fast as a 72B server decodes one stream, slow enough that
every write (the pads are 2.5 ms apart) arrives in a read of its own even on a busy host: the
costliest way to receive a stream."""
STREAMS = {
    "honest": Knobs(speed=PACE),
    "at the limits": Knobs(speed=PACE, fault=Fault.PADDING_WITHIN_LIMITS),
    "5,000 comments a token": Knobs(speed=PACE, fault=Fault.COMMENT_PADDING),
}


@dataclass(frozen=True)
class Row:
    stream: str
    concurrency: int
    responses: int
    tokens: float
    events: float
    reads: float
    kbytes: float
    hot_us: float
    parse_us: float
    faults: int
    cpu_share: float
    """The worker's CPU time over the block's wall time: saturated above CLIENT_CPU_LIMIT."""

    @property
    def per_token_us(self) -> float:
        return (self.hot_us + self.parse_us) / self.tokens if self.tokens else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def toy(knobs: Knobs) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, toy_server.__file__, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--knobs", knobs.to_json()], env={**os.environ, "SERVED_MODEL_NAME": "toy"}
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def _measure(url: str, model: str, prompts: int, concurrency: int) -> BlockResult:
    source = PromptSource(Workload(max_tokens=MAX_TOKENS), SEED, 1024)
    async with LoadGenerator(Target(url), model, 1, 60) as load:
        deadline = time.monotonic() + 60
        while await load.health() != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never became healthy")
            await asyncio.sleep(0.2)
        warm = source.block(Purpose.WARMUP, concurrency, 0, concurrency)
        await load.run_block(warm, concurrency)
        return await load.run_block(source.block(Purpose.MEASURE, 0, 0, prompts), concurrency)


def row(name: str, concurrency: int, result: BlockResult) -> Row:
    counted = [m for m in result.measured if m.stream is not None]
    done = [m for m in counted if m.response is not None]
    n = len(counted) or 1
    client = result.clients[0]
    return Row(
        name,
        concurrency,
        len(done),
        statistics.fmean(len(m.response.token_ids) for m in done if m.response) if done else 0.0,
        sum(m.stream.events for m in counted if m.stream) / n,
        sum(m.stream.reads for m in counted if m.stream) / n,
        sum(m.stream.bytes for m in counted if m.stream) / n / 1000,
        client.cpu_ns / n / 1000,
        client.parse_ns / n / 1000,
        len(counted) - len(done),
        client.cpu_share,
    )


def render(rows: list[Row]) -> str:
    lines = [
        "| stream | concurrency | responses ok | tokens | events | reads | kB | hot path us"
        f" | parse us | us a token | worker CPU share (saturated > {CLIENT_CPU_LIMIT}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.stream} | {r.concurrency} | {r.responses}"
            f"{f' ({r.faults} cut off)' if r.faults else ''} | {r.tokens:.1f} | {r.events:.1f}"
            f" | {r.reads:.1f} | {r.kbytes:.1f} | {r.hot_us:.0f} | {r.parse_us:.0f}"
            f" | {r.per_token_us:.1f} | {r.cpu_share:.3f} |"
        )
    return "\n".join(lines)


def _best(rows: list[Row]) -> Row:
    """The repetition with the least CPU: others' load on a shared host only adds to it."""
    return min(rows, key=lambda r: r.hot_us + r.parse_us)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--vllm", action="store_true", help="also stream from the CPU vLLM")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for name, knobs in STREAMS.items():
        with toy(knobs) as url:
            for concurrency in levels:
                reps = [
                    row(
                        name,
                        concurrency,
                        asyncio.run(_measure(url, "toy", args.prompts, concurrency)),
                    )
                    for _ in range(args.reps)
                ]
                rows.append(_best(reps))
                print(render([rows[-1]]).splitlines()[-1], flush=True)
    if args.vllm:
        from cacheon.testing.vllm_server import VllmServer  # only with --vllm: it needs .venv-vllm

        with tempfile.TemporaryDirectory() as tmp:
            server = VllmServer.start(Path(tmp))
            try:
                for concurrency in levels:
                    result = asyncio.run(
                        _measure(server.base_url, server.model, args.prompts, concurrency)
                    )
                    rows.append(row("vLLM (CPU, tiny Qwen2)", concurrency, result))
                    print(render([rows[-1]]).splitlines()[-1], flush=True)
            finally:
                server.stop()
    print()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
