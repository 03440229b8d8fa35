"""A whole local subnet (chain, registry, pod, S3, fake Lium) for the daemon's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import LocalArena, Services
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd


@pytest.fixture
def local_arena(
    tmp_path: Path,
    docker_daemon: DockerDaemon,
    registry: Registry,
    pod_sshd: Sshd,
    s3: SeaweedS3,
) -> Iterator[LocalArena]:
    loop = LoopThread()
    try:
        arena = LocalArena.create(tmp_path, Services(docker_daemon, registry, pod_sshd, s3, loop))
        try:
            yield arena
        finally:
            arena.close()
    finally:
        loop.stop()
