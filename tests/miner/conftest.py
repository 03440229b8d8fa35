"""Fixtures for the miner's tools: a local subnet with three toy miners, and the CLI in a process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import TOY_MINERS, LocalArena, Services
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd

CHECKED = ("fast", "slow", "cheat")


@pytest.fixture
def arena(
    tmp_path: Path,
    docker_daemon: DockerDaemon,
    registry: Registry,
    pod_sshd: Sshd,
    s3: SeaweedS3,
) -> Iterator[LocalArena]:
    loop = LoopThread()
    miners = tuple(m for m in TOY_MINERS if m.name in CHECKED)
    try:
        local = LocalArena.create(
            tmp_path, Services(docker_daemon, registry, pod_sshd, s3, loop), miners=miners
        )
        try:
            yield local
        finally:
            local.close()
    finally:
        loop.stop()
