"""Launch day on two pods (issue 20): two rounds at once, each on its own pod with its own
bookends, every challenger judged, the weights set once for both; a pod lost voids its round
only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cacheon.protocol import Outcome, ReasonCode, RoundReport
from cacheon.store.db import Database
from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import LocalArena, Services, start_more_pods
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon
from cacheon.validator.state import RoundRecord, RoundState
from cacheon.validator.views import status

CHALLENGERS = ("fast", "second", "slow", "cheat")


@pytest.fixture
def two_pods(
    tmp_path: Path,
    docker_daemon: DockerDaemon,
    registry: Registry,
    pod_sshd: Sshd,
    s3: SeaweedS3,
) -> Iterator[LocalArena]:
    with ExitStack() as stack:
        loop = LoopThread()
        stack.callback(loop.stop)
        more = start_more_pods(stack, docker_daemon, 1)
        services = Services(docker_daemon, registry, pod_sshd, s3, loop, more)
        arena = LocalArena.create(tmp_path, services, pods=2)
        stack.callback(arena.close)
        yield arena


def _daemon(arena: LocalArena) -> tuple[Daemon, Database]:
    # two challengers a round: four challengers make two rounds, one on each pod
    settings = arena.settings(arena={"max_challengers_per_round": 2})
    db = Database.open(state_path(settings))
    return Daemon(settings, build_parts(settings, db)), db


def _window(record: RoundRecord) -> tuple[int, int]:
    """The round's launches on the host's monotonic clock (both agents run on one host)."""
    assert record.report is not None
    report = RoundReport.model_validate_json(record.report)
    return (
        min(launch.started_ns for launch in report.launches),
        max(launch.ended_ns for launch in report.launches),
    )


def test_two_rounds_at_once_each_on_its_own_pod(two_pods: LocalArena) -> None:
    arena = two_pods
    arena.commit(*CHALLENGERS)
    daemon, db = _daemon(arena)
    try:

        async def one_pass() -> None:
            await daemon.parts.leases.start()
            await daemon.one_pass()
            await daemon.parts.leases.close()
            await daemon.parts.chain.close()

        asyncio.run(one_pass())
        rounds = daemon.state.rounds()
        assert len(rounds) == 2
        assert {r.state for r in rounds} == {RoundState.SCORED}
        assert len({r.pod for r in rounds}) == 2  # one pod each
        (a_start, a_end), (b_start, b_end) = (_window(r) for r in rounds)
        assert a_start < b_end
        assert b_start < a_end
        latest = {}
        for v in reversed(daemon.state.verdicts()):
            latest[arena.name_of(v.hotkey)] = (v.outcome, v.reason)
        assert set(CHALLENGERS) <= set(latest)
        assert latest["cheat"] == (Outcome.FAIL, ReasonCode.CONFORMANCE)
        assert latest["slow"][0] is Outcome.PASS
        _, standings = daemon.state.standings()
        assert standings.leader is not None
        assert arena.name_of(standings.leader.hotkey) == "fast"
        # both rounds were paid once: one weights set for the standings they reached
        sets = [w for w in daemon.state.weights_log() if w.status == "set"]
        assert sets[0].standings_id == daemon.state.standings()[0]
        assert len({w.standings_id for w in sets}) == len(sets)
        assert arena.lium.live_pods() == []  # no pod leaked
    finally:
        db.close()


def test_a_pod_lost_voids_its_round_only(two_pods: LocalArena) -> None:
    arena = two_pods
    arena.commit(*CHALLENGERS)
    daemon, db = _daemon(arena)
    killed: list[str] = []
    try:

        async def kill_one_pod() -> None:
            """Once both rounds run, one pod dies: the provider says so and its machine stops
            answering."""
            while True:
                running = [
                    r
                    for r in daemon.state.unfinished_rounds()
                    if r.state is RoundState.RUNNING and r.pod is not None
                ]
                if len(running) == 2:
                    break
                await asyncio.sleep(0.2)
            # what an operator sees now: both rounds, each on its pod
            shown = status(daemon).operations
            assert {(r.round_id, r.pod) for r in shown.rounds} == {
                (r.round_id, r.pod) for r in running
            }
            assert {p.round_id for p in shown.pods.running} >= {r.round_id for r in running}
            assert shown.next_round.max_parallel == 2
            # the extra pod dies (the first is the session's pod, which later tests use)
            doomed = arena.services.more_pods[0]
            leases = {r.round_id: daemon.parts.leases.ledger.get(str(r.pod)) for r in running}
            victim, lease = next(
                (r, lease)
                for r in running
                if (lease := leases[r.round_id]) is not None
                and lease.ssh is not None
                and lease.ssh.port == doomed.port
            )
            assert lease.pod_id is not None
            arena.lium.kill(lease.pod_id)
            doomed.power_off()
            killed.append(victim.round_id)

        async def one_pass() -> None:
            await daemon.parts.leases.start()
            killer = asyncio.create_task(kill_one_pod())
            await daemon.one_pass()
            killer.cancel()
            await daemon.parts.leases.close()
            await daemon.parts.chain.close()

        asyncio.run(one_pass())
        assert len(killed) == 1
        states = {r.round_id: (r.state, r.reason) for r in daemon.state.rounds()}
        assert states[killed[0]] == (RoundState.VOID, ReasonCode.POD_LOST)
        (other,) = [rid for rid in states if rid != killed[0]]
        assert states[other] == (RoundState.SCORED, None)
        voided = [v for v in daemon.state.round_verdicts(killed[0])]
        assert voided
        assert all(v.outcome is Outcome.NO_DECISION and not v.charged for v in voided)
        assert daemon.state.round_verdicts(other)
        assert arena.lium.live_pods() == []
    finally:
        db.close()
