"""Pod leases: what the validator daemon calls to get a pod, give it back, and never leak one.

`PodLeases` ties the providers (in the configured order), the ledger, the budget, the readiness
check and the sweep together:

- `start()` sweeps what a previous run left (honouring `pods.keep_on_restart`);
- `acquire()` reuses a warm pod that no round holds, or rents one, falling back through the
  providers; the pod is held until `done()`, so rounds in flight at once never share a pod;
- `touch()` / `release_idle()` release a pod after `pods.pod_idle_release_s` without work;
- `release()` / `pod_lost()` end a lease; `sweep()` runs every few minutes;
- `close()` releases everything unless `pods.keep_on_restart`.

Every rent records its lease first and terminates on any failure, cancellation included.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cacheon.config import Settings
from cacheon.log import get_logger
from cacheon.pods import budget
from cacheon.pods.base import BudgetExceeded, NoPodAvailable, Offer, PodError, PodState, Provider
from cacheon.pods.keys import PodKey
from cacheon.pods.ledger import Lease, LeaseLedger, LeaseState
from cacheon.pods.ready import ReadyPolicy, wait_ready
from cacheon.pods.ssh_probe import SshNotReady, probe_ssh
from cacheon.pods.sweep import SweepReport, sweep, terminate_lease
from cacheon.store.db import Database

log = get_logger("cacheon.pods.leases")


@dataclass(frozen=True)
class LeasePolicy:
    gpu_type: str
    gpu_count: int
    max_price_per_hour: float
    daily_budget_usd: float
    max_lifetime_h: float
    keep_on_restart: bool
    idle_release_s: float
    name_prefix: str
    ready: ReadyPolicy

    @classmethod
    def from_settings(cls, settings: Settings) -> LeasePolicy:
        pods = settings.pods
        return cls(
            gpu_type=settings.model.gpu_type,
            gpu_count=settings.model.gpu_count,
            max_price_per_hour=pods.max_price_per_hour,
            daily_budget_usd=pods.daily_budget_usd,
            max_lifetime_h=pods.max_lifetime_h,
            keep_on_restart=pods.keep_on_restart,
            idle_release_s=pods.pod_idle_release_s,
            name_prefix=pods.name_prefix,
            ready=ReadyPolicy(
                pods.ready_timeout_s, pods.poll_interval_s, pods.ssh_connect_timeout_s
            ),
        )


class PodLeases:
    def __init__(
        self,
        db: Database,
        providers: Sequence[Provider],
        key: PodKey,
        policy: LeasePolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._providers = {provider.name: provider for provider in providers}
        self._order = [provider.name for provider in providers]
        self._key = key
        self._policy = policy
        self._clock = clock
        self.ledger = LeaseLedger(db)
        self.prefix = self.ledger.pod_prefix(policy.name_prefix)
        self._held: set[str] = set()
        """Leases a round is using now; idle release and reuse leave them alone."""

    async def start(self) -> SweepReport:
        """Sweep what a previous run left behind; call once before the first `acquire`."""
        return await self._sweep(startup=True)

    async def sweep(self) -> SweepReport:
        return await self._sweep(startup=False)

    async def acquire(self, expected_hours: float) -> Lease:
        """A ready pod: a warm one if any still answers, else a new rent (providers in order).

        `expected_hours` is how long the caller will need it, for the budget. Raises
        BudgetExceeded when every offer that fits would pass the daily budget, NoPodAvailable
        when no provider gave a pod (one reason per provider).
        """
        warm = await self._warm()
        if warm is not None:
            return self.hold(warm)
        reasons: list[str] = []
        refusals: list[str] = []
        for name in self._order:
            provider = self._providers[name]
            try:
                offers = await provider.offers(
                    self._policy.gpu_type, self._policy.gpu_count, self._policy.max_price_per_hour
                )
                if not offers:
                    reasons.append(
                        f"{name}: no offer of {self._policy.gpu_count}x{self._policy.gpu_type} "
                        f"at ≤ ${self._policy.max_price_per_hour:g}/h"
                    )
                    continue
                offer = min(offers, key=lambda o: o.price_per_hour)
                budget.check(
                    offer, expected_hours, self.spent_today(), self._policy.daily_budget_usd
                )
                return self.hold(await self._rent(provider, offer))
            except BudgetExceeded as exc:
                refusals.append(str(exc))
                reasons.append(f"{name}: over budget")
            except PodError as exc:
                log.warning("provider gave no pod, trying the next", provider=name, reason=str(exc))
                reasons.append(f"{name}: {exc}")
        if refusals:
            raise BudgetExceeded("; ".join(refusals))
        raise NoPodAvailable(reasons)

    async def alive(self, lease: Lease) -> bool:
        """Whether the provider still runs the pod; True when it cannot be asked (an API
        outage is not a dead pod), so only a definite answer ends a round early."""
        provider = self._providers.get(lease.provider)
        if provider is None or lease.pod_id is None:
            return False
        try:
            pod = await provider.get(lease.pod_id)
        except PodError as exc:
            log.warning("cannot ask the provider about a pod", lease=lease.name, reason=str(exc))
            return True
        return pod is not None and pod.state in (PodState.PENDING, PodState.RUNNING)

    def touch(self, lease: Lease) -> None:
        """The pod did work now; it is not idle."""
        self.ledger.touch(lease.name, self._clock())

    def hold(self, lease: Lease) -> Lease:
        """A round uses `lease` (a new one, or one it resumes on) until `done`."""
        self._held.add(lease.name)
        return lease

    def done(self, lease: Lease) -> None:
        """The round on `lease` is over; the pod is free for the next one (or idle release)."""
        self._held.discard(lease.name)
        self.touch(lease)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def release(self, lease: Lease, reason: str = "released") -> bool:
        """Terminate the pod and close the lease; False if the provider could not be reached
        (the lease stays `releasing` and the sweep retries)."""
        return await self._end(lease, LeaseState.RELEASED, reason)

    async def pod_lost(self, lease: Lease, reason: str) -> bool:
        """The pod died or stopped answering while in use: terminate it and close as lost."""
        return await self._end(lease, LeaseState.LOST, reason)

    async def release_idle(self) -> list[Lease]:
        """Release ready pods unused for `pods.pod_idle_release_s`."""
        now = self._clock()
        released = []
        for lease in self.ledger.live():
            last = lease.last_used_at or lease.ready_at or lease.created_at
            idle = (
                lease.state is LeaseState.READY
                and lease.name not in self._held
                and now - last >= self._policy.idle_release_s
            )
            if idle and await self.release(lease, f"idle for {now - last:.0f}s"):
                released.append(lease)
        return released

    def spent_today(self) -> float:
        now = self._clock()
        start = budget.day_start(now)
        return budget.spend(self.ledger.active_since(start), start, now)

    def budget_left(self) -> float:
        return max(0.0, self._policy.daily_budget_usd - self.spent_today())

    async def close(self) -> None:
        """Release every live pod unless `pods.keep_on_restart`; close the API clients."""
        try:
            if not self._policy.keep_on_restart:
                for lease in self.ledger.live():
                    await self.release(lease, "validator shutdown")
        finally:
            for provider in self._providers.values():
                await provider.aclose()

    async def _warm(self) -> Lease | None:
        for lease in self.ledger.live():
            if lease.state is not LeaseState.READY or lease.ssh is None or lease.name in self._held:
                continue
            if lease.provider not in self._providers or self._clock() >= lease.expires_at:
                continue
            try:
                await probe_ssh(lease.ssh, self._key.private, self._policy.ready.ssh_timeout_s)
            except (SshNotReady, PodError) as exc:
                await self.pod_lost(lease, f"warm pod stopped answering: {exc}")
                continue
            self.touch(lease)
            log.info("reusing warm pod", lease=lease.name, provider=lease.provider)
            return self.ledger.get(lease.name)
        return None

    async def _rent(self, provider: Provider, offer: Offer) -> Lease:
        now = self._clock()
        name = f"{self.prefix}{secrets.token_hex(4)}"
        lease = self.ledger.record(name, offer, now, now + self._policy.max_lifetime_h * 3600)
        log.info("renting pod", lease=name, provider=provider.name, offer=offer.offer_id,
                 price_per_hour=offer.price_per_hour)  # fmt: skip
        try:
            pod = await provider.create(
                offer, name, self._key.public_line, self._policy.max_lifetime_h
            )
            lease = self.ledger.set_pod(name, pod.pod_id, pod.price_per_hour)
            ssh = await wait_ready(provider, pod, self._key, self._policy.ready)
        except BaseException as exc:
            current = self.ledger.get(name) or lease
            reason = f"rent failed: {type(exc).__name__}: {exc}"
            # Shielded: a cancelled rent must still end its pod before the cancel propagates.
            await asyncio.shield(
                terminate_lease(
                    provider,
                    self.ledger,
                    current,
                    final=LeaseState.FAILED,
                    reason=reason,
                    now=self._clock(),
                )
            )
            raise
        log.info("pod ready", lease=name, provider=provider.name, pod=pod.pod_id,
                 host=ssh.host, port=ssh.port)  # fmt: skip
        return self.ledger.set_ready(name, ssh, self._clock())

    async def _end(self, lease: Lease, final: LeaseState, reason: str) -> bool:
        self._held.discard(lease.name)
        provider = self._providers.get(lease.provider)
        if provider is None:
            log.error("cannot end lease: its provider is not configured", lease=lease.name,
                      provider=lease.provider)  # fmt: skip
            return False
        return await terminate_lease(
            provider, self.ledger, lease, final=final, reason=reason, now=self._clock()
        )

    async def _sweep(self, *, startup: bool) -> SweepReport:
        return await sweep(
            self._providers,
            self.ledger,
            self.prefix,
            self._clock,
            startup=startup,
            keep_on_restart=self._policy.keep_on_restart,
        )
