"""Run the agent's timing pass with the process runtime: one server command, launched B then B'.

For a GPU check without Docker: the command starts an OpenAI-compatible server (use `{port}`
where its port goes); the agent launches it twice, waits for /health, warms up, measures every
level and prints the RoundReport (per-block speed, TTFT, ITL, E2E, throughput, client load) as
JSON, with a trace per launch under --out.

    python bench/timing_pass.py --model NAME --model-path DIR -- vllm serve DIR --port {port} ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
from collections.abc import Sequence
from pathlib import Path

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import ProcessRuntime, ServerSpec
from cacheon.protocol import (
    Contestant,
    JobSpec,
    Phase,
    Role,
    TraceRecord,
    TraceRef,
    Workload,
    encode_trace,
)


class PrintingContext:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir

    def emit(self, phase: Phase, **fields: object) -> None:
        print(phase.value, {k: v for k, v in fields.items() if v is not None}, flush=True)

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        data = encode_trace(records)
        name = f"trace-{len(list(self.job_dir.glob('trace-*'))):03d}.jsonl.gz"
        (self.job_dir / name).write_bytes(data)
        return TraceRef(
            name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), records=len(records)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the served model name requests carry")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrencies", default="1,16,64")
    parser.add_argument("--startup-deadline-s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=Path("timing-pass"))
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    image = "local/server@sha256:" + hashlib.sha256(" ".join(args.command).encode()).hexdigest()
    spec = JobSpec(
        round_id="timing-pass",
        seed=hashlib.sha256(b"timing-pass").hexdigest(),
        served_model_name=args.model,
        model_path=args.model_path,
        max_model_len=args.max_model_len,
        contestants=(Contestant(key="B", role=Role.BASELINE, image=image),),
        launch_order=("B", "B"),
        workload=Workload(
            concurrencies=tuple(int(c) for c in args.concurrencies.split(",")),
            max_tokens=args.max_tokens,
        ),
        startup_deadline_s=args.startup_deadline_s,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    runtime = ProcessRuntime(
        {image: args.command}, ServerSpec(args.model, args.model_path, args.max_model_len), [port]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(RoundRunner(spec, runtime, PrintingContext(args.out)).run())
    (args.out / "report.json").write_text(report.model_dump_json(indent=1))
    print(report.model_dump_json(indent=1))


if __name__ == "__main__":
    main()
