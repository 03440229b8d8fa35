"""A whole round on the real dockerd with toy images pulled by digest from the test registry.

Done when (issue 7): the raw measurements, turned into ratios by the arena's verdict maths,
rank fast > baseline > slow within tolerance of the configured speeds, and hostile contestants
end in their FAIL reasons within the deadline.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import docker
import pytest

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import DockerRuntime, RunProfile, ServerSpec
from cacheon.arena.measure import measure_round
from cacheon.protocol import Contestant, Digest, JobSpec, Outcome, Phase, ReasonCode, Role, Workload
from cacheon.testing.services import DockerDaemon
from cacheon.testing.toy_server import Fault, Knobs
from tests.agent.agent_toys import MODEL, RecordingContext, ToyImage, speed

WORKLOAD = Workload(
    concurrencies=(1, 4),
    prompts_per_block=6,
    blocks_per_level=1,
    warmup_requests=2,
    max_tokens=24,
    request_timeout_s=4,
)
PROFILE = RunProfile(
    memory_bytes=512 << 20,
    pids=256,
    shm_bytes=256 << 20,
    tmpfs_bytes=64 << 20,
    memlock_bytes=RunProfile.for_host().memlock_bytes,
    gpus=False,
    stop_timeout_s=5,
)


def _job(
    model_dir: Path, contestants: list[Contestant], order: list[str], **extra: object
) -> JobSpec:
    return JobSpec(
        round_id="r-test",
        seed="5e" * 32,
        served_model_name=MODEL,
        model_path=str(model_dir),
        max_model_len=4096,
        contestants=tuple(contestants),
        launch_order=tuple(order),
        workload=WORKLOAD,
        **extra,  # type: ignore[arg-type]
    )


def _run(daemon: DockerDaemon, job: JobSpec, ctx: RecordingContext) -> object:
    client: docker.DockerClient = daemon.client()
    try:
        runtime = DockerRuntime(client, PROFILE, ServerSpec(MODEL, job.model_path, 4096))
        return asyncio.run(RoundRunner(job, runtime, ctx).run())
    finally:
        client.close()


def test_round_ranks_fast_baseline_slow(
    docker_daemon: DockerDaemon, toy_image: ToyImage, model_dir: Path, ctx: RecordingContext
) -> None:
    baseline = toy_image("baseline-20", Knobs(speed=speed(20)))
    fast = toy_image("fast-10", Knobs(speed=speed(10)))
    slow = toy_image("slow-40", Knobs(speed=speed(40)))
    job = _job(
        model_dir,
        [
            Contestant(key="B", role=Role.BASELINE, image=baseline),
            Contestant(key="F", role=Role.CHALLENGER, image=fast),
            Contestant(key="S", role=Role.CHALLENGER, image=slow),
        ],
        ["B", "F", "S", "B"],
    )
    report = _run(docker_daemon, job, ctx)
    assert [r.outcome for r in report.results] == [Outcome.PASS] * 3
    assert [launch.contestant for launch in report.launches] == ["B", "F", "S", "B"]
    for launch in report.launches:
        assert [(lv.concurrency, lv.block, lv.requests) for lv in launch.levels] == [
            (1, 0, 6),
            (4, 0, 6),
        ]
    assert report.hardware.enforced_limits["network_interfaces"] == "lo"
    evidence = measure_round(job, report, sigma=0.05)
    assert evidence.void is None
    ratios = {
        key: math.exp(evidence.vs_baseline[Digest(image.rpartition("@")[2])].mean)
        for key, image in (("F", fast), ("S", slow))
    }
    assert ratios["F"] == pytest.approx(2.0, rel=0.2)
    assert ratios["S"] == pytest.approx(0.5, rel=0.2)
    assert len(ctx.traces) == 4
    assert all(len(trace) == 12 for trace in ctx.traces)
    assert {phase for phase, _ in ctx.events} >= {
        Phase.PULL,
        Phase.START,
        Phase.WARMUP,
        Phase.MEASURE,
    }


def test_hostile_contestants_fail_with_their_reasons(
    docker_daemon: DockerDaemon,
    registry: object,
    toy_image: ToyImage,
    model_dir: Path,
    ctx: RecordingContext,
) -> None:
    faults = {
        "hang": (Knobs(fault=Fault.HANG), ReasonCode.BAD_RESPONSE),
        "crash": (Knobs(fault=Fault.CRASH), ReasonCode.CRASHED),
        "fault-oom": (Knobs(fault=Fault.OOM), ReasonCode.OOM),
        "never-healthy": (Knobs(fault=Fault.NEVER_HEALTHY), ReasonCode.STARTUP_TIMEOUT),
        "wrong-model": (Knobs(fault=Fault.WRONG_MODEL), ReasonCode.CONFORMANCE),
    }
    contestants = [
        Contestant(
            key="B", role=Role.BASELINE, image=toy_image("baseline-20", Knobs(speed=speed(20)))
        )
    ]
    for name, (knobs, _) in faults.items():
        contestants.append(Contestant(key=name, role=Role.CHALLENGER, image=toy_image(name, knobs)))
    missing = f"{registry.host}/toy/missing@sha256:{'3' * 64}"  # type: ignore[attr-defined]
    contestants.append(Contestant(key="missing", role=Role.CHALLENGER, image=missing))
    order = [c.key for c in contestants] + ["hang"]
    job = _job(model_dir, contestants, order, startup_deadline_s=5.0)
    report = _run(docker_daemon, job, ctx)
    results = {r.key: r for r in report.results}
    assert results["B"].outcome is Outcome.PASS
    for name, (_, reason) in faults.items():
        assert results[name].outcome is Outcome.FAIL, results[name]
        assert results[name].reason is reason, results[name]
    assert results["missing"].reason is ReasonCode.PULL_FAILED
    assert [launch.contestant for launch in report.launches].count("hang") == 1  # not relaunched
    assert not docker_daemon.client().containers.list(all=True)
