"""Renting through the fake Lium API: the pod is the test sshd, reached with our key."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from cacheon.pods import (
    LeaseState,
    NoPodAvailable,
    PodKey,
    SshTarget,
)
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.pod_env import PodEnv
from cacheon.testing.services import Sshd


async def _whoami(target: SshTarget, key: PodKey) -> str:
    """A command over SSH with the host key the lease pinned (a wrong one would be refused)."""
    known = asyncssh.import_known_hosts(f"[{target.host}]:{target.port} {target.host_key}\n")
    async with asyncssh.connect(
        target.host, target.port, username=target.user, client_keys=[key.private],
        known_hosts=known, agent_path=None, config=None,
    ) as conn:  # fmt: skip
        result = await conn.run("id -un", check=True)
    return str(result.stdout).strip()


def test_rent_reach_and_terminate(fake_lium: FakeLium, sshd: Sshd, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                assert lease.state is LeaseState.READY
                assert lease.provider == "lium"
                assert lease.name.startswith(leases.prefix)
                # the cheaper of the two 8xH200 nodes, priced as the pod row says
                assert lease.price_per_hour == pytest.approx(2.10 * 8)
                assert lease.ssh is not None
                assert lease.ssh.host_key == sshd.host_public_key
                assert await _whoami(lease.ssh, env.key) == sshd.user
                assert [p["pod_name"] for p in fake_lium.live_pods()] == [lease.name]
                assert await leases.release(lease)
                closed = leases.ledger.get(lease.name)
                assert closed is not None
                assert closed.state is LeaseState.RELEASED

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []
    assert fake_lium.rents() == 1
    rent_body_keys = env.key.public_line.split()[1]
    assert rent_body_keys not in (sshd.root / "authorized_keys").read_text()


def test_rate_limit_and_server_errors_are_retried_without_a_double_rent(
    fake_lium: FakeLium, env: PodEnv
) -> None:
    settings = env.settings(lium=fake_lium)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                fake_lium.faults.server_errors = 2  # hits GET /machines twice: retried
                offers_before = len(fake_lium.requests)
                provider = leases._providers["lium"]
                offers = await provider.offers("H200", 8, 100.0)
                assert len(offers) == 2
                assert len(fake_lium.requests) - offers_before == 4
                fake_lium.faults.rate_limited = 1
                fake_lium.faults.retry_after = "1"
                started = asyncio.get_running_loop().time()
                lease = await leases.acquire(expected_hours=1)
                assert asyncio.get_running_loop().time() - started >= 1.0
                await leases.release(lease)

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []
    assert len(fake_lium.pods) == 1


def test_lost_rent_answer_finds_the_pod_by_name(fake_lium: FakeLium, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium)
    fake_lium.faults.lose_create_answer = True

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                assert lease.state is LeaseState.READY
                await leases.release(lease)

    asyncio.run(scenario())
    assert fake_lium.rents() == 1
    assert len(fake_lium.pods) == 1
    assert fake_lium.live_pods() == []


def test_pod_stuck_provisioning_is_terminated(fake_lium: FakeLium, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium, ready_timeout_s=0.5)
    fake_lium.faults.stuck = True

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                with pytest.raises(NoPodAvailable, match="not ready after") as caught:
                    await leases.acquire(expected_hours=1)
                assert "lium" in str(caught.value)
                [lease] = leases.ledger.recent(5)
                assert lease.state is LeaseState.FAILED
                assert "PodTimeout" in lease.detail

    asyncio.run(scenario())
    assert len(fake_lium.pods) == 1
    assert fake_lium.live_pods() == []


def test_pod_that_dies_in_use_is_closed_and_terminated(fake_lium: FakeLium, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                first = await leases.acquire(expected_hours=1)
                assert first.pod_id is not None
                leases.done(first)  # its round ended; the pod waits warm
                fake_lium.kill(first.pod_id)
                # the warm pod no longer answers: closed as lost, and a new one is rented
                second = await leases.acquire(expected_hours=1)
                assert second.name != first.name
                lost = leases.ledger.get(first.name)
                assert lost is not None
                assert lost.state is LeaseState.LOST
                report = await leases.sweep()
                assert report.errors == []
                await leases.release(second)

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []


def test_rejected_api_key_rents_nothing(fake_lium: FakeLium, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium)
    fake_lium.faults.reject_key = True

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                with pytest.raises(NoPodAvailable, match="API key rejected"):
                    await leases.acquire(expected_hours=1)

    asyncio.run(scenario())
    assert fake_lium.pods == {}
