"""Fixtures for the remote tests: SSH targets on the real sshd, a proxy that can cut
connections mid-command, and a fresh agent_root per test owned by the pod's user."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from cacheon.config import S3Settings
from cacheon.protocol import JobKind, JobSpec, UploadSlot
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


class CutProxy:
    """A TCP relay on loopback in front of a server; `cut()` drops every open connection, as a
    network failure would, while new connections keep working."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self._upstream_port)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def __aenter__(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
def cut_proxy() -> type[CutProxy]:
    """The proxy class; tests open it with `async with cut_proxy(port) as proxy`."""
    return CutProxy


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


class HubServer:
    """Serves files at `/<repo>/resolve/<revision>/<path>` on loopback and counts the GETs."""

    def __init__(self, repo: str, revision: str, files: dict[str, bytes]) -> None:
        routes = {f"/{repo}/resolve/{revision}/{path}": body for path, body in files.items()}
        self.gets: list[str] = []
        gets = self.gets

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gets.append(self.path)
                body = routes.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hub_server() -> type[HubServer]:
    """The hub-like file server class; open it with `with hub_server(repo, rev, files)`."""
    return HubServer


def probe_spec(round_id: str, slots: tuple[UploadSlot, ...], seconds: float) -> JobSpec:
    return JobSpec(
        kind=JobKind.PROBE,
        round_id=round_id,
        seed="00" * 32,
        served_model_name="tiny",
        model_path="/nonexistent",
        max_model_len=128,
        contestants=(),
        launch_order=(),
        uploads=slots,
        probe_seconds=seconds,
        round_deadline_s=120,
    )


@pytest.fixture
def probe_job() -> Callable[[str, tuple[UploadSlot, ...], float], JobSpec]:
    """Makes a probe JobSpec: (round id, upload slots, seconds to sample)."""
    return probe_spec
