"""Is the validator doing its job? The answer behind /healthz and the `up` metrics.

Healthy means two things at once: the loop completes passes (or is inside a round, which may
take hours without completing one), and the chain answers now. A process whose event loop still
serves HTTP while its main loop is wedged, or that cannot reach the chain to set weights, is not
healthy, whatever its HTTP server says. The chain probe has its own short deadline so that a
health check never waits out the client's read retries.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict

from cacheon.chain.errors import ChainFailure, ChainUnavailable
from cacheon.protocol import Block
from cacheon.validator.view import DaemonView

LOOP_GRACE_S = 300.0
"""Beyond the poll interval, how long one pass may take (weights wait for inclusion, pods
release) before the loop counts as stalled."""
ROUND_GRACE_S = 1800.0
"""Beyond the round deadline, how long a round may run (reading and scoring its report)."""
CHAIN_PROBE_S = 5.0


class Health(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    loop_alive: bool
    chain_reachable: bool
    head: int | None
    """The chain's head block now; None when it did not answer."""
    problems: tuple[str, ...]


async def probe_chain(daemon: DaemonView) -> tuple[Block | None, str | None]:
    """The chain's head block, or why it could not be read within `CHAIN_PROBE_S`."""
    try:
        async with asyncio.timeout(CHAIN_PROBE_S):
            return await daemon.parts.chain.head(), None
    except TimeoutError:
        return None, f"the chain did not answer within {CHAIN_PROBE_S:g}s"
    except (ChainUnavailable, ChainFailure) as exc:
        return None, str(exc)


def loop_problem(daemon: DaemonView, now: float | None = None) -> str | None:
    """Why the main loop does not count as alive, or None when it does."""
    now = time.time() if now is None else now
    if daemon.stopping.is_set():
        return "the validator is stopping"
    if _round_running(daemon, now):
        return None
    if not daemon.loop_alive_at:
        return "the loop has not completed a pass yet"
    age = now - daemon.loop_alive_at
    limit = daemon.settings.validator.poll_interval_s + LOOP_GRACE_S
    if age > limit:
        return f"the loop completed no pass for {age:.0f}s (limit {limit:.0f}s)"
    return None


async def check(daemon: DaemonView) -> Health:
    head, chain_problem = await probe_chain(daemon)
    loop = loop_problem(daemon)
    problems = tuple(p for p in (loop, chain_problem) if p is not None)
    return Health(
        ok=not problems,
        loop_alive=loop is None,
        chain_reachable=chain_problem is None,
        head=head,
        problems=problems,
    )


def _round_running(daemon: DaemonView, now: float) -> bool:
    limit = daemon.settings.workload.round_deadline_s + ROUND_GRACE_S
    return any(now - r.started_at <= limit for r in daemon.state.unfinished_rounds())
