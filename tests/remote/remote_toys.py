"""Helpers shared by the remote tests: a relay that can cut connections mid-command, a hub-like
file server, and a probe job, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading

from cacheon.protocol import JobKind, JobSpec, UploadSlot
from cacheon.testing.services import LOOPBACK


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


def probe_spec(round_id: str, slots: tuple[UploadSlot, ...], seconds: float) -> JobSpec:
    """A probe job: the agent samples the pod for `seconds` and uploads to `slots`."""
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
