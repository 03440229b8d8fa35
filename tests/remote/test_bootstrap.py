"""Installing the agent on the 'pod' (real sshd, the test user's own python3) from an uploaded
wheelhouse, with the pod never reaching an index."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from cacheon import __version__
from cacheon.remote import bootstrap
from cacheon.remote.bootstrap import BootstrapError, build_self_wheel, install_agent
from cacheon.remote.ssh import SshOptions, connect
from cacheon.sshtarget import SshTarget
from tests.remote.remote_toys import HubServer


def test_install_checks_the_version_and_reuses_the_venv(
    ssh_target: SshTarget, ssh_options: SshOptions, agent_root: Path, wheel_cache: Path
) -> None:
    async def main() -> list[float]:
        times = []
        async with await connect(ssh_target, ssh_options) as session:
            for _ in range(2):
                started = time.monotonic()
                install = await install_agent(
                    session, agent_root=str(agent_root), cache_dir=wheel_cache
                )
                times.append(time.monotonic() - started)
            version = await session.run(f"{install.agent} --version", deadline_s=30)
            assert version.stdout.strip() == f"cacheon-agent {__version__}"
            # the venv imports nothing from outside it: no index, no validator-only packages
            probe = await session.run(
                f"{install.venv}/bin/python -c 'import boto3'", deadline_s=30, check=False
            )
            assert probe.exit_status != 0
        return times

    first, second = asyncio.run(main())
    assert second < first
    wheels = {p.name for p in (agent_root / "wheels").iterdir()}
    assert any(name.startswith("pydantic_core-") for name in wheels)
    assert not any(name.startswith(("boto3", "asyncssh", "bittensor")) for name in wheels)


def test_a_failed_install_says_why_with_the_pods_output(
    ssh_target: SshTarget,
    ssh_options: SshOptions,
    agent_root: Path,
    wheel_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = bootstrap.build_wheelhouse

    def without_pydantic(cache_dir: Path, pod: bootstrap.PodPython) -> bootstrap.Wheelhouse:
        house = real(cache_dir, pod)
        deps = tuple(p for p in house.deps if not p.name.startswith("pydantic-"))
        return dataclasses.replace(house, deps=deps)

    monkeypatch.setattr(bootstrap, "build_wheelhouse", without_pydantic)

    async def main() -> None:
        async with await connect(ssh_target, ssh_options) as session:
            await install_agent(session, agent_root=str(agent_root), cache_dir=wheel_cache)

    with pytest.raises(BootstrapError, match=r"installing the agent into .* failed: .*pydantic"):
        asyncio.run(main())


def test_a_pod_without_a_recent_python_fetches_a_standalone_one(
    ssh_target: SshTarget,
    ssh_options: SshOptions,
    agent_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a stand-in "standalone build": python/bin/python3 pointing at the pod's own interpreter
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("python/bin/python3")
        link.type = tarfile.SYMTYPE
        link.linkname = str(Path("/usr/bin/python3").resolve())
        tar.addfile(link)
    archive = buffer.getvalue()
    monkeypatch.setattr(bootstrap, "SYSTEM_PYTHONS", ("python3.99",))

    async def main(sha256: str) -> bootstrap.PodPython:
        async with await connect(ssh_target, ssh_options) as session:
            return await bootstrap.find_python(
                session, str(agent_root), f"{hub.url}/py/resolve/1/python.tar.gz", sha256
            )

    with HubServer("py", "1", {"python.tar.gz": archive}) as hub:
        with pytest.raises(BootstrapError, match=r"no Python >= 3\.11"):
            asyncio.run(_no_url(ssh_target, ssh_options, agent_root))
        with pytest.raises(BootstrapError, match="fetching a standalone Python failed"):
            asyncio.run(main("0" * 64))
        found = asyncio.run(main(hashlib.sha256(archive).hexdigest()))
    assert found.exe.startswith(str(agent_root / "python"))
    assert found.version >= (3, 11)


async def _no_url(target: SshTarget, options: SshOptions, agent_root: Path) -> None:
    async with await connect(target, options) as session:
        await bootstrap.find_python(session, str(agent_root), None, None)


def test_our_wheel_is_deterministic_and_installable(tmp_path: Path) -> None:
    first = build_self_wheel(tmp_path / "a")
    second = build_self_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert "cacheon/cli/agent.py" in names
    assert f"cacheon-{__version__}.dist-info/entry_points.txt" in names
    assert not any("__pycache__" in name for name in names)
