"""Fixtures for the pod tests: fake Targon and Lium servers whose pods are the test sshd."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from cacheon.config import Settings
from cacheon.pods.api import RetryPolicy
from cacheon.pods.keys import PodKey, init_key
from cacheon.pods.leases import PodLeases
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_pods import LOOPBACK, LoopThread, PodHost
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.pod_env import PodEnv, pod_env
from cacheon.testing.services import Sshd

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_wait_s=2.0)
SettingsFor = Callable[..., Settings]
OpenLeases = Callable[..., AbstractAsyncContextManager[PodLeases]]


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def pod_host(sshd: Sshd) -> PodHost:
    return PodHost(
        host=LOOPBACK,
        port=sshd.port,
        user=sshd.user,
        authorized_keys=sshd.root / "authorized_keys",
        client_key=sshd.client_key,
        known_hosts_line=sshd.known_hosts_line,
    )


@pytest.fixture
def fake_lium(loop_thread: LoopThread, pod_host: PodHost) -> Iterator[FakeLium]:
    fake = FakeLium(pod_host)
    loop_thread.run(fake.start())
    try:
        yield fake
    finally:
        loop_thread.run(fake.stop())


@pytest.fixture
def fake_targon(loop_thread: LoopThread, pod_host: PodHost) -> Iterator[FakeTargon]:
    fake = FakeTargon(pod_host)
    loop_thread.run(fake.start())
    try:
        yield fake
    finally:
        loop_thread.run(fake.stop())


@pytest.fixture
def pod_key(tmp_path: Path) -> PodKey:
    key, _ = init_key(tmp_path / "keys" / "pod_ed25519")
    return key


@pytest.fixture
def env(tmp_path: Path, pod_key: PodKey) -> PodEnv:
    return pod_env(tmp_path, pod_key)
