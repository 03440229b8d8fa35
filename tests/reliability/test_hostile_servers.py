"""The hostile behaviours the agent tests did not cover yet, in one agent round of toy servers run
as processes: each FAILs with its reason within the request deadline, and the agent stays
healthy (the baseline around them passes, the round completes).

Covered elsewhere, not repeated here: hang before headers, slow drip, never-ending stream,
malformed JSON, gigantic chunk, connection reset, tokens without ids, wrong model and the fake
TTFT (tests/agent/test_loadgen.py); crash, OOM, never healthy (tests/agent/test_round.py); the
gate's cheats (tests/correctness/test_cheats_round.py). `bench/reliability.py` runs them all
together on the real dockerd for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import ProcessRuntime, ServerSpec
from cacheon.protocol import (
    Contestant,
    JobSpec,
    Outcome,
    Phase,
    ReasonCode,
    Role,
    TraceRecord,
    TraceRef,
    Workload,
)
from cacheon.testing import toy_server
from cacheon.testing.toy_lm import EOS
from cacheon.testing.toy_server import LATER_CRASH_AT, Fault, Knobs, Speed

MODEL = "Qwen/Qwen2.5-72B-Instruct"
TIMEOUT_S = 3.0
WORKLOAD = Workload(
    concurrencies=(1, 4),
    prompts_per_block=50,
    blocks_per_level=1,
    warmup_requests=2,
    max_tokens=16,
    request_timeout_s=TIMEOUT_S,
)
FAST = Speed(ttft_s=0.0, token_s=0.0)
NEW_FAULTS = {
    Fault.HANG_MID_STREAM: (ReasonCode.BAD_RESPONSE, "no complete response within"),
    Fault.INVALID_UTF8: (ReasonCode.BAD_RESPONSE, "not JSON"),
    Fault.WRONG_CONTENT_TYPE: (ReasonCode.BAD_RESPONSE, "content-type 'application/json'"),
    Fault.HTTP_500_LATER: (ReasonCode.BAD_RESPONSE, "HTTP 500"),
    Fault.CRASH_LATER: (ReasonCode.CRASHED, "exited with code 3"),
}


class _Recorder:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.failed: list[dict[str, object]] = []

    def emit(self, phase: Phase, **fields: object) -> None:
        if phase is Phase.FAILED:
            self.failed.append(fields)

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return TraceRef(name="trace.jsonl.gz", sha256="0" * 64, size=0, records=len(records))


def _ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_new_hostile_servers_fail_with_their_reasons(tmp_path: Path) -> None:
    assert WORKLOAD.prompts_per_block * len(WORKLOAD.concurrencies) + 4 > LATER_CRASH_AT
    knobs = {"baseline": Knobs(speed=FAST)}
    knobs |= {fault.value: Knobs(speed=FAST, fault=fault) for fault in NEW_FAULTS}
    images = {
        name: f"local/{name.replace('_', '-')}@sha256:{i:064x}" for i, name in enumerate(knobs)
    }
    commands = {
        images[name]: [
            sys.executable,
            toy_server.__file__,
            "--host",
            "127.0.0.1",
            "--knobs",
            k.to_json(),
        ]
        for name, k in knobs.items()
    }
    contestants = [Contestant(key="B", role=Role.BASELINE, image=images["baseline"])]
    contestants += [
        Contestant(key=fault.value, role=Role.CHALLENGER, image=images[fault.value])
        for fault in NEW_FAULTS
    ]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "generation_config.json").write_text(f'{{"eos_token_id": {EOS}}}')
    job = JobSpec(
        round_id="r-hostile",
        seed="9a" * 32,
        served_model_name=MODEL,
        model_path=str(tmp_path / "model"),
        max_model_len=1024,
        contestants=tuple(contestants),
        launch_order=(*(c.key for c in contestants), "B"),
        workload=WORKLOAD,
        startup_deadline_s=20,
    )
    runtime = ProcessRuntime(commands, ServerSpec(MODEL, job.model_path, 1024), _ports(4))
    recorder = _Recorder(tmp_path)
    report = asyncio.run(RoundRunner(job, runtime, recorder).run())

    results = {r.key: r for r in report.results}
    assert results["B"].outcome is Outcome.PASS, results["B"]
    assert [launch.contestant for launch in report.launches][-1] == "B"  # the agent went on
    for launch in report.launches:
        if launch.contestant == "B":
            continue
        reason, message = NEW_FAULTS[Fault(launch.contestant)]
        result = results[launch.contestant]
        assert result.outcome is Outcome.FAIL, result
        assert result.reason is reason, result
        assert message in result.detail, result
        assert (launch.ended_ns - launch.started_ns) / 1e9 < 20 + TIMEOUT_S + 15
    assert len(recorder.failed) == len(NEW_FAULTS)
