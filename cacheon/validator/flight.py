"""The rounds in flight: up to `pods.max_parallel` at once, each on its own pod (DESIGN.md §3).

A round never spans pods (launches on different machines are not comparable), so parallel
rounds each carry their own bookends; a challenger is in at most one of them. Rounds finish in
any order and are scored one at a time, in the order they finish (`scoring`), so one decision is
persisted, and paid, once. Stopping gives the rounds in flight a grace period, then cancels them
(each then decides for itself whether it is left to resume or ends as NO_DECISION).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from cacheon.log import get_logger
from cacheon.protocol import Digest, Hotkey

log = get_logger("cacheon.validator.flight")


@dataclass(frozen=True)
class InFlight:
    round_id: str
    challengers: frozenset[tuple[Hotkey, Digest]]
    task: asyncio.Task[None]


class Flight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.scoring = asyncio.Lock()
        """Held while a finished round is scored and persisted."""
        self._rounds: dict[str, InFlight] = {}

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self._rounds))

    @property
    def rounds(self) -> tuple[str, ...]:
        return tuple(self._rounds)

    def busy(self) -> frozenset[tuple[Hotkey, Digest]]:
        """The submissions some round in flight is measuring."""
        return frozenset(pair for flying in self._rounds.values() for pair in flying.challengers)

    def flying(self, round_id: str) -> bool:
        return round_id in self._rounds

    def start(
        self,
        round_id: str,
        challengers: Iterable[tuple[Hotkey, Digest]],
        work: Coroutine[Any, Any, None],
    ) -> None:
        task = asyncio.create_task(work, name=f"round {round_id}")
        self._rounds[round_id] = InFlight(round_id, frozenset(challengers), task)
        task.add_done_callback(lambda done: self._landed(round_id, done))

    def _landed(self, round_id: str, task: asyncio.Task[None]) -> None:
        self._rounds.pop(round_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("round task failed", round_id=round_id, reason=f"{type(exc).__name__}: {exc}")

    async def wait(self) -> None:
        """Until every round in flight has been concluded."""
        while self._rounds:
            await asyncio.wait({flying.task for flying in self._rounds.values()})

    async def stop(self, grace_s: float) -> None:
        """Give the rounds in flight `grace_s` to finish, then cancel the rest and wait."""
        tasks = {flying.task for flying in self._rounds.values()}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        if pending:
            log.warning("stop grace period over: cancelling rounds in flight", rounds=len(pending))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each round logged its own end
