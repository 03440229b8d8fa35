"""The load generator: closed-loop streaming clients in worker processes, timed to the token.

The client must never be what is measured (DESIGN.md §4.3). So the hot path does the least it
can: one keep-alive aiohttp pool with no connection cap per worker process, one
`perf_counter_ns` stamp per socket read, SSE framing by byte search (`framing`), and nothing
else; JSON is parsed after the block (`response.parse`), where each stream is also held to the
contract's limits for the tokens it actually streamed and its token ids to the model's
vocabulary. Load is sharded over processes before one saturates, and each worker reports its
CPU share and event-loop lag for every block, so the round knows when a block was measured
while the client was saturated (it re-measures it, `remeasure`).

Workers join the server's network namespace (`setns`) before they open a socket: a contestant
runs with `--network none` and is reachable only on its own loopback (DESIGN.md §4.8). Every
response is bounded in time (`request_timeout_s`) and in what it may cost the client (events,
lines, reads and bytes: `framing`), so a hostile server ends in its own fault, never in a hang
or a saturated client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any, Final

import aiohttp

from cacheon.agent.framing import Framer, StreamStats
from cacheon.agent.response import Event, Response, ResponseFault, parse
from cacheon.agent.workload import Prompt, request_body
from cacheon.log import get_logger
from cacheon.protocol import ReasonCode

STREAMS_PER_WORKER: Final = 32
"""Concurrent streams one worker process takes before the load is sharded over another; one
process parses 50-90k events per CPU-second, far above 32 streams of a 72B model, even at the
four events a token the contract allows."""
LAG_TICK_NS: Final = 5_000_000
CLIENT_CPU_LIMIT: Final = 0.85
"""A worker busy this share of a block's wall time was saturated."""
CLIENT_LAG_P50_LIMIT_NS: Final = 2_000_000
"""A worker whose event loop woke this late half the time was queueing its own work. Rare
spikes (the p99, reported) come from a shared host as often as from the client."""
TIMER_SLACK_NS: Final = 1_000_000
"""epoll rounds timer waits up to whole milliseconds; that slack is not lag (reads wake at once)."""
START_MARGIN_NS: Final = 50_000_000
"""Workers receive a block this long before its common start, their barrier."""
CLONE_NEWNET: Final = 0x40000000

log = get_logger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a server listens and how to reach it."""

    base_url: str
    netns_pid: int | None = None
    """A process in the server's network namespace, which workers join; None: this namespace."""


@dataclass(frozen=True)
class Measured:
    """One request of a block: its response, or the fault that ended it."""

    index: int
    sent_ns: int
    response: Response | None
    reason: ReasonCode | None = None
    detail: str = ""
    stream: StreamStats | None = None
    """What its stream cost to frame (None: it never began)."""


@dataclass
class Framed:
    """One response as the hot path left it: its events, what framing them cost, its fault."""

    framer: Framer
    events: list[Event] = field(default_factory=list)
    fault: ResponseFault | None = None

    @property
    def stats(self) -> StreamStats:
        return self.framer.stats


@dataclass(frozen=True)
class ClientLoad:
    """How busy one worker was during a block."""

    cpu_share: float
    lag_p50_ns: int
    lag_p99_ns: int
    lag_max_ns: int
    cpu_ns: int = 0
    """CPU time the worker spent while the block streamed (the hot path)..."""
    parse_ns: int = 0
    """...and parsing its responses after it."""

    @property
    def saturated(self) -> bool:
        return self.cpu_share > CLIENT_CPU_LIMIT or self.lag_p50_ns > CLIENT_LAG_P50_LIMIT_NS


@dataclass(frozen=True)
class BlockResult:
    measured: tuple[Measured, ...]
    """One per prompt, in prompt order."""
    clients: tuple[ClientLoad, ...]

    @property
    def saturated(self) -> bool:
        return any(client.saturated for client in self.clients)

    @property
    def fault(self) -> Measured | None:
        """The first request that faulted, by send time."""
        faults = [m for m in self.measured if m.reason is not None]
        return min(faults, key=lambda m: m.sent_ns) if faults else None


def workers_for(concurrency: int) -> int:
    return max(1, math.ceil(concurrency / STREAMS_PER_WORKER))


class WorkerLost(Exception):
    """A worker process died or stopped answering; the measurement cannot be trusted."""


class LoadGenerator:
    """Worker processes bound to one server; an async context manager."""

    def __init__(
        self,
        target: Target,
        model: str,
        workers: int,
        request_timeout_s: float,
        *,
        vocab_size: int | None = None,
    ) -> None:
        """`vocab_size`: token ids must be below it (the model's `config.json`); None checks
        nothing (a bench's scripted server, whose ids are timestamps)."""
        self.target = target
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []
        for _ in range(workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(child_end, target, model, vocab_size),
                daemon=True,
                name="cacheon-load",
            )
            self._workers.append((process, parent_end))

    async def __aenter__(self) -> LoadGenerator:
        for process, _ in self._workers:
            process.start()
        for index in range(len(self._workers)):
            await self._call(index, ("ready",), timeout_s=60)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self._stop_all)

    def _stop_all(self) -> None:
        for _process, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for process, conn in self._workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            conn.close()

    async def _call(self, index: int, message: tuple[Any, ...], timeout_s: float) -> Any:
        process, conn = self._workers[index]

        def roundtrip() -> Any:
            conn.send(message)
            if not conn.poll(timeout_s):
                raise WorkerLost(f"load worker {index} did not answer within {timeout_s:.0f}s")
            return conn.recv()

        try:
            return await asyncio.to_thread(roundtrip)
        except (EOFError, OSError) as exc:
            raise WorkerLost(f"load worker {index} (pid {process.pid}) is gone: {exc}") from exc

    async def health(self, timeout_s: float = 2.0) -> int | None:
        """The status of one GET /health, or None when nothing answered."""
        status: int | None = await self._call(0, ("health", timeout_s), timeout_s + 10)
        return status

    async def run_block(
        self, prompts: Sequence[Prompt], concurrency: int, *, shards: int | None = None
    ) -> BlockResult:
        """Send `prompts` closed-loop at `concurrency`, all workers starting together, over
        `shards` worker processes (default `workers_for(concurrency)`; at most one a stream)."""
        wanted = workers_for(concurrency) if shards is None else shards
        used = min(len(self._workers), wanted, len(prompts), concurrency)
        start_at = time.perf_counter_ns() + START_MARGIN_NS
        bodies = [(i, request_body(p, self.model), p.max_tokens) for i, p in enumerate(prompts)]
        shares = [
            (
                start_at,
                bodies[worker::used],
                concurrency // used + (worker < concurrency % used),
                self.request_timeout_s,
            )
            for worker in range(used)
        ]
        timeout = self.request_timeout_s * math.ceil(len(prompts) / concurrency) + 60
        replies = await asyncio.gather(
            *(self._call(w, ("block", *shares[w]), timeout) for w in range(used))
        )
        measured = sorted((m for reply in replies for m in reply[0]), key=lambda m: m.index)
        return BlockResult(tuple(measured), tuple(reply[1] for reply in replies))


# --- inside a worker process ---------------------------------------------------------------------


def join_network_namespace(pid: int) -> None:
    """Move this process into the network namespace of `pid` (needs CAP_SYS_ADMIN).

    Python 3.11 has no `os.setns`, so libc's is called directly.
    """
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(
                errno, f"setns into the network namespace of pid {pid}: {os.strerror(errno)}"
            )
    finally:
        os.close(fd)


def _worker_main(conn: Connection, target: Target, model: str, vocab_size: int | None) -> None:
    if target.netns_pid is not None:
        join_network_namespace(target.netns_pid)
    gc.collect()
    gc.freeze()
    asyncio.run(_Worker(conn, target, model, vocab_size).serve())


class _Worker:
    def __init__(
        self, conn: Connection, target: Target, model: str, vocab_size: int | None
    ) -> None:
        self.conn = conn
        self.target = target
        self.model = model
        self.vocab_size = vocab_size
        self.url = target.base_url.rstrip("/") + "/v1/chat/completions"

    async def serve(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=600, ttl_dns_cache=None)
        sent_clock = aiohttp.TraceConfig()
        sent_clock.on_request_headers_sent.append(_stamp_sent)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trace_configs=[sent_clock],
        ) as session:
            while True:
                message = await asyncio.to_thread(self.conn.recv)
                if message[0] == "stop":
                    return
                if message[0] == "ready":
                    self.conn.send(True)
                elif message[0] == "health":
                    self.conn.send(await self._health(session, message[1]))
                else:
                    self.conn.send(await self._block(session, *message[1:]))

    async def _health(self, session: aiohttp.ClientSession, timeout_s: float) -> int | None:
        url = self.target.base_url.rstrip("/") + "/health"
        try:
            async with asyncio.timeout(timeout_s), session.get(url) as response:
                await response.read()
                return response.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def _block(
        self,
        session: aiohttp.ClientSession,
        start_at: int,
        bodies: list[tuple[int, bytes, int]],
        streams: int,
        timeout_s: float,
    ) -> tuple[list[Measured], ClientLoad]:
        queue = deque(bodies)
        raw: list[tuple[int, int, Framed, int]] = []
        tasks: list[asyncio.Task[None]] = []

        async def stream() -> None:
            while queue:
                index, body, max_tokens = queue.popleft()
                sent, framed = await self._request(session, body, max_tokens, timeout_s)
                raw.append((index, sent, framed, max_tokens))
                fault = framed.fault
                if fault is not None:  # the launch fails: do not wait out the other deadlines
                    queue.clear()
                    for task in tasks:
                        if task is not asyncio.current_task():
                            task.cancel()

        lags: list[int] = []
        monitor = asyncio.create_task(_lag_monitor(lags))
        await _sleep_until_ns(start_at)
        gc.disable()
        wall0, cpu0 = time.perf_counter_ns(), time.process_time_ns()
        tasks.extend(asyncio.create_task(stream()) for _ in range(streams))
        await asyncio.gather(*tasks, return_exceptions=True)
        wall, cpu = time.perf_counter_ns() - wall0, time.process_time_ns() - cpu0
        monitor.cancel()
        gc.enable()
        lags.sort()
        parsed = [self._parse(*item) for item in raw]
        load = ClientLoad(
            cpu_share=cpu / wall if wall else 0.0,
            lag_p50_ns=lags[len(lags) // 2] if lags else 0,
            lag_p99_ns=lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0,
            lag_max_ns=lags[-1] if lags else 0,
            cpu_ns=cpu,
            parse_ns=time.process_time_ns() - cpu0 - cpu,
        )
        return parsed, load

    def _parse(self, index: int, sent: int, framed: Framed, max_tokens: int) -> Measured:
        try:
            if framed.fault is not None:
                raise framed.fault
            response = parse(sent, framed.events, self.model, max_tokens, self.vocab_size)
            framed.stats.check(len(response.token_ids))
            return Measured(index, sent, response, stream=framed.stats)
        except ResponseFault as exc:
            return Measured(index, sent, None, exc.reason, exc.detail, framed.stats)

    async def _request(
        self, session: aiohttp.ClientSession, body: bytes, max_tokens: int, timeout_s: float
    ) -> tuple[int, Framed]:
        framed = Framed(Framer(max_tokens))
        # The clock starts when the request's bytes go out (§4.3), not while it waits for a
        # connection; the trace hook overwrites this stamp at that moment.
        stamp = {"sent": time.perf_counter_ns()}
        framed.fault = await self._exchange(session, body, timeout_s, framed=framed, stamp=stamp)
        return stamp["sent"], framed

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        body: bytes,
        timeout_s: float,
        *,
        framed: Framed,
        stamp: dict[str, int],
    ) -> ResponseFault | None:
        try:
            async with asyncio.timeout(timeout_s):
                async with session.post(
                    self.url,
                    data=body,
                    headers={"content-type": "application/json"},
                    trace_request_ctx=stamp,
                ) as response:
                    if response.status != 200:
                        text = (await response.content.read(300)).decode(errors="replace")
                        return ResponseFault(
                            ReasonCode.BAD_RESPONSE, f"HTTP {response.status}: {text}"
                        )
                    if response.content_type != "text/event-stream":
                        fault = ResponseFault(
                            ReasonCode.BAD_RESPONSE,
                            f"content-type {response.content_type!r}, not text/event-stream",
                        )
                        return fault
                    await _read_events(response, framed)
        except TimeoutError:
            fault = ResponseFault(
                ReasonCode.BAD_RESPONSE, f"no complete response within {timeout_s:g}s"
            )
            return fault
        except ResponseFault as exc:
            return exc
        except (aiohttp.ClientError, OSError) as exc:
            return ResponseFault(ReasonCode.BAD_RESPONSE, f"connection failed: {exc!r}"[:300])
        return None


async def _stamp_sent(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    if context.trace_request_ctx is not None:  # health checks carry no stamp
        context.trace_request_ctx["sent"] = time.perf_counter_ns()


async def _read_events(response: aiohttp.ClientResponse, framed: Framed) -> None:
    """Frame the SSE stream into `framed.events`, stamping each with the read that completed it."""
    async for chunk in response.content.iter_any():
        if framed.framer.feed(chunk, time.perf_counter_ns(), framed.events):
            return


async def _lag_monitor(lags: list[int]) -> None:
    """How late the event loop wakes for a timer: the delay every timestamp also suffers."""
    while True:
        before = time.perf_counter_ns()
        await asyncio.sleep(LAG_TICK_NS / 1e9)
        lags.append(max(0, time.perf_counter_ns() - before - LAG_TICK_NS - TIMER_SLACK_NS))


async def _sleep_until_ns(due: int) -> None:
    delay = due - time.perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
