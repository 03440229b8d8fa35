"""Fixtures for the pod tests: fake Targon and Lium servers whose pods are the test sshd."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cacheon.config import Settings
from cacheon.pods.api import RetryPolicy
from cacheon.pods.keys import PodKey, init_key
from cacheon.pods.leases import LeasePolicy, PodLeases
from cacheon.pods.providers import build_providers
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_pods import LOOPBACK, LoopThread, PodHost
from cacheon.testing.fake_targon import FakeTargon
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
def settings_for(tmp_path: Path, pod_key: PodKey) -> SettingsFor:
    return functools.partial(_pod_settings, tmp_path, pod_key)


@pytest.fixture
def open_leases(pod_key: PodKey) -> OpenLeases:
    return functools.partial(_open_leases, key=pod_key)


@asynccontextmanager
async def _open_leases(
    settings: Settings, db: Database, *, key: PodKey, clock: Callable[[], float] = time.time
) -> AsyncIterator[PodLeases]:
    """PodLeases over the configured fakes, with fast retries; closed on exit."""
    providers = build_providers(settings.pods, db, retry=FAST_RETRY)
    leases = PodLeases(db, providers, key, LeasePolicy.from_settings(settings), clock)
    try:
        yield leases
    finally:
        await leases.close()


def _pod_settings(
    tmp_path: Path,
    key: PodKey,
    *,
    lium: FakeLium | None = None,
    targon: FakeTargon | None = None,
    **pods: Any,
) -> Settings:
    """Settings pointing at the fakes, with short waits so the suite stays quick."""
    section: dict[str, Any] = {
        "providers": [],
        "ssh_key_path": str(key.path),
        "ready_timeout_s": 10.0,
        "poll_interval_s": 0.05,
        "api_timeout_s": 5.0,
        "ssh_connect_timeout_s": 5.0,
    }
    if targon is not None:
        section |= {
            "targon_base_url": targon.base_url,
            "targon_api_key": targon.api_key,
            "targon_ssh_gateway": targon.gateway,
        }
        section["providers"].append("targon")
    if lium is not None:
        section |= {
            "lium_base_url": lium.base_url,
            "lium_api_key": lium.api_key,
            "lium_template_id": lium.template_id,
        }
        section["providers"].append("lium")
    section |= pods
    return Settings(validator={"state_dir": str(tmp_path / "state")}, pods=section)
