"""The docker runtime on the real test dockerd: pull by digest, the run profile, isolation.

A probe image runs every escape attempt inside a contestant container started exactly as the
agent starts contestants, and the kernel's enforced limits are read back as the report records
them. This machine's dockerd runs cgroup v1 without a bridge; the readback says what held.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cacheon.agent.loadgen import LoadGenerator
from cacheon.agent.runtime import DockerRuntime, LaunchFault, RunProfile, ServerSpec
from cacheon.protocol import ReasonCode
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import PYTHON
from cacheon.testing.toy_server import Fault, Knobs
from tests.agent.agent_toys import MODEL, ToyImage, free_ports

PROFILE = RunProfile(
    memory_bytes=256 << 20,
    pids=128,
    shm_bytes=512 << 20,
    tmpfs_bytes=64 << 20,
    memlock_bytes=RunProfile.for_host().memlock_bytes,
    gpus=False,
    stop_timeout_s=5,
)


def _runtime(daemon: DockerDaemon, model_dir: Path) -> DockerRuntime:
    return DockerRuntime(daemon.client(), PROFILE, ServerSpec(MODEL, str(model_dir), 4096))


async def _healthy(
    runtime: DockerRuntime, image: str, log_file: Path
) -> tuple[dict[str, str], str]:
    await runtime.pull(image)
    server = await runtime.start(image, f"probe-{log_file.stem}", log_file)
    try:
        limits = await server.enforced_limits()
        async with LoadGenerator(server.target, MODEL, 1, 5) as load:
            for _ in range(100):
                if await load.health() == 200:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("probe never became healthy")
    finally:
        await server.stop()
    return limits


def test_contestant_cannot_escape_the_run_profile(
    docker_daemon: DockerDaemon, toy_image: ToyImage, model_dir: Path, tmp_path: Path
) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"secret": "hmac"}))
    probe = Path(__file__).with_name("escape_probe.py").read_bytes()
    image = toy_image(
        "escape-probe",
        command=[PYTHON, "/app/escape_probe.py", str(job), "/proc/1/root" + str(job)],
        extra_files={"/app/escape_probe.py": probe},
    )
    limits = asyncio.run(_healthy(_runtime(docker_daemon, model_dir), image, tmp_path / "p.log"))
    logs = (tmp_path / "p.log").read_text()
    results = {
        line.split()[0]: line
        for line in logs.splitlines()
        if " blocked " in line or "ESCAPED" in line
    }
    assert set(results) == {
        "write_root",
        "connect_host",
        "connect_public",
        "docker_socket",
        "read_job",
        "fork_bomb",
    }
    assert not [line for line in results.values() if "ESCAPED" in line], logs
    assert "Read-only file system" in results["write_root"]
    assert "unreachable" in results["connect_public"] or "Errno 101" in results["connect_public"]
    assert "Resource temporarily unavailable" in results["fork_bomb"]
    # what the kernel enforced, as the report records it
    assert limits["network_interfaces"] == "lo"
    assert limits["capabilities"] == "0000000000000000"
    assert limits["no_new_privs"] == "1"
    assert limits["seccomp"] == "filter"
    assert limits["rootfs"] == "ro"
    assert limits["docker_socket"] == "absent"
    assert limits["model"] == "ro"
    assert limits["memory_limit_bytes"] == str(256 << 20)
    assert limits["pids_max"] == "128"
    assert limits["shm"] in ("524288k", str(512 << 20))
    assert limits["engine.CgroupVersion"] in ("1", "2")
    print("enforced limits:", json.dumps(limits, indent=1))


def test_memory_hog_is_killed_as_oom(
    docker_daemon: DockerDaemon, toy_image: ToyImage, model_dir: Path, tmp_path: Path
) -> None:
    image = toy_image(
        "memory-hog", command=[PYTHON, "-c", "x = [bytearray(1 << 26) for _ in range(64)]"]
    )

    async def run() -> tuple[int | None, bool]:
        runtime = _runtime(docker_daemon, model_dir)
        await runtime.pull(image)
        server = await runtime.start(image, "oom", tmp_path / "oom.log")
        for _ in range(100):
            if (ended := await server.exited()) is not None:
                await server.stop()
                return ended.code, ended.oom
            await asyncio.sleep(0.1)
        await server.stop()
        pytest.fail("the memory hog was not killed")

    code, oom = asyncio.run(run())
    assert oom
    assert code == 137


def test_pull_checks_the_reference(
    docker_daemon: DockerDaemon, registry: Registry, model_dir: Path, toy_image: ToyImage
) -> None:
    runtime = _runtime(docker_daemon, model_dir)
    image = toy_image("baseline", Knobs())
    facts = asyncio.run(runtime.pull(image))
    assert facts.digest == image.rpartition("@")[2]
    assert facts.config_digest is not None
    assert facts.config_digest.startswith("sha256:")
    assert facts.layer_diff_ids
    missing = f"{registry.host}/toy/absent@sha256:{'1' * 64}"
    with pytest.raises(LaunchFault) as caught:
        asyncio.run(runtime.pull(missing))
    assert caught.value.reason is ReasonCode.PULL_FAILED
    closed = f"127.0.0.1:{free_ports(1)[0]}/toy/x@sha256:{'2' * 64}"
    with pytest.raises(LaunchFault) as caught:
        asyncio.run(runtime.pull(closed))
    assert caught.value.reason is ReasonCode.REGISTRY_UNAVAILABLE
    with pytest.raises(LaunchFault) as caught:
        asyncio.run(runtime.pull("toy:latest"))
    assert caught.value.reason is ReasonCode.PULL_FAILED


def test_leftovers_are_removed(
    docker_daemon: DockerDaemon, model_dir: Path, toy_image: ToyImage, tmp_path: Path
) -> None:
    image = toy_image("never-healthy", Knobs(fault=Fault.NEVER_HEALTHY))
    runtime = _runtime(docker_daemon, model_dir)

    async def run() -> int:
        await runtime.pull(image)
        await runtime.start(image, "leftover", tmp_path / "l.log")
        return await runtime.remove_leftovers()

    assert asyncio.run(run()) == 1
    assert not docker_daemon.client().containers.list(all=True, filters={"label": "cacheon.agent"})
