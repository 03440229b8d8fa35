"""Fixtures for the remote tests: SSH targets on the real sshd, the agent installed once, S3
and the state database, and a fresh agent_root per test owned by the pod's user."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cacheon.config import S3Settings
from cacheon.remote.bootstrap import AgentInstall, install_agent
from cacheon.remote.ssh import SshOptions, connect
from cacheon.sshtarget import SshTarget
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore
from cacheon.testing.services import LOOPBACK, SeaweedS3, Sshd


@pytest.fixture
def ssh_options(sshd: Sshd) -> SshOptions:
    return SshOptions(client_key=sshd.client_key, connect_timeout_s=10, keepalive_s=5)


@pytest.fixture
def ssh_target(sshd: Sshd) -> SshTarget:
    return SshTarget(LOOPBACK, sshd.port, sshd.user, sshd.host_public_key)


@pytest.fixture
def agent_root(sshd: Sshd) -> Iterator[Path]:
    """A fresh directory on the 'pod' for this test, writable by the SSH user."""
    root = sshd.agent_root / uuid.uuid4().hex[:8]
    root.mkdir()
    shutil.chown(root, user=sshd.user)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The validator's wheelhouse cache, shared by the session (built once, as in production)."""
    return tmp_path_factory.mktemp("wheelhouse")


@pytest.fixture(scope="session")
def installed_agent(sshd: Sshd, wheel_cache: Path) -> Iterator[AgentInstall]:
    """The agent installed once on the 'pod' for the tests that only use it."""
    root = sshd.agent_root / "shared"
    root.mkdir(exist_ok=True)
    shutil.chown(root, user=sshd.user)
    target = SshTarget(LOOPBACK, sshd.port, sshd.user, sshd.host_public_key)

    async def install() -> AgentInstall:
        async with await connect(target, SshOptions(client_key=sshd.client_key)) as session:
            return await install_agent(session, agent_root=str(root), cache_dir=wheel_cache)

    yield asyncio.run(install())
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_settings(s3: SeaweedS3) -> S3Settings:
    bucket = f"cacheon-remote-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    return S3Settings(
        endpoint_url=s3.endpoint_url,
        bucket=bucket,
        access_key_id=s3.access_key,
        secret_access_key=SecretStr(s3.secret_key),
        path_style=True,
        prefix="test",
    )


@pytest.fixture
def store(s3_settings: S3Settings) -> ObjectStore:
    return ObjectStore.from_settings(s3_settings)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database.open(tmp_path / "state.db") as database:
        yield database
