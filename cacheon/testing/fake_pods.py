"""What the fake Targon and Lium servers share: fault injection, the pod target, a loop thread.

The fakes' pods are the test sshd (`cacheon.testing.services.Sshd`): a pod "runs" by letting the
renter's key in, and "dies" by taking it away. Faults are armed by tests and consumed by the
next requests, in the order the real APIs would show them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


@dataclass
class Faults:
    rate_limited: int = 0
    """The next N API requests answer 429 with `Retry-After: retry_after`."""
    retry_after: str = "1"
    server_errors: int = 0
    """The next N API requests answer 500."""
    lose_create_answer: bool = False
    """The next create makes the pod, then drops the connection without an answer."""
    stuck: bool = False
    """Pods never leave provisioning."""
    reject_key: bool = False
    """Every request is refused as if the API key were wrong."""
    polls_to_running: int = 2
    """State polls a pod spends provisioning before it runs."""


@dataclass
class PodHost:
    """Where the fakes' pods are: the test sshd, its user, and how to add a key to it."""

    host: str
    port: int
    user: str
    authorized_keys: Path
    client_key: Path
    known_hosts_line: str
    _holders: dict[str, int] = field(default_factory=dict)

    def grant(self, public_key: str) -> None:
        """Let `public_key` in (a pod installs its renter's key); counted per holder."""
        line = " ".join(public_key.split()[:2])
        self._holders[line] = self._holders.get(line, 0) + 1
        if self._holders[line] == 1:
            with self.authorized_keys.open("a") as handle:
                handle.write(line + "\n")

    def revoke(self, public_key: str) -> None:
        line = " ".join(public_key.split()[:2])
        if self._holders.get(line, 0) == 0:
            return
        self._holders[line] -= 1
        if self._holders[line] == 0:
            kept = [
                kept_line
                for kept_line in self.authorized_keys.read_text().splitlines()
                if kept_line.strip() != line
            ]
            self.authorized_keys.write_text("".join(f"{k}\n" for k in kept))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fault_middleware(
    faults: Faults,
    authorized: Callable[[web.Request], bool],
    error: Callable[[int, str, str], web.Response],
    log: list[tuple[str, str]],
) -> Any:
    """Record every request, then answer armed faults before the route runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        log.append((request.method, request.path))
        if faults.reject_key or not authorized(request):
            return error(401, "INVALID_API_KEY", "Invalid API key")
        if faults.rate_limited > 0:
            faults.rate_limited -= 1
            response = error(429, "RATE_LIMITED", "Too many requests")
            response.headers["Retry-After"] = faults.retry_after
            return response
        if faults.server_errors > 0:
            faults.server_errors -= 1
            return error(500, "INTERNAL", "Internal server error")
        return await handler(request)

    return middleware


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket so the client never sees an answer (the 'lost answer' fault)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


class LoopThread:
    """An event loop in a daemon thread, so fake servers keep serving while a test blocks
    (on a subprocess, or on its own `asyncio.run`)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1, port chosen by the kernel."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])
