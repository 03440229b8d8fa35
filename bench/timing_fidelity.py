"""Timing fidelity and client capacity of the agent's load generator against a scripted server.

For each (concurrency, event rate) the scripted server (its own process, pinned to core 0)
streams chunks at a fixed interval; the load generator (one worker, pinned to core 1) times them.
Reported per point: events per second, the worker's CPU share, events per client CPU-second,
the p50/p99/max of receive time minus server write time, and whether the block was flagged
saturated. Usage: `python bench/timing_fidelity.py [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripted_server import MODEL, serve

from cacheon.agent.loadgen import LoadGenerator, Target
from cacheon.agent.workload import Prompt

TOKENS = 200


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _point(port: int, concurrency: int, requests: int) -> dict[str, float]:
    prompts = [Prompt((("user", f"bench {i}"),), TOKENS, i) for i in range(requests)]
    async with LoadGenerator(Target(f"http://127.0.0.1:{port}"), MODEL, 1, 120) as load:
        while await load.health() != 200:  # noqa: ASYNC110 (polling a server, not an event)
            await asyncio.sleep(0.05)
        await load.run_block(prompts[:concurrency], concurrency)  # warm-up: open the connections
        result = await load.run_block(prompts, concurrency)
    assert result.fault is None, result.fault
    delays = sorted(  # the scripted server's token ids are its write times in microseconds
        event.at_ns - token * 1000
        for m in result.measured
        if m.response
        for event, token in zip(m.response.events, m.response.token_ids, strict=True)
    )
    first = min(m.sent_ns for m in result.measured)
    last = max(m.response.events[-1].at_ns for m in result.measured if m.response)
    rate = len(delays) / ((last - first) / 1e9)
    client = result.clients[0]
    return {
        "events_per_s": rate,
        "cpu_share": client.cpu_share,
        "events_per_cpu_s": rate / max(client.cpu_share, 1e-9),
        "p50_ms": delays[len(delays) // 2] / 1e6,
        "p99_ms": delays[int(len(delays) * 0.99)] / 1e6,
        "max_ms": delays[-1] / 1e6,
        "lag_p99_ms": client.lag_p99_ns / 1e6,
        "saturated": float(result.saturated),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    points = [(64, 0.04), (64, 0.0128), (64, 0.004), (128, 0.002), (256, 0.001)]
    if args.quick:
        points = points[:2]
    print(
        "conc interval_ms  events/s  cpu  events/cpu-s  p50_ms  p99_ms  max_ms  lag_p99  saturated"
    )
    for concurrency, interval in points:
        port = _port()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(port, interval, 0), daemon=True
        )
        server.start()
        try:
            time.sleep(1.0)
            row = asyncio.run(_point(port, concurrency, concurrency * 2))
        finally:
            server.terminate()
            server.join(5)
        print(
            f"{concurrency:4d} {interval * 1e3:11.1f} {row['events_per_s']:9.0f} {row['cpu_share']:4.2f}"
            f" {row['events_per_cpu_s']:13.0f} {row['p50_ms']:7.3f} {row['p99_ms']:7.3f}"
            f" {row['max_ms']:7.2f} {row['lag_p99_ms']:8.2f} {bool(row['saturated'])!s:>10}"
        )


if __name__ == "__main__":
    main()
