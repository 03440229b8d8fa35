"""The SSH transport to a pod: pinned host keys, keepalive, commands with deadlines, line-streamed
output and file upload, all through asyncssh.

Host keys are pinned: a provider that publishes the pod's key gives it in the target; otherwise
the key seen on first contact is returned in `SshSession.host_key` for the caller to record in
the lease, and every later connection must present the same key (trust on first use, then
enforced). A dropped connection surfaces as `SshDisconnected`, so a caller can reconnect and
reattach to the agent, which keeps running on the pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncssh
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cacheon.sshtarget import SshTarget

CONNECT_ATTEMPTS = 4
_R = TypeVar("_R")
KEEPALIVE_COUNT_MAX = 3


class SshError(Exception):
    """Base of every SSH failure; the message says what happened and where."""


class HostKeyMismatch(SshError):
    """The pod presented a host key other than the pinned one: possibly not our pod."""


class PodGone(SshError):
    """The provider says the pod no longer runs: reconnecting is pointless."""


class SshUnreachable(SshError):
    """No connection could be made (refused, timed out, auth failed) after the retries."""


class SshDisconnected(SshError):
    """An established connection dropped; the remote process may still be running."""


class CommandTimeout(SshError):
    """A remote command ran past its deadline and was abandoned."""


class CommandFailed(SshError):
    """A remote command exited non-zero; `result` holds its output."""

    def __init__(self, command: str, result: CommandResult) -> None:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        super().__init__(f"`{command}` exited {result.exit_status}: {tail}")
        self.result = result


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SshOptions:
    client_key: Path
    connect_timeout_s: float = 30.0
    keepalive_s: float = 15.0


def _known_hosts(target: SshTarget, key: str) -> asyncssh.SSHKnownHosts:
    pattern = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    return asyncssh.import_known_hosts(f"{pattern} {key}\n")


def _key_line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key().decode().split()[:2])


async def connect(target: SshTarget, options: SshOptions) -> SshSession:
    """Connect with retries for transient failures; never retries a host key mismatch."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((OSError, asyncssh.ConnectionLost, TimeoutError)),
        stop=stop_after_attempt(CONNECT_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=10),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await _connect_once(target, options)
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyMismatch(
            f"{target}: the host key differs from the pinned one; refusing to connect"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise SshUnreachable(f"{target}: {type(exc).__name__}: {exc}") from None
    raise AssertionError("unreachable: tenacity re-raises on the last attempt")


async def _connect_once(target: SshTarget, options: SshOptions) -> SshSession:
    host_key = target.host_key
    if host_key is None:
        seen = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port),
            timeout=options.connect_timeout_s,
        )
        if seen is None:
            raise SshUnreachable(f"{target}: the server offered no host key")
        host_key = _key_line(seen)
    conn = await asyncssh.connect(
        target.host,
        target.port,
        username=target.user,
        client_keys=[str(options.client_key)],
        known_hosts=_known_hosts(target, host_key),
        agent_path=None,
        config=None,
        connect_timeout=options.connect_timeout_s,
        keepalive_interval=options.keepalive_s,
        keepalive_count_max=KEEPALIVE_COUNT_MAX,
    )
    return SshSession(conn, target, host_key)


class SshSession:
    """One connection to a pod. Methods raise `SshDisconnected` when the connection drops."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: SshTarget, host_key: str):
        self._conn = conn
        self.target = target
        self.host_key = host_key
        """The pinned key; record it in the lease when the target had none."""

    async def close(self) -> None:
        self._conn.close()
        await self._conn.wait_closed()

    async def __aenter__(self) -> SshSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(
        self, command: str, *, deadline_s: float, stdin: str | None = None, check: bool = True
    ) -> CommandResult:
        """Run `command` to completion within `deadline_s` seconds."""
        with _Translate(command):
            try:
                done = await self._conn.run(command, input=stdin, timeout=deadline_s, check=False)
            except asyncssh.TimeoutError:
                raise CommandTimeout(
                    f"`{command}` ran past {deadline_s:.0f}s on {self.target}"
                ) from None
        if done.exit_status is None:
            raise SshDisconnected(f"{self.target}: the connection dropped during `{command}`")
        result = CommandResult(done.exit_status, _text(done.stdout), _text(done.stderr))
        if check and result.exit_status != 0:
            raise CommandFailed(command, result)
        return result

    async def lines(self, command: str, *, deadline_s: float) -> AsyncIterator[bytes]:
        """Yield stdout lines (bytes, newline kept) as they arrive, for at most `deadline_s`.
        A command that ends non-zero raises CommandFailed with its stderr; a dropped connection
        raises SshDisconnected."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s

        async def within(step: Awaitable[_R]) -> _R:
            try:
                return await asyncio.wait_for(step, max(0.0, end - loop.time()))
            except TimeoutError:
                raise CommandTimeout(f"`{command}` ran past {deadline_s:.0f}s") from None

        with _Translate(command):
            process = await within(self._conn.create_process(command, encoding=None))
            async with _closing(process):
                while line := await within(process.stdout.readline()):
                    yield line
                stderr = await within(process.stderr.read())
                done = await within(process.wait())
        if done.exit_status is None:
            raise SshDisconnected(f"{self.target}: the connection dropped during `{command}`")
        if done.exit_status != 0:
            raise CommandFailed(command, CommandResult(done.exit_status, "", _text(stderr)))

    async def upload(self, local: list[Path], remote_dir: str) -> None:
        """Copy files into `remote_dir` (created if needed) over SFTP."""
        with _Translate(f"sftp put {remote_dir}"):
            async with self._conn.start_sftp_client() as sftp:
                await sftp.makedirs(remote_dir, exist_ok=True)
                await sftp.put([str(path) for path in local], remote_dir)

    async def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write a file atomically (temp name, then rename) with `mode` set before any data."""
        tmp = f"{path}.tmp"
        with _Translate(f"sftp write {path}"):
            async with self._conn.start_sftp_client() as sftp:
                async with sftp.open(
                    tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode)
                ) as handle:
                    await handle.write(data)
                await sftp.posix_rename(tmp, path)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        """A small remote file's content, or None when it does not exist."""
        with _Translate(f"sftp read {path}"):
            async with self._conn.start_sftp_client() as sftp:
                try:
                    async with sftp.open(path, "rb") as handle:
                        data: bytes = await handle.read(max_bytes)
                        return data
                except asyncssh.SFTPNoSuchFile:
                    return None


class _Translate:
    """Maps asyncssh's connection errors onto SshDisconnected, naming what was running."""

    def __init__(self, command: str) -> None:
        self._command = command

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if isinstance(exc, asyncssh.ConnectionLost | asyncssh.DisconnectError | BrokenPipeError):
            raise SshDisconnected(f"connection dropped during `{self._command}`: {exc}") from None
        if isinstance(exc, asyncssh.ChannelOpenError):
            raise SshDisconnected(f"cannot open a channel for `{self._command}`: {exc}") from None


@asynccontextmanager
async def _closing(process: asyncssh.SSHClientProcess[bytes]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        process.close()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value or "")
