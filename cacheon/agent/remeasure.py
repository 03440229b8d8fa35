"""A block measured while the client saturated is measured again, over more worker processes.

Whose fault a saturated client is decides who pays for it (DESIGN.md §3). A stream that costs
more than the contract allows never gets here: the framer fails it with the contestant's
`bad_response` (`framing`). So a block that saturated a load worker while every one of its
streams kept the limits saturated it by the validator's own doing (too few workers for the
load, or a busy host), and dropping it would drop it for every contestant of the round: the
agent measures it again instead, sharded over twice as many processes each time (as far as the
level's streams and this host's cores allow), at most `MAX_REMEASURES` times, and only then
reports it saturated, for the arena to drop it for everyone as before. The report counts the
attempts (`LevelMeasurement.remeasured`).

The second measurement sends the same prompts, so the server may find them in its prefix cache
and skip their prefill: the re-measured block can be faster than the first. That is accepted,
not avoided, because the alternatives are worse: fresh prompts would make a block no other
contestant measured, which the arena must drop for everyone (the outcome to avoid), and flushing
a server's cache is not in the contract. The gain is bounded (prefill only; every token is
decoded again), it goes to a contestant that did nothing to earn a re-measure (the limits keep
the costliest stream they allow well inside a worker's capacity, `bench/stream_cost.py`), and
every re-measured block is marked in the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final

from cacheon.agent.loadgen import BlockResult, LoadGenerator, workers_for
from cacheon.agent.workload import Prompt
from cacheon.log import get_logger

MAX_REMEASURES: Final = 2
"""Further attempts at a block whose client saturated, before it is reported saturated."""

log = get_logger(__name__)

Workers = Callable[[int], AbstractAsyncContextManager[LoadGenerator]]
"""A fresh load generator of the given number of worker processes, bound to the same server."""


@dataclass(frozen=True)
class Measurement:
    result: BlockResult
    """The last attempt's: its responses are the block's, its client load says whether it
    still saturated."""
    remeasured: int = 0


def core_count() -> int:
    """The cores this process may run on: the most worker processes that can each have one."""
    return len(os.sched_getaffinity(0))


async def measure_block(
    load: LoadGenerator,
    prompts: Sequence[Prompt],
    concurrency: int,
    *,
    more_workers: Workers,
    cores: int,
) -> Measurement:
    """Measure one block; measure it again while the client saturated on well-behaved streams."""
    result = await load.run_block(prompts, concurrency)
    shards = min(load.workers, workers_for(concurrency))
    tries = 0
    while result.saturated and result.fault is None and tries < MAX_REMEASURES:
        tries += 1
        shards = max(1, min(2 * shards, concurrency, len(prompts), cores))
        log.warning(
            "the client saturated on streams within the limits: measuring the block again",
            concurrency=concurrency,
            attempt=tries,
            workers=shards,
            cpu_share=round(max(c.cpu_share for c in result.clients), 3),
        )
        async with more_workers(shards) as fresh:
            result = await fresh.run_block(prompts, concurrency, shards=shards)
    return Measurement(result, tries)
