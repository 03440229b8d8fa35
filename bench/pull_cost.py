"""What not pulling while a launch measures costs a round in wall time (issue 17).

The agent used to pull the next image while the current launch measured; it now pulls it while
the current server starts and waits for that pull before measuring (`cacheon/agent/round.py`),
so any pull longer than a start-up adds to the round. This bench runs the local arena's round
(its baseline and honest toy miners, `cacheon.testing.local_arena`, with its workload) on a
fresh dockerd with the images pushed to a local registry, every image given a layer of its own
of `--layer-mb` random bytes (what differs between real images: the toy images otherwise share
all but a config) and removed from the daemon before each round so that every pull downloads.
It prints each round's wall time and, less noisy on a shared host, the sum of its launches'
start-ups (from the start of a server to its warm-up: the health wait, and with this change the
wait for the next image's pull) and of its pulls.

Run it once with this tree and once with the code from before the change on PYTHONPATH (the
bench uses nothing the old code lacks) to compare:

    python bench/pull_cost.py [--layer-mb 0,200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import docker.errors

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import DockerRuntime, RunProfile, Server, ServerSpec
from cacheon.protocol import (
    Contestant,
    ImageFacts,
    JobSpec,
    Phase,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
    Workload,
)
from cacheon.testing.local_arena import BASELINE_KNOBS, TOY_MINERS
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_toy_image

HONEST = ("fast", "second", "slow", "late")
MODEL = "cacheon/toy-model"
WORKLOAD = Workload(
    concurrencies=(1, 2),
    prompts_per_block=2,
    blocks_per_level=1,
    warmup_requests=1,
    max_tokens=12,
    request_timeout_s=20.0,
)
"""The local arena's workload (`LocalArena.settings`)."""
PROFILE = RunProfile(
    memory_bytes=512 << 20,
    pids=256,
    shm_bytes=64 << 20,
    tmpfs_bytes=64 << 20,
    memlock_bytes=RunProfile.for_host().memlock_bytes,
    gpus=False,
    stop_timeout_s=5,
)


class _TimedPulls:
    """A runtime whose pulls are timed."""

    def __init__(self, inner: DockerRuntime) -> None:
        self.inner = inner
        self.pull_s: list[float] = []

    async def remove_leftovers(self) -> int:
        return await self.inner.remove_leftovers()

    async def pull(self, image: str) -> ImageFacts:
        began = time.perf_counter()
        facts = await self.inner.pull(image)
        self.pull_s.append(time.perf_counter() - began)
        return facts

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        return await self.inner.start(image, name, log_file)


class _Clock:
    """The job context: when each launch's phases began."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.phases: list[tuple[Phase, int, int]] = []

    def emit(self, phase: Phase, **fields: object) -> None:
        launch = fields.get("launch")
        if isinstance(launch, int):
            self.phases.append((phase, launch, time.perf_counter_ns()))

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return TraceRef(name="trace.jsonl.gz", sha256="0" * 64, size=0, records=len(records))


def _push(daemon: DockerDaemon, registry: Registry, layer_mb: int) -> dict[str, str]:
    knobs = {"B": BASELINE_KNOBS} | {m.name: m.knobs for m in TOY_MINERS if m.name in HONEST}
    images = {}
    for key, k in knobs.items():
        blob = {"/blob": os.urandom(layer_mb << 20)} if layer_mb else None
        images[key] = push_toy_image(daemon, registry, f"pull/{key.lower()}", k, extra_files=blob)
    return images


def _forget(daemon: DockerDaemon, images: dict[str, str]) -> None:
    """Remove the images and what their builds left behind (the parents holding their own
    layers), so that the round's pulls download them; the shared toy base stays."""
    client = daemon.client()
    try:
        for image in images.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(image, force=True)
        while client.images.prune(filters={"dangling": True}).get("ImagesDeleted"):
            pass
    finally:
        client.close()


def _round(daemon: DockerDaemon, images: dict[str, str], root: Path) -> tuple[float, str]:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "config.json").write_text('{"eos_token_id": 0}')
    contestants = tuple(
        Contestant(key=k, role=Role.BASELINE if k == "B" else Role.CHALLENGER, image=i)
        for k, i in images.items()
    )
    job = JobSpec(
        round_id="r-pulls",
        seed="a1" * 32,
        served_model_name=MODEL,
        model_path=str(root / "model"),
        max_model_len=1024,
        contestants=contestants,
        launch_order=("B", *HONEST, "B"),
        workload=WORKLOAD,
        startup_deadline_s=60,
    )
    client = daemon.client()
    clock = _Clock(root)
    try:
        runtime = _TimedPulls(
            DockerRuntime(client, PROFILE, ServerSpec(MODEL, job.model_path, 1024))
        )
        started = time.perf_counter_ns()
        report = asyncio.run(RoundRunner(job, runtime, clock).run())
        wall = (time.perf_counter_ns() - started) / 1e9
    finally:
        client.close()
    return wall, _launches(report, clock, runtime.pull_s)


def _launches(report: RoundReport, clock: _Clock, pulls: list[float]) -> str:
    """The round's start-ups (server start to warm-up) and pulls, summed."""
    at = {(phase, launch): ns for phase, launch, ns in clock.phases}
    startups = [
        (at[Phase.WARMUP, launch.index] - at[Phase.START, launch.index]) / 1e9
        for launch in report.launches
        if (Phase.WARMUP, launch.index) in at and (Phase.START, launch.index) in at
    ]
    return (
        f"start-ups {sum(startups):.1f} s ({', '.join(f'{s:.1f}' for s in startups)}),"
        f" pulls {sum(pulls):.1f} s ({', '.join(f'{p:.1f}' for p in pulls)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mb", default="0,200")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    daemon, registry = DockerDaemon.start(), Registry.start()
    try:
        with tempfile.TemporaryDirectory(prefix="cacheon-pulls-") as tmp:
            for layer_mb in (int(x) for x in args.layer_mb.split(",")):
                images = _push(daemon, registry, layer_mb)
                walls = []
                for rep in range(args.reps):
                    _forget(daemon, images)
                    wall, launches = _round(daemon, images, Path(tmp) / f"{layer_mb}-{rep}")
                    walls.append(wall)
                    print(
                        f"layer {layer_mb} MB, round {rep}: {wall:.1f} s ({launches})", flush=True
                    )
                print(
                    f"layer {layer_mb} MB: round wall time median {statistics.median(walls):.1f} s"
                    f" [{min(walls):.1f}-{max(walls):.1f}] over {len(walls)} rounds",
                    flush=True,
                )
    finally:
        registry.stop()
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
