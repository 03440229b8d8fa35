"""A block whose client saturated on streams within the limits is measured again over more
workers, at most twice; one whose stream broke the limits is never re-measured (it failed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from cacheon.agent.loadgen import BlockResult, ClientLoad, LoadGenerator, Measured
from cacheon.agent.remeasure import MAX_REMEASURES, measure_block
from cacheon.agent.workload import Prompt
from cacheon.protocol import ReasonCode

BUSY = ClientLoad(cpu_share=0.99, lag_p50_ns=0, lag_p99_ns=0, lag_max_ns=0)
IDLE = ClientLoad(cpu_share=0.1, lag_p50_ns=0, lag_p99_ns=0, lag_max_ns=0)
PROMPTS = tuple(Prompt((("user", f"p{i}"),), 8, i) for i in range(64))
FAULT = Measured(0, 0, None, ReasonCode.BAD_RESPONSE, "the stream exceeds the contract's limits")


@dataclass
class FakeLoad:
    """A load generator whose blocks saturate the first `busy` times they run."""

    workers: int
    log: list[int]
    """The shards of every block run, in order, across every fake of one test."""
    busy: int
    fault: bool = False

    async def run_block(
        self, prompts: object, concurrency: int, *, shards: int | None = None
    ) -> BlockResult:
        self.log.append(shards or self.workers)
        client = BUSY if len(self.log) <= self.busy else IDLE
        measured = (FAULT,) if self.fault else ()
        return BlockResult(measured, (client,))


def _measure(busy: int, concurrency: int, *, fault: bool = False, cores: int = 16) -> Any:
    log: list[int] = []
    first = FakeLoad(1, log, busy, fault)

    def more(count: int) -> AbstractAsyncContextManager[LoadGenerator]:
        @asynccontextmanager
        async def fresh() -> AsyncIterator[LoadGenerator]:
            yield cast(LoadGenerator, FakeLoad(count, log, busy))

        return fresh()

    load = cast(LoadGenerator, first)
    done = asyncio.run(measure_block(load, PROMPTS, concurrency, more_workers=more, cores=cores))
    return done, log


def test_a_block_measured_cleanly_is_not_measured_again() -> None:
    done, log = _measure(busy=0, concurrency=64)
    assert (done.remeasured, log) == (0, [1])
    assert not done.result.saturated


def test_a_saturated_block_is_measured_again_over_twice_the_workers() -> None:
    done, log = _measure(busy=1, concurrency=64)
    assert (done.remeasured, log) == (1, [1, 2])
    assert not done.result.saturated


def test_a_block_that_keeps_saturating_is_reported_saturated_after_the_last_try() -> None:
    done, log = _measure(busy=10, concurrency=64, cores=3)
    assert done.remeasured == MAX_REMEASURES
    assert log == [1, 2, 3]  # doubled, then as many as the host has cores
    assert done.result.saturated


def test_a_single_stream_is_measured_again_on_one_worker() -> None:
    done, log = _measure(busy=10, concurrency=1)
    assert log == [1, 1, 1]
    assert done.remeasured == MAX_REMEASURES


def test_a_block_that_faulted_is_the_contestants_and_not_measured_again() -> None:
    done, log = _measure(busy=10, concurrency=64, fault=True)
    assert (done.remeasured, log) == (0, [1])
    assert done.result.fault is FAULT
