"""Continuous batching: the scheduler between the HTTP handlers and the model runner.

One forward per decode step for every active sequence; a new request is prefilled on its own and
joins at the next step. The engine runs on a thread beside the aiohttp event loop, as in a
one-process server, and hands each step's tokens to the loop stamped with the time the engine
had them on the host, so the server's own queueing is visible apart from the network and the
client.

A known slowdown (`slowdown` s, for the arena's known-effect check) stretches every engine
operation, prefill or decode step, to exactly (1 + s) times its own duration before its tokens
are handed over, so the whole server runs as a time-scaled copy of itself: its clients, in a
closed loop, come back (1 + s) times later too, and every time-to-token scales. Two ways that
were tried first are not exact:
- a `time.sleep` of s times each step overshoots by the sleep's wake-up error (tens of us a
  step, about 1.5% of a 4 ms step: a nominal x1.03 measured x1.049 on the H200); here the wait
  aims early by the wake-up error measured so far, so it is right on average, and what was
  actually added is counted;
- dilating each request's token writes relative to its arrival was exact as applied (x1.0300
  from the server's clock) but the engine under it ran 3.5% faster on the H200 (its handlers'
  writes moved off the scheduler's critical path), leaving C/L at 0.995: the effect was not
  the one applied.
The engine keeps a natural clock, perf_counter_ns less every wait it added, and stamps each
token with both, so the slowdown actually applied is measured per request from the server's own
clock and the natural speed of a slowed server can be compared with an unslowed one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .runner import Top
from .tokens import BYTE_OFFSET


class ModelRunner(Protocol):
    """What the engine asks of a model: sequences live in slots 0..n-1 of a KV cache of
    `context` positions each; a step returns, per sequence, the greedy choice first among the
    top ids and their logprobs."""

    @property
    def context(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def prefill_top(self, slot: int, tokens: list[int]) -> Top: ...

    def decode_top(self, tokens: list[int], positions: list[int]) -> Top: ...

    def move(self, source: int, target: int, length: int) -> None: ...


@dataclass(frozen=True)
class TokenOut:
    token: int
    top: tuple[list[int], list[float]]
    """The top 5 ids, the greedy choice first, and their logprobs."""
    finish: str | None
    gen_ns: int
    """perf_counter_ns when the engine had the token on the host (after any stretch)."""
    natural_ns: int
    """The same moment on the engine's natural clock: `gen_ns` less every wait added so far."""


@dataclass
class Sequence:
    """One request inside the engine. `queue` receives its tokens on the event loop."""

    prompt: list[int]
    max_tokens: int
    queue: asyncio.Queue[TokenOut]
    generated: int = 0
    cached: int = 0
    last: int = 0
    cancelled: bool = False


@dataclass
class Engine:
    """Continuous batching on one thread: prefill newcomers one at a time, then one decode
    forward for all active sequences, repeat. Tokens reach the event loop with one
    `call_soon_threadsafe` per step, not per token."""

    runner: ModelRunner
    loop: asyncio.AbstractEventLoop
    eos: int
    slowdown: float = 0.0
    pending: queue.Queue[Sequence] = field(default_factory=queue.Queue)
    active: list[Sequence] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    added_ns: int = 0
    """Every wait the slowdown added so far: perf_counter_ns less this is the natural clock."""
    _early_ns: float = 0.0
    """How early a wait aims: the mean wake-up error seen so far (exponentially weighted)."""

    def _stretch(self, started_ns: int) -> int:
        """Wait until the operation begun at `started_ns` has taken (1 + slowdown) times what it
        took; the time it ends, on both clocks."""
        now = time.perf_counter_ns()
        if not self.slowdown:
            return now
        due = now + round((now - started_ns) * self.slowdown)
        if (wait := due - now - self._early_ns) > 0:
            time.sleep(wait / 1e9)
        end = time.perf_counter_ns()
        self._early_ns += (end - due) / 16
        self.added_ns += end - now
        return end

    def submit(self, seq: Sequence) -> None:
        limit = self.runner.context - seq.max_tokens
        seq.prompt = seq.prompt[-limit:]  # keep the tail: the template's assistant header
        self.pending.put(seq)

    def run(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException:  # a dead engine must not leave a server that looks alive
            if self.stopping.is_set():
                return  # the event loop closed under a last step: shutting down anyway
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(70)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            while len(self.active) < self.runner.slots:
                try:
                    self._prefill(self.pending.get_nowait())
                except queue.Empty:
                    break
            if not self.active:
                with contextlib.suppress(queue.Empty):
                    self._prefill(self.pending.get(timeout=0.05))
                continue
            self._decode()

    def _emit(self, out: list[tuple[Sequence, TokenOut]]) -> None:
        self.loop.call_soon_threadsafe(_deliver, out)

    def _finish(self, seq: Sequence, token: int) -> str | None:
        if token == self.eos:
            return "stop"
        if seq.generated >= seq.max_tokens or seq.cached >= self.runner.context:
            return "length"
        return None

    def _prefill(self, seq: Sequence) -> None:
        if seq.cancelled:
            return
        slot = len(self.active)
        started = time.perf_counter_ns()
        (top,) = self.runner.prefill_top(slot, seq.prompt)
        now = self._stretch(started)
        seq.cached, seq.last, seq.generated = len(seq.prompt), top[0][0], 1
        finish = self._finish(seq, seq.last)
        self._emit([(seq, TokenOut(seq.last, top, finish, now, now - self.added_ns))])
        if finish is None:
            self.active.append(seq)

    def _decode(self) -> None:
        started = time.perf_counter_ns()
        active = self.active
        tops = self.runner.decode_top([s.last for s in active], [s.cached for s in active])
        now = self._stretch(started)
        natural = now - self.added_ns
        out, done = [], []
        for slot, (seq, top) in enumerate(zip(active, tops, strict=True)):
            seq.cached += 1
            seq.generated += 1
            seq.last = top[0][0]
            finish = self._finish(seq, seq.last)
            out.append((seq, TokenOut(seq.last, top, finish, now, natural)))
            if finish is not None or seq.cancelled:
                done.append(slot)
        self._emit(out)
        for slot in reversed(done):  # highest first, so the last slot is never a finished one
            last = len(active) - 1
            if slot != last:
                self.runner.move(last, slot, active[last].cached)
                active[slot] = active[last]
            active.pop()


def _deliver(out: list[tuple[Sequence, TokenOut]]) -> None:
    for seq, token in out:
        seq.queue.put_nowait(token)


async def warm_up(engine: Engine) -> None:
    """Compile-free warm-up: a long prefill and decode steps at batch sizes up to 64, so the
    first measured requests meet initialised kernels and allocator pools."""
    byte_ids = list(range(BYTE_OFFSET, BYTE_OFFSET + 256))
    seqs = [
        Sequence((byte_ids * (1 + n // 256))[:n], 16, asyncio.Queue()) for n in [2000, *([48] * 63)]
    ]
    for seq in seqs:
        engine.submit(seq)
    for seq in seqs:
        while (await seq.queue.get()).finish is None:
            pass
