"""The loop's own behaviour: a failing step is retried, a stalled chain exits 3, lost state is
restored from the last public report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from cacheon.config import Settings
from cacheon.protocol import PublicReport, Standing
from cacheon.remote.ssh import PodGone, SshError, SshUnreachable
from cacheon.store.db import Database
from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import NETUID, LocalArena, Services
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd, free_port
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import EXIT_OK, EXIT_STALLED, Daemon


@pytest.fixture
def quiet_arena(
    tmp_path: Path, docker_daemon: DockerDaemon, registry: Registry, pod_sshd: Sshd, s3: SeaweedS3
) -> Iterator[LocalArena]:
    """A subnet with no miners and a chain whose blocks move only on demand."""
    loop = LoopThread()
    try:
        services = Services(docker_daemon, registry, pod_sshd, s3, loop)
        arena = LocalArena.create(tmp_path, services, miners=(), block_time_s=0)
        try:
            yield arena
        finally:
            arena.close()
    finally:
        loop.stop()


async def _run_for(daemon: Daemon, seconds: float) -> int:
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(seconds)
    daemon.stop()
    return await asyncio.wait_for(task, 30)


def _daemon(settings: Settings) -> tuple[Daemon, Database]:
    db = Database.open(state_path(settings))
    return Daemon(settings, build_parts(settings, db)), db


def test_a_stalled_chain_ends_the_process_for_a_restart(quiet_arena: LocalArena) -> None:
    settings = quiet_arena.settings(
        validator={"watchdog_s": 0.5, "poll_interval_s": 0.05}, web={"port": 0}
    )
    daemon, db = _daemon(settings)
    started = time.monotonic()
    try:
        with structlog.testing.capture_logs() as logs:
            code = asyncio.run(asyncio.wait_for(daemon.run(), 30))
    finally:
        db.close()
    assert code == EXIT_STALLED
    events = [e["event"] for e in logs]
    assert "no new block; reconnecting to the chain" in events
    assert "chain stalled; exiting for a restart" in events
    assert time.monotonic() - started < 20


def test_a_failing_step_is_logged_and_retried(quiet_arena: LocalArena) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    settings = quiet_arena.settings(
        chain={"network": dead, "call_timeout_s": 0.5},
        validator={"poll_interval_s": 0.05},
        web={"port": 0},
    )
    daemon, db = _daemon(settings)
    try:
        with structlog.testing.capture_logs() as logs:
            code = asyncio.run(_run_for(daemon, 4.0))
    finally:
        db.close()
    assert code == EXIT_OK
    failures = [e for e in logs if e["event"] == "step failed; retrying next pass"]
    assert len(failures) >= 2
    assert {e["step"] for e in failures} == {"poll"}
    assert all(e["reason"] for e in failures)


def test_an_empty_database_restores_standings_from_the_last_report(quiet_arena: LocalArena) -> None:
    arena = quiet_arena
    arena.devnet.advance(5)
    leader = arena.owner  # any registered hotkey will do as the restored leader
    report = PublicReport(
        validator_hotkey=arena.validator.hotkey,
        validator_version="0.1.0",
        evaluation_version="old",
        netuid=NETUID,
        block=3,
        published_at=0.0,
        leader=Standing(
            hotkey=leader.hotkey, digest="sha256:" + "a" * 64, image="r/x@sha256:" + "a" * 64
        ),
    )
    arena.services.s3.client().put_object(
        Bucket=arena.bucket,
        Key="cacheon/public/latest.json",
        Body=report.model_dump_json().encode(),
    )
    settings = arena.settings(validator={"poll_interval_s": 0.05}, web={"port": 0})
    daemon, db = _daemon(settings)
    try:
        asyncio.run(_run_for(daemon, 2.0))
        _, standings = daemon.state.standings()
    finally:
        db.close()
    assert standings.leader is not None
    assert standings.leader.hotkey == leader.hotkey
    row = dict(arena.devnet.weights(NETUID, arena.devnet.head())[arena.validator.uid])
    assert row == {leader.uid: 65535}


def test_a_pod_the_provider_ended_is_not_waited_for(quiet_arena: LocalArena) -> None:
    """Reconnecting to a dead pod stops at the provider's word, not after minutes of retries."""
    settings = quiet_arena.settings(pods={"ssh_connect_timeout_s": 1.0})
    daemon, db = _daemon(settings)

    async def scenario() -> tuple[type[Exception], type[Exception]]:
        leases = daemon.parts.leases
        await leases.start()
        lease = await leases.acquire(0.1)
        assert lease.ssh is not None
        unreachable = replace(lease, ssh=replace(lease.ssh, port=free_port()))
        connect = daemon.runner._connector(unreachable)
        caught = []
        for _ in range(2):
            try:
                await connect()
            except SshError as exc:
                caught.append(type(exc))
            assert lease.pod_id is not None
            quiet_arena.lium.kill(lease.pod_id)
        await leases.close()
        await daemon.parts.chain.close()
        return caught[0], caught[1]

    try:
        alive, dead = asyncio.run(scenario())
    finally:
        db.close()
    assert alive is SshUnreachable  # the provider still runs it: keep trying
    assert dead is PodGone  # the provider ended it: give up at once
