"""Settings and leases pointed at the fake providers, for the pod tests and the local demo.

`PodEnv` bundles a work directory and the validator key with two factories: Settings whose
`[pods]` section names the given fakes (with short waits), and `PodLeases` over them with fast
retries, closed on exit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacheon.config import Settings
from cacheon.pods.api import RetryPolicy
from cacheon.pods.keys import PodKey
from cacheon.pods.leases import LeasePolicy, PodLeases
from cacheon.pods.providers import build_providers
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_targon import FakeTargon

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_wait_s=2.0)
SettingsFor = Callable[..., Settings]
OpenLeases = Callable[..., AbstractAsyncContextManager[PodLeases]]


@dataclass(frozen=True)
class PodEnv:
    """What a pod test needs beside the fakes: a temp dir, our key, settings and leases."""

    tmp: Path
    key: PodKey
    settings: SettingsFor
    """`settings(lium=fake, targon=fake, **pods)`: Settings pointing at those fakes."""
    leases: OpenLeases
    """`async with leases(settings, db[, clock=])`: PodLeases with fast retries."""


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


def pod_env(tmp: Path, key: PodKey) -> PodEnv:
    return PodEnv(
        tmp,
        key,
        functools.partial(_pod_settings, tmp, key),
        functools.partial(_open_leases, key=key),
    )
