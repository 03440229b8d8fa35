"""Renting through the fake Targon API and its SSH gateway (user = workload uid)."""

from __future__ import annotations

import asyncio

import pytest

from cacheon.pods import LeaseState, NoPodAvailable, Offer, ProviderError, probe_ssh
from cacheon.store.db import Database
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.pod_env import PodEnv


def test_rent_reach_through_the_gateway_and_terminate(fake_targon: FakeTargon, env: PodEnv) -> None:
    settings = env.settings(targon=fake_targon)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                first = await leases.acquire(expected_hours=1)
                assert first.provider == "targon"
                assert first.ssh is not None
                assert first.ssh.user == first.pod_id
                assert (first.ssh.host, first.ssh.port) == ("127.0.0.1", fake_targon.gateway_port)
                assert first.price_per_hour == pytest.approx(25.20)
                # the pinned gateway key is enforced on the next contact
                assert await probe_ssh(first.ssh, env.key.private, 5) == first.ssh.host_key
                # a second pod: the key is registered once, the list paginates (2 per page)
                leases.touch(first)
                second = await leases._rent(leases._providers["targon"], _offer())
                ours = await leases._providers["targon"].list_ours(leases.prefix)
                assert {p.pod_id for p in ours} == {first.pod_id, second.pod_id}
                await leases.release(first)
                await leases.release(second)

    asyncio.run(scenario())
    assert fake_targon.live_workloads() == []
    assert len(fake_targon.ssh_keys) == 1
    assert fake_targon.creates() == 2


def _offer() -> Offer:
    return Offer("targon", "h200-xlarge", "H200", 8, 25.20)


def test_lost_create_answer_registers_no_second_workload(
    fake_targon: FakeTargon, env: PodEnv
) -> None:
    settings = env.settings(targon=fake_targon)
    fake_targon.faults.lose_create_answer = True

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                await leases.release(lease)

    asyncio.run(scenario())
    assert fake_targon.creates() == 1
    assert len(fake_targon.workloads) == 1
    assert fake_targon.live_workloads() == []


def test_server_error_on_create_is_not_retried_blindly(
    fake_targon: FakeTargon, env: PodEnv
) -> None:
    """A 500 on POST /workloads may or may not have registered it: look up, never re-post."""
    settings = env.settings(targon=fake_targon)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                provider = leases._providers["targon"]
                await provider._key_uid("x-y", leases._key.public_line)  # key registered first
                fake_targon.faults.server_errors = 1  # so the 500 hits POST /workloads
                with pytest.raises(ProviderError, match="not registered twice"):
                    await leases._rent(provider, _offer())
                [lease] = leases.ledger.recent(5)
                assert lease.state is LeaseState.FAILED

    asyncio.run(scenario())
    assert fake_targon.creates() == 1
    assert fake_targon.live_workloads() == []


def test_stuck_and_dying_workloads_leave_nothing_running(
    fake_targon: FakeTargon, env: PodEnv
) -> None:
    settings = env.settings(targon=fake_targon, ready_timeout_s=0.5)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                fake_targon.faults.stuck = True
                with pytest.raises(NoPodAvailable, match="not ready after"):
                    await leases.acquire(expected_hours=1)
                fake_targon.faults.stuck = False
                lease = await leases.acquire(expected_hours=1)
                assert lease.pod_id is not None
                fake_targon.kill(lease.pod_id)
                report = await leases.sweep()
                assert [e.pod_id for e in report.terminated] == [lease.pod_id]
                closed = leases.ledger.get(lease.name)
                assert closed is not None
                assert closed.state is LeaseState.LOST

    asyncio.run(scenario())
    assert fake_targon.live_workloads() == []
