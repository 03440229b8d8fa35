"""Fault injectors that sit between the daemon and the real services of a local arena.

A TCP proxy in front of the pod's sshd (cut every connection, or refuse new ones), an HTTP proxy
in front of S3 (down, slow, 500s, expired presigned URLs), and a small tmpfs for the state
directory that can be filled to the last byte. The flaky chain client is `chain/flaky.py` (it
injects at the SDK seam, and the SDK stays inside `chain/`). Each is armed and lifted by a trial
while the daemon runs; none changes the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from cacheon.testing.fake_pods import LOOPBACK, serve

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "expect", "content-length"})


class TcpProxy:
    """Bytes both ways between 127.0.0.1:`port` and 127.0.0.1:`upstream`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.refuse = False
        """New connections are closed at once (the host is unreachable)."""
        self.connections = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def cut(self) -> int:
        """Abort every open connection, as a dropped link does; returns how many."""
        writers, self._open = self._open, set()
        for writer in writers:
            writer.transport.abort()
        return len(writers) // 2

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._open -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


@dataclass
class S3Faults:
    down: bool = False
    """Every request gets its connection dropped."""
    delay_s: float = 0.0
    """Added before each request is forwarded."""
    errors: int = 0
    """The next N requests answer 500 InternalError."""
    expired: int = 0
    """The next N presigned requests answer 403: Request has expired."""
    requests: int = 0


class S3Proxy:
    """An HTTP proxy in front of S3 that forwards requests verbatim (the Host header too, so
    signatures still verify) unless a fault answers first."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = S3Faults()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        faults.requests += 1
        if faults.down:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.errors > 0:
            faults.errors -= 1
            return _s3_error(500, "InternalError", "We encountered an internal error.")
        if faults.expired > 0 and "X-Amz-Signature" in request.query:
            faults.expired -= 1
            return _s3_error(403, "AccessDenied", "Request has expired")
        if self._session is None:
            return _s3_error(503, "ServiceUnavailable", "the proxy is not started")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":
                length = upstream.headers.get("Content-Length", "0")
                response = web.Response(status=upstream.status, headers=kept)
                response.content_length = int(length)
                return response
            return web.Response(status=upstream.status, headers=kept, body=body)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `path` (needs root), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem is full; returns the filler file."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler
