"""The SSH transport against the real OpenSSH sshd: pinning, deadlines, streaming, upload."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from cacheon.remote.ssh import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    SshDisconnected,
    SshOptions,
    connect,
)
from cacheon.sshtarget import SshTarget
from cacheon.testing.services import Sshd
from tests.remote.remote_toys import CutProxy


def test_commands_run_with_pinned_key_and_deadlines(
    ssh_target: SshTarget, ssh_options: SshOptions
) -> None:
    async def main() -> None:
        async with await connect(ssh_target, ssh_options) as session:
            result = await session.run("echo out; echo err >&2", deadline_s=10)
            assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 0)
            with pytest.raises(CommandFailed, match="exited 3: boom"):
                await session.run("echo boom >&2; exit 3", deadline_s=10)
            quiet = await session.run("exit 4", deadline_s=10, check=False)
            assert quiet.exit_status == 4
            started = time.monotonic()
            with pytest.raises(CommandTimeout):
                await session.run("sleep 20", deadline_s=0.5)
            assert time.monotonic() - started < 5
            echoed = await session.run("cat", deadline_s=10, stdin="from stdin\n")
            assert echoed.stdout == "from stdin\n"

    asyncio.run(main())


def test_first_use_pins_the_key_and_a_different_key_is_refused(
    ssh_target: SshTarget, ssh_options: SshOptions, sshd: Sshd
) -> None:
    async def main() -> None:
        unpinned = dataclasses.replace(ssh_target, host_key=None)
        async with await connect(unpinned, ssh_options) as session:
            assert session.host_key == sshd.host_public_key
        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        with pytest.raises(HostKeyMismatch, match="differs from the pinned"):
            await connect(dataclasses.replace(ssh_target, host_key=other), ssh_options)

    asyncio.run(main())


def test_lines_stream_as_they_are_produced(ssh_target: SshTarget, ssh_options: SshOptions) -> None:
    async def main() -> None:
        async with await connect(ssh_target, ssh_options) as session:
            arrivals = []
            started = time.monotonic()
            async for line in session.lines(
                "for i in 1 2 3; do echo line$i; sleep 0.3; done", deadline_s=10
            ):
                arrivals.append((line, time.monotonic() - started))
            assert [line for line, _ in arrivals] == [b"line1\n", b"line2\n", b"line3\n"]
            assert arrivals[0][1] < 0.25 < arrivals[1][1]
            with pytest.raises(CommandFailed, match="nope"):
                async for _ in session.lines("echo a; echo nope >&2; exit 1", deadline_s=10):
                    pass
            with pytest.raises(CommandTimeout):
                async for _ in session.lines("echo a; sleep 20", deadline_s=0.5):
                    pass

    asyncio.run(main())


def test_upload_and_atomic_write(
    ssh_target: SshTarget, ssh_options: SshOptions, agent_root: Path, tmp_path: Path
) -> None:
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for index, path in enumerate(files):
        path.write_bytes(bytes([index]) * 100_000)

    async def main() -> None:
        async with await connect(ssh_target, ssh_options) as session:
            await session.upload(files, f"{agent_root}/in/deep")
            await session.write_file(f"{agent_root}/secret.json", b'{"k": 1}', mode=0o600)
            assert await session.read_file(f"{agent_root}/secret.json", 100) == b'{"k": 1}'
            assert await session.read_file(f"{agent_root}/absent", 100) is None

    asyncio.run(main())
    for path in files:
        assert (agent_root / "in/deep" / path.name).read_bytes() == path.read_bytes()
    assert (agent_root / "secret.json").stat().st_mode & 0o777 == 0o600
    assert not (agent_root / "secret.json.tmp").exists()


def test_a_cut_connection_raises_disconnected(sshd: Sshd, ssh_options: SshOptions) -> None:
    async def main() -> None:
        async with CutProxy(sshd.port) as proxy:
            target = SshTarget("127.0.0.1", proxy.port, sshd.user, sshd.host_public_key)
            session = await connect(target, ssh_options)
            got = []

            async def consume() -> None:
                async for line in session.lines("echo first; sleep 30", deadline_s=20):
                    got.append(line)
                    proxy.cut()

            with pytest.raises(SshDisconnected):
                await consume()
            assert got == [b"first\n"]
            await session.close()

    asyncio.run(main())
