"""The lease manager: static hosts, fallback, budget, sweep, restart and idle release."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest
import structlog

from cacheon.pods import BudgetExceeded, LeaseState, NoPodAvailable, Offer
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_pods import PodHost
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.pod_env import PodEnv
from cacheon.testing.services import Sshd

LIUM_8X_H200 = 2.10 * 8


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # 2027-01-15, mid-day UTC

    def __call__(self) -> float:
        return self.now


def test_static_host_is_claimed_reached_and_released(
    sshd: Sshd, pod_host: PodHost, env: PodEnv
) -> None:
    entry = f"{sshd.user}@127.0.0.1:{sshd.port} {sshd.host_public_key}"
    settings = env.settings(providers=["static"], static_hosts=[entry])
    pod_host.grant(env.key.public_line)  # the operator authorized the validator's key

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=2)
                assert (lease.provider, lease.pod_id) == (
                    "static",
                    f"{sshd.user}@127.0.0.1:{sshd.port}",
                )
                assert lease.ssh is not None
                assert lease.ssh.host_key == sshd.host_public_key
                # the only machine is claimed: nothing else to give
                assert await leases._providers["static"].offers("H200", 8, 1.0) == []
                await leases.release(lease)
                again = await leases.acquire(expected_hours=2)
                assert again.name != lease.name
                await leases.release(again)
                assert db.query("SELECT * FROM static_claims") == []

    try:
        asyncio.run(scenario())
    finally:
        pod_host.revoke(env.key.public_line)


def test_static_host_with_another_host_key_is_refused_and_released(
    sshd: Sshd, pod_host: PodHost, env: PodEnv
) -> None:
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    entry = f"{sshd.user}@127.0.0.1:{sshd.port} {wrong[0]} {wrong[1]}"
    settings = env.settings(providers=["static"], static_hosts=[entry])
    pod_host.grant(env.key.public_line)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                with pytest.raises(NoPodAvailable, match="host key is not the pinned"):
                    await leases.acquire(expected_hours=1)
                [lease] = leases.ledger.recent(5)
                assert lease.state is LeaseState.FAILED
                assert db.query("SELECT * FROM static_claims") == []

    try:
        asyncio.run(scenario())
    finally:
        pod_host.revoke(env.key.public_line)


def test_fallback_to_the_next_provider(
    fake_targon: FakeTargon, fake_lium: FakeLium, env: PodEnv
) -> None:
    settings = env.settings(targon=fake_targon, lium=fake_lium, ready_timeout_s=0.5)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                fake_targon.faults.reject_key = True
                first = await leases.acquire(expected_hours=1)
                assert first.provider == "lium"
                await leases.release(first)
                fake_targon.faults.reject_key = False
                fake_targon.faults.stuck = True  # targon fails mid-rent: its pod is ended
                second = await leases.acquire(expected_hours=1)
                assert second.provider == "lium"
                await leases.release(second)

    cheap = env.settings(targon=fake_targon, lium=fake_lium, max_price_per_hour=20.0)

    async def no_targon_offer() -> None:
        with Database.open(env.tmp / "state2.db") as db:
            async with env.leases(cheap, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                assert lease.provider == "lium"  # targon's 8xH200 costs 25.20/h
                await leases.release(lease)

    asyncio.run(scenario())
    asyncio.run(no_targon_offer())
    assert fake_targon.live_workloads() == []
    assert fake_lium.live_pods() == []


def test_budget_refuses_a_rent_that_would_pass_it(fake_lium: FakeLium, env: PodEnv) -> None:
    clock = Clock()

    async def scenario() -> None:
        tight = env.settings(lium=fake_lium, daily_budget_usd=10.0)
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(tight, db, clock=clock) as leases:
                with pytest.raises(BudgetExceeded, match=r"daily_budget_usd = \$10\.00"):
                    await leases.acquire(expected_hours=1)
            assert fake_lium.pods == {}
            roomy = env.settings(lium=fake_lium, daily_budget_usd=30.0)
            async with env.leases(roomy, db, clock=clock) as leases:
                lease = await leases.acquire(expected_hours=1)
                clock.now += 3600
                assert leases.spent_today() == pytest.approx(LIUM_8X_H200)
                assert leases.budget_left() == pytest.approx(30.0 - LIUM_8X_H200)
                fake_lium.kill(lease.pod_id or "")  # so the warm pod is not reused
                with pytest.raises(BudgetExceeded, match=r"spent \$16\.80"):
                    await leases.acquire(expected_hours=1)
                assert len(fake_lium.pods) == 1

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []


def test_sweep_ends_orphans_and_expired_pods_but_not_other_validators(
    fake_lium: FakeLium, env: PodEnv
) -> None:
    clock = Clock()
    settings = env.settings(lium=fake_lium, max_lifetime_h=2.0)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db, clock=clock) as leases:
                lium = leases._providers["lium"]
                [_cheapest, other] = sorted(
                    await lium.offers("H200", 8, 100), key=lambda o: o.price_per_hour
                )
                orphan = await lium.create(
                    other, f"{leases.prefix}orphan01", env.key.public_line, 1
                )
                foreign = await lium.create(
                    Offer("lium", fake_lium.executors[3]["id"], "H100", 8, 12.0),
                    "cacheon-ffffff-theirs00",
                    env.key.public_line,
                    1,
                )
                lease = await leases.acquire(expected_hours=1)
                report = await leases.sweep()
                assert [(e.pod_id, e.reason) for e in report.terminated] == [
                    (orphan.pod_id, "orphan: not in the lease ledger")
                ]
                clock.now += 2.5 * 3600
                report = await leases.sweep()
                assert [(e.pod_id, e.reason) for e in report.terminated] == [
                    (lease.pod_id, "past pods.max_lifetime_h")
                ]
                ended = leases.ledger.get(lease.name)
                assert ended is not None
                assert ended.state is LeaseState.RELEASED
                assert [p["id"] for p in fake_lium.live_pods()] == [foreign.pod_id]
                await lium.terminate(foreign.pod_id)

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []


def test_restart_keeps_or_releases_pods_as_configured(fake_lium: FakeLium, env: PodEnv) -> None:
    keep = env.settings(lium=fake_lium)
    drop = env.settings(lium=fake_lium, keep_on_restart=False)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(keep, db) as leases:
                lease = await leases.acquire(expected_hours=1)
            assert len(fake_lium.live_pods()) == 1
            async with env.leases(keep, db) as leases:
                report = await leases.start()
                assert report.terminated == []
                resumed = await leases.acquire(expected_hours=1)
                assert resumed.name == lease.name  # the warm pod, no second rent
            async with env.leases(drop, db) as leases:
                report = await leases.start()
                assert [e.reason for e in report.terminated] == ["pods.keep_on_restart is off"]
            assert fake_lium.live_pods() == []
            async with env.leases(drop, db) as leases:
                await leases.acquire(expected_hours=1)
            assert fake_lium.live_pods() == []  # close() released it

    asyncio.run(scenario())
    assert fake_lium.rents() == 2


def test_idle_pods_are_released(fake_lium: FakeLium, env: PodEnv) -> None:
    clock = Clock()
    settings = env.settings(lium=fake_lium, pod_idle_release_s=600.0)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db, clock=clock) as leases:
                lease = await leases.acquire(expected_hours=1)
                clock.now += 5000
                assert await leases.release_idle() == []  # a round holds it: never idle
                leases.done(lease)  # the round ended now
                clock.now += 500
                assert await leases.release_idle() == []
                clock.now += 200
                assert [x.name for x in await leases.release_idle()] == [lease.name]

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []


def test_a_held_pod_is_never_given_to_a_second_round(fake_lium: FakeLium, env: PodEnv) -> None:
    settings = env.settings(lium=fake_lium)

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                first = await leases.acquire(expected_hours=1)
                second = await leases.acquire(expected_hours=1)  # rounds in flight at once
                assert second.name != first.name
                assert leases.held == {first.name, second.name}
                leases.done(first)
                third = await leases.acquire(expected_hours=1)
                assert third.name == first.name  # free again: the warm pod is reused
                for lease in (second, third):
                    await leases.release(lease)

    asyncio.run(scenario())
    assert fake_lium.live_pods() == []


def test_api_keys_never_reach_the_logs(
    fake_targon: FakeTargon, fake_lium: FakeLium, env: PodEnv
) -> None:
    settings = env.settings(targon=fake_targon, lium=fake_lium)
    fake_targon.faults.reject_key = True
    fake_lium.faults.server_errors = 1

    async def scenario() -> None:
        with Database.open(env.tmp / "state.db") as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                await leases.release(lease)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    text = repr(logs)
    assert "provider gave no pod" in text
    assert fake_targon.api_key not in text
    assert fake_lium.api_key not in text
