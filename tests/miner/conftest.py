"""Fixtures for the miner's tools: a local subnet with three toy miners, and the toy model's files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import MODEL_FILES, TOY_MINERS, LocalArena, Services
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd

CHECKED = ("fast", "slow", "cheat")
"""The toy miners the arena registers: one of each kind of verdict `check` must match."""


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


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The toy model's files, as the pod has them and a miner would."""
    path = tmp_path / "model"
    path.mkdir()
    for name, data in MODEL_FILES.items():
        (path / name).write_bytes(data)
    return path
