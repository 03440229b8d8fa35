"""A chain client whose calls fail as a flaky node's do, for the reliability bench.

It is the real `ChainClient` over the devnet with faults injected where the client meets the
SDK (a dead primary endpoint, a node that is down or slow, RPC errors), so the client's own
reconnects, deadlines and error mapping are what a trial exercises. It lives in `chain/`, beside
the devnet, because injecting there takes the SDK's client and error types, and the SDK is
imported nowhere else (DESIGN.md §2); only `cacheon.testing` uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import bittensor as bt
from bittensor.result import ChainError

from cacheon.chain.client import ChainClient
from cacheon.config import ChainSettings

T = TypeVar("T")


@dataclass
class ChainFaults:
    down: bool = False
    """Every call fails as an unreachable node does."""
    delay_s: float = 0.0
    """Added inside each call's deadline (a slow node; past the deadline, a timeout)."""
    errors: int = 0
    """The next N calls fail with an RPC error from the node."""
    dead_connects: int = 0
    """The next N connections fail: a dead primary endpoint the client must fall back from."""
    failures: int = 0
    connects: list[str] = field(default_factory=list)


class FlakyChain(ChainClient):
    """The real chain client over the devnet, with `faults` injected at the SDK seam."""

    def __init__(self, settings: ChainSettings, faults: ChainFaults) -> None:
        super().__init__(settings)
        self.faults = faults

    async def _connected(self) -> bt.Client:
        faults = self.faults
        if self._client is None and faults.dead_connects > 0:
            faults.dead_connects -= 1
            faults.failures += 1
            faults.connects.append("primary (dead)")
            raise self._unavailable(ConnectionRefusedError("primary endpoint refused"))
        if self._client is None:
            faults.connects.append("fallback" if faults.connects else "primary")
        return await super()._connected()

    async def _once(self, op: Callable[[bt.Client], Awaitable[T]], deadline_s: float) -> T:
        faults = self.faults
        if faults.down:
            faults.failures += 1
            await self.close()
            raise self._unavailable(ConnectionRefusedError("injected: the node is down"))

        async def flaky(client: bt.Client) -> T:
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if faults.errors > 0:
                faults.errors -= 1
                faults.failures += 1
                raise ChainError("injected: Internal error (-32603)", "RpcError")
            return await op(client)

        return await super()._once(flaky, deadline_s)
