"""What the status server may read of a running daemon: a read-only view narrower than `Daemon`.

The web server, the API views, the metrics and the health check run in the daemon's event loop
and answer anyone who asks. They take this Protocol instead of the daemon itself, so what a
request can reach is written down here (the loop's state and clocks, the pods' spend, the
chain's head) and the wallet, the round runner and the object store are out of its reach.
`Daemon` satisfies it structurally; a test may pass any object of this shape.
"""

from __future__ import annotations

from typing import Protocol

from cacheon.arena import ArenaParams
from cacheon.config import Settings
from cacheon.pods.ledger import Lease
from cacheon.protocol import Block
from cacheon.validator.state import ValidatorState


class ChainHead(Protocol):
    async def head(self) -> Block:
        """The chain's head block now (the health probe's question)."""
        ...


class LiveLeases(Protocol):
    def live(self) -> list[Lease]:
        """Pods leased now."""
        ...


class PodSpend(Protocol):
    @property
    def ledger(self) -> LiveLeases: ...

    def spent_today(self) -> float:
        """Pod spend since 00:00 UTC, in dollars."""
        ...


class ViewedParts(Protocol):
    """Of the daemon's collaborators, the two a status request reads."""

    @property
    def chain(self) -> ChainHead: ...

    @property
    def leases(self) -> PodSpend: ...


class PollClock(Protocol):
    @property
    def last_block(self) -> int:
        """The block of the loop's last poll; -1 before the first."""
        ...


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class DaemonView(Protocol):
    """A running daemon as the status server, metrics, health and leaderboard see it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def state(self) -> ValidatorState: ...

    @property
    def params(self) -> ArenaParams: ...

    @property
    def version(self) -> str:
        """The evaluation version verdicts are keyed by."""
        ...

    @property
    def hotkey(self) -> str: ...

    @property
    def loop_alive_at(self) -> float:
        """Unix time the loop last completed a pass; 0 before the first."""
        ...

    @property
    def watchdog(self) -> PollClock: ...

    @property
    def stopping(self) -> StopFlag: ...

    @property
    def parts(self) -> ViewedParts: ...
