"""No image is pulled while a launch measures (issue 17): the next image is pulled while the
current server starts, measuring waits for it, and a start-up that shared the host with a pull
gets that time back on its deadline. Toy servers run as processes behind a runtime whose pulls
take seconds."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import ProcessRuntime, Server, ServerSpec
from cacheon.protocol import Contestant, ImageFacts, JobSpec, Outcome, Role, Workload
from cacheon.testing import toy_server
from cacheon.testing.toy_server import Knobs, Speed
from tests.agent.agent_toys import MODEL, RecordingContext, free_ports

FAST = Speed(ttft_s=0.01, token_s=0.002)
PULL_S = {"b": 0.3, "c": 0.3, "d": 3.0}
"""Seconds each image's pull takes; D's is longer than C's start-up deadline."""
STARTUP_DEADLINE_S = 2.0


class SlowPulls:
    """The process runtime, with pulls that take time and a record of when each ran."""

    def __init__(self, inner: ProcessRuntime) -> None:
        self.inner = inner
        self.pulls: dict[str, tuple[int, int]] = {}

    async def remove_leftovers(self) -> int:
        return await self.inner.remove_leftovers()

    async def pull(self, image: str) -> ImageFacts:
        began = time.perf_counter_ns()
        await asyncio.sleep(PULL_S[image.split("/")[1][0]])
        facts = await self.inner.pull(image)
        self.pulls[image] = (began, time.perf_counter_ns())
        return facts

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        return await self.inner.start(image, name, log_file)


def test_pulls_run_beside_start_ups_and_never_beside_a_measurement(tmp_path: Path) -> None:
    knobs = {
        "b": Knobs(speed=FAST),
        "c": Knobs(speed=Speed(ttft_s=0.01, token_s=0.002, startup_s=2.5)),
        "d": Knobs(speed=FAST),
    }
    images = {key: f"local/{key}@sha256:{i + 1:064x}" for i, key in enumerate(knobs)}
    commands = {
        images[key]: [
            sys.executable,
            toy_server.__file__,
            "--host",
            "127.0.0.1",
            "--knobs",
            k.to_json(),
        ]
        for key, k in knobs.items()
    }
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "generation_config.json").write_text('{"eos_token_id": 0}')
    roles = {"b": Role.BASELINE}
    job = JobSpec(
        round_id="r-pulls",
        seed="3c" * 32,
        served_model_name=MODEL,
        model_path=str(tmp_path / "model"),
        max_model_len=1024,
        contestants=tuple(
            Contestant(key=k, role=roles.get(k, Role.CHALLENGER), image=images[k]) for k in knobs
        ),
        launch_order=("b", "c", "d", "b"),
        workload=Workload(
            concurrencies=(1, 4),
            prompts_per_block=4,
            blocks_per_level=1,
            warmup_requests=1,
            max_tokens=8,
            request_timeout_s=4,
        ),
        startup_deadline_s=STARTUP_DEADLINE_S,
    )
    inner = ProcessRuntime(commands, ServerSpec(MODEL, job.model_path, 1024), free_ports(2))
    runtime = SlowPulls(inner)
    report = asyncio.run(RoundRunner(job, runtime, RecordingContext(tmp_path)).run())

    # C's start-up (2.5 s) outlasted its deadline (2 s) while D's pull (3 s) ran beside it
    assert [r.outcome for r in report.results] == [Outcome.PASS] * 3, report.results
    launches = report.launches
    for launch in launches:
        assert launch.measured_from_ns is not None
        assert launch.measured_to_ns is not None
        for image, (began, ended) in runtime.pulls.items():
            overlap = min(ended, launch.measured_to_ns) - max(began, launch.measured_from_ns)
            assert overlap <= 0, f"{image} was pulled while launch {launch.index} measured"
    b, c, d = (runtime.pulls[images[k]] for k in "bcd")
    assert b[1] <= launches[0].started_ns + int(1e9)  # the first image, before any launch
    assert launches[0].started_ns < c[0] < launches[0].measured_from_ns  # beside B's start-up
    assert launches[1].started_ns < d[0] < launches[1].measured_from_ns  # beside C's start-up
    assert d[1] <= launches[1].measured_from_ns  # and C measured only once it was done
