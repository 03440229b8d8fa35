"""The session's real services, bundled as a local arena takes them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import Services
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd


@pytest.fixture
def services(
    docker_daemon: DockerDaemon, registry: Registry, pod_sshd: Sshd, s3: SeaweedS3
) -> Iterator[Services]:
    loop = LoopThread()
    try:
        yield Services(docker_daemon, registry, pod_sshd, s3, loop)
    finally:
        loop.stop()
