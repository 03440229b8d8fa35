"""GPU check of the timing pass (issue 7): the agent's client times beside the server's own.

Why: the agent's numbers are only worth anything if they are the server's speed and not the
client's. This runs the agent's timing pass (the round runner, the process runtime, B then B',
as `timing_pass.py` does) around `bench/gpu_server.py`, a real model on the GPU that stamps every
token with `perf_counter_ns` just before it writes it, then joins each measured request of the
client trace (`sent_ns + token_ns`) with the server's record of the same request (found by the
sha256 of its request body, which the workload makes unique) and prints, per launch and
concurrency level:

- client vs server TTFT, ITL and E2E (p50/p99); the server's TTFT and E2E run from the request's
  arrival at its handler, the client's from the moment its bytes were sent;
- the delay of every token: client receive time minus server write time (p50/p99/max, and the
  minimum, which must be positive on one clock), the request's transit (handler entry minus
  client send) and the server's own hand-off (write minus the engine's step end);
- the client's CPU share, event-loop lag p99 and saturation flag, from the round report.

Both processes read CLOCK_MONOTONIC on one machine, so the differences need no clock sync.

    python bench/gpu_timing_check.py --out /tmp/check [-- --preset tiny]   # after `--`: server args

Writes report.json, the client traces, the server's timestamp files, logs/, table.txt and
check.json under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from timing_pass import PrintingContext

from cacheon.agent.round import Context, RoundRunner
from cacheon.agent.runtime import ProcessRuntime, Runtime, ServerSpec
from cacheon.agent.workload import request_body
from cacheon.protocol import (
    Contestant,
    JobSpec,
    LevelMeasurement,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
    Workload,
)

SERVER = Path(__file__).with_name("gpu_server.py")
MS = 1e6
US = 1e3


class KeepingContext(PrintingContext):
    """Prints progress and writes traces as `timing_pass` does, and keeps them for the join."""

    def __init__(self, job_dir: Path) -> None:
        super().__init__(job_dir)
        self.traces: list[list[TraceRecord]] = []

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        self.traces.append(list(records))
        return await super().upload_trace(records)


class TimingOnlyRunner(RoundRunner):
    """The round runner without the correctness pass in B': that needs a teacher-forcing
    baseline (prompt logprobs, a chat template on disk), which the GPU server does not offer
    and which is not what this check measures."""

    def __init__(self, spec: JobSpec, runtime: Runtime, ctx: Context) -> None:
        super().__init__(spec, runtime, ctx)
        self.scoring_index = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Level:
    """What one launch measured at one concurrency level, client and server side by side."""

    launch: int
    concurrency: int
    requests: int = 0
    joined: int = 0
    mismatched: int = 0
    tokens: int = 0
    client_ttft: list[float] = field(default_factory=list)
    server_ttft: list[float] = field(default_factory=list)
    client_itl: list[float] = field(default_factory=list)
    server_itl: list[float] = field(default_factory=list)
    client_e2e: list[float] = field(default_factory=list)
    server_e2e: list[float] = field(default_factory=list)
    delay: list[float] = field(default_factory=list)
    transit: list[float] = field(default_factory=list)
    handoff: list[float] = field(default_factory=list)
    blocks: list[LevelMeasurement] = field(default_factory=list)

    def add(self, record: TraceRecord, server: dict[str, Any] | None) -> None:
        self.requests += 1
        if record.error is not None or server is None:
            return
        writes, gens = server["write_ns"], server["gen_ns"]
        received = [record.sent_ns + t for t in record.token_ns]
        if len(writes) != len(received):
            self.mismatched += 1
            return
        self.joined += 1
        self.tokens += len(received)
        recv = server["recv_ns"]
        self.client_ttft.append(record.token_ns[0])
        self.server_ttft.append(writes[0] - recv)
        self.client_e2e.append(record.token_ns[-1])
        self.server_e2e.append(writes[-1] - recv)
        self.client_itl.extend(b - a for a, b in itertools.pairwise(received))
        self.server_itl.extend(b - a for a, b in itertools.pairwise(writes))
        self.delay.extend(c - w for c, w in zip(received, writes, strict=True))
        self.handoff.extend(w - g for w, g in zip(writes, gens, strict=True))
        self.transit.append(recv - record.sent_ns)

    def summary(self) -> dict[str, Any]:
        def pair(client: list[float], server: list[float]) -> dict[str, float]:
            return {
                "client_p50_ms": percentile(client, 0.5) / MS,
                "server_p50_ms": percentile(server, 0.5) / MS,
                "client_p99_ms": percentile(client, 0.99) / MS,
                "server_p99_ms": percentile(server, 0.99) / MS,
            }

        def spread(values: list[float]) -> dict[str, float]:
            return {
                "min_us": min(values, default=math.nan) / US,
                "p50_us": percentile(values, 0.5) / US,
                "p99_us": percentile(values, 0.99) / US,
                "max_us": max(values, default=math.nan) / US,
            }

        return {
            "launch": self.launch,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "joined": self.joined,
            "mismatched": self.mismatched,
            "tokens": self.tokens,
            "ttft": pair(self.client_ttft, self.server_ttft),
            "itl": pair(self.client_itl, self.server_itl),
            "e2e": pair(self.client_e2e, self.server_e2e),
            "delay": spread(self.delay),
            "transit": spread(self.transit),
            "handoff": spread(self.handoff),
            "speed": [b.speed for b in self.blocks],
            "throughput_tok_s": [b.throughput_tok_s for b in self.blocks],
            "client_cpu_share": max((b.client_cpu_share or 0.0 for b in self.blocks), default=0),
            "client_lag_p99_ms": max((b.client_lag_p99_s or 0.0 for b in self.blocks), default=0)
            * 1e3,
            "saturated": any(b.client_saturated for b in self.blocks),
        }


def read_server(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The server's header line and its request records by id."""
    header: dict[str, Any] = {}
    requests: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return header, requests
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if item["kind"] == "server":
            header = item
        else:
            requests[item["id"]] = item
    return header, requests


def join(
    runner: RoundRunner,
    report: RoundReport,
    traces: list[list[TraceRecord]],
    server_files: list[Path],
) -> tuple[list[Level], list[dict[str, Any]]]:
    model = runner.spec.served_model_name
    levels: dict[tuple[int, int], Level] = {}
    headers = []
    for launch, records in enumerate(traces):
        header, server = read_server(server_files[launch])
        headers.append(header)
        for record in records:
            level = levels.setdefault(
                (launch, record.concurrency), Level(launch, record.concurrency)
            )
            prompt = runner._block(record.concurrency, record.block)[record.prompt]
            rid = hashlib.sha256(request_body(prompt, model)).hexdigest()
            level.add(record, server.get(rid))
    for measured in report.launches:
        for block in measured.levels:
            if (key := (measured.index, block.concurrency)) in levels:
                levels[key].blocks.append(block)
    return [levels[key] for key in sorted(levels)], headers


def table(summaries: list[dict[str, Any]]) -> str:
    """Two tables: latencies client | server, then delays and client load."""
    names = {0: "B", 1: "B'"}
    lines = [
        "latency, ms: client | server (server TTFT/E2E from handler entry)",
        f"{'conc':>4} {'run':>3} {'reqs':>7} {'tokens':>7} "
        f"{'TTFT p50':>15} {'TTFT p99':>15} {'ITL p50':>13} {'ITL p99':>13} "
        f"{'E2E p50':>15} {'E2E p99':>15} {'tok/s':>7}",
    ]
    for s in summaries:
        t, i, e = s["ttft"], s["itl"], s["e2e"]
        tput = sum(x or 0 for x in s["throughput_tok_s"]) / max(1, len(s["throughput_tok_s"]))
        lines.append(
            f"{s['concurrency']:>4} {names.get(s['launch'], s['launch']):>3} "
            f"{str(s['joined']) + '/' + str(s['requests']):>7} {s['tokens']:>7} "
            f"{t['client_p50_ms']:>7.2f}|{t['server_p50_ms']:<7.2f} "
            f"{t['client_p99_ms']:>7.2f}|{t['server_p99_ms']:<7.2f} "
            f"{i['client_p50_ms']:>6.2f}|{i['server_p50_ms']:<6.2f} "
            f"{i['client_p99_ms']:>6.2f}|{i['server_p99_ms']:<6.2f} "
            f"{e['client_p50_ms']:>7.1f}|{e['server_p50_ms']:<7.1f} "
            f"{e['client_p99_ms']:>7.1f}|{e['server_p99_ms']:<7.1f} {tput:>7.0f}"
        )
    lines += [
        "",
        "per-token delay = client receive - server write, us; transit = server handler entry -"
        " client send; hand-off = server write - engine step end",
        f"{'conc':>4} {'run':>3} {'delay min':>9} {'p50':>7} {'p99':>7} {'max':>8} "
        f"{'transit p50':>11} {'p99':>7} {'hand-off p50':>12} {'p99':>7} "
        f"{'client cpu':>10} {'lag p99 ms':>10} {'saturated':>9}",
    ]
    for s in summaries:
        d, tr, h = s["delay"], s["transit"], s["handoff"]
        lines.append(
            f"{s['concurrency']:>4} {names.get(s['launch'], s['launch']):>3} "
            f"{d['min_us']:>9.1f} {d['p50_us']:>7.1f} {d['p99_us']:>7.1f} {d['max_us']:>8.1f} "
            f"{tr['p50_us']:>11.1f} {tr['p99_us']:>7.1f} {h['p50_us']:>12.1f} {h['p99_us']:>7.1f} "
            f"{s['client_cpu_share']:>10.3f} {s['client_lag_p99_ms']:>10.2f} "
            f"{s['saturated']!s:>9}"
        )
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-qwen2", help="the served model name")
    parser.add_argument("--concurrencies", default="1,16,64")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompts-per-block", type=int, default=64)
    parser.add_argument("--blocks-per-level", type=int, default=2)
    parser.add_argument("--warmup-requests", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--startup-deadline-s", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("gpu-timing-check"))
    parser.add_argument("server_args", nargs="*", help="after `--`: more gpu_server.py arguments")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(SERVER),
        "--port",
        "{port}",
        "--model-name",
        args.model,
        "--timestamps",
        str(out / "server-{port}.jsonl"),
        *args.server_args,
    ]
    image = "local/gpu-server@sha256:" + hashlib.sha256(" ".join(command).encode()).hexdigest()
    spec = JobSpec(
        round_id="gpu-timing-check",
        seed=hashlib.sha256(b"gpu-timing-check").hexdigest(),
        served_model_name=args.model,
        model_path=str(out),
        max_model_len=args.max_model_len,
        contestants=(Contestant(key="B", role=Role.BASELINE, image=image),),
        launch_order=("B", "B"),
        workload=Workload(
            concurrencies=tuple(int(c) for c in args.concurrencies.split(",")),
            max_tokens=args.max_tokens,
            prompts_per_block=args.prompts_per_block,
            blocks_per_level=args.blocks_per_level,
            warmup_requests=args.warmup_requests,
        ),
        startup_deadline_s=args.startup_deadline_s,
    )
    ports = [_free_port()]
    while len(ports) < 2:  # one port per launch: the server's timestamp file is named by it
        if (port := _free_port()) not in ports:
            ports.append(port)
    runtime = ProcessRuntime(
        {image: command}, ServerSpec(args.model, str(out), args.max_model_len), ports
    )
    ctx = KeepingContext(out)
    runner = TimingOnlyRunner(spec, runtime, ctx)
    report = asyncio.run(runner.run())
    (out / "report.json").write_text(report.model_dump_json(indent=1))
    for launch in report.launches:
        if launch.reason is not None:
            print(f"launch {launch.index} failed: {launch.reason}: {launch.detail}")
    files = [out / f"server-{port}.jsonl" for port in ports]
    levels, headers = join(runner, report, ctx.traces, files)
    summaries = [level.summary() for level in levels]
    text = table(summaries)
    for index, header in enumerate(headers):
        shown = {k: header.get(k) for k in ("device", "preset", "dtype", "torch", "self_check")}
        print(f"server of launch {index}: {shown}")
    print(text)
    (out / "table.txt").write_text(text + "\n")
    (out / "check.json").write_text(
        json.dumps(
            {"servers": headers, "levels": summaries, "workload": spec.workload.model_dump()},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
