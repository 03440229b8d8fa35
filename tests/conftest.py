"""Session-wide real services on loopback (dockerd, registry, sshd, S3), started on first use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.testing.services import POD_SSH_USER, DockerDaemon, Registry, SeaweedS3, Sshd


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    daemon = DockerDaemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    server = Registry.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    server = Sshd.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pod_sshd(docker_daemon: DockerDaemon) -> Iterator[Sshd]:
    """A stand-in GPU pod: root over SSH, with the test dockerd as its docker engine."""
    server = Sshd.start(POD_SSH_USER, as_root=True, environment={"DOCKER_HOST": docker_daemon.host})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    server = SeaweedS3.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads or writes the real home (bittensor and docker write caches there)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in [k for k in os.environ if k.startswith("CACHEON_")]:
        monkeypatch.delenv(name)
    Path(home, ".bittensor").mkdir()


SERVICE_FIXTURES = frozenset({"docker_daemon", "registry", "sshd", "pod_sshd", "s3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real service belongs to the services group, whether marked or not."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
