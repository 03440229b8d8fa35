"""The orphan sweep: end every pod with our prefix that nobody should be paying for.

Run at startup (`startup=True`: what a dead process left half-done is ended too) and every few
minutes. A pod is terminated when the ledger does not know it, when its lease has ended, when it
is past `pods.max_lifetime_h`, or when the provider reports it failed; at startup also when its
rent never finished, and every leased pod when `pods.keep_on_restart` is off. Leases whose pods
the provider no longer lists are closed as lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cacheon.log import get_logger
from cacheon.pods.base import Pod, PodError, PodState, Provider
from cacheon.pods.ledger import Lease, LeaseLedger, LeaseState

log = get_logger("cacheon.pods.sweep")


@dataclass(frozen=True)
class Ended:
    provider: str
    pod_id: str
    name: str
    reason: str


@dataclass
class SweepReport:
    terminated: list[Ended] = field(default_factory=list)
    closed: list[Ended] = field(default_factory=list)
    """Leases closed because their pods were gone already."""
    errors: list[str] = field(default_factory=list)


async def terminate_lease(
    provider: Provider,
    ledger: LeaseLedger,
    lease: Lease,
    *,
    final: LeaseState,
    reason: str,
    now: float,
) -> bool:
    """Terminate the lease's pod and close the lease; False (and left `releasing`) on failure."""
    ledger.set_state(lease.name, LeaseState.RELEASING, reason, now)
    try:
        pod_ids = [lease.pod_id] if lease.pod_id else [
            pod.pod_id for pod in await provider.list_ours(lease.name) if pod.name == lease.name
        ]  # fmt: skip
        for pod_id in pod_ids:
            await provider.terminate(pod_id)
    except PodError as exc:
        log.error("terminate failed; the sweep will retry", lease=lease.name, reason=str(exc))
        return False
    ledger.set_state(lease.name, final, reason, now)
    log.info(
        "pod lease closed",
        lease=lease.name,
        provider=provider.name,
        state=str(final),
        reason=reason,
    )
    return True


def _why_end(
    lease: Lease | None, pod: Pod, now: float, startup: bool, keep_on_restart: bool
) -> tuple[str, LeaseState] | None:
    if lease is None:
        return "orphan: not in the lease ledger", LeaseState.RELEASED
    if not lease.live:
        return f"its lease is {lease.state} but the pod still runs", lease.state
    if pod.state is PodState.FAILED:
        return "the provider reports it failed", LeaseState.LOST
    if now > lease.expires_at:
        return "past pods.max_lifetime_h", LeaseState.RELEASED
    if lease.state is LeaseState.RELEASING:
        return lease.detail or "release not confirmed", LeaseState.RELEASED
    if startup and lease.state in (LeaseState.RENTING, LeaseState.STARTING):
        return "left over from a rent a previous run did not finish", LeaseState.FAILED
    if startup and not keep_on_restart:
        return "pods.keep_on_restart is off", LeaseState.RELEASED
    return None


async def sweep(
    providers: Mapping[str, Provider],
    ledger: LeaseLedger,
    prefix: str,
    clock: Callable[[], float],
    *,
    startup: bool,
    keep_on_restart: bool,
) -> SweepReport:
    report = SweepReport()
    for provider in providers.values():
        # Leases are read before the listing, so a pod rented meanwhile is never judged gone.
        before = [lease for lease in ledger.live() if lease.provider == provider.name]
        try:
            pods = await provider.list_ours(prefix)
        except PodError as exc:
            report.errors.append(f"{provider.name}: {exc}")
            continue
        for pod in pods:
            lease = ledger.by_pod(provider.name, pod.pod_id) or ledger.get(pod.name)
            why = _why_end(lease, pod, clock(), startup, keep_on_restart)
            if why is None:
                continue
            reason, final = why
            ended = Ended(provider.name, pod.pod_id, pod.name, reason)
            if lease is not None and lease.live:
                done = await terminate_lease(
                    provider, ledger, lease, final=final, reason=reason, now=clock()
                )
            else:
                done = await _terminate_unleased(provider, pod, reason, report)
            if done:
                report.terminated.append(ended)
        _close_vanished(
            provider.name, ledger, before, pods, clock=clock, startup=startup, report=report
        )
    if report.terminated or report.closed or report.errors:
        log.info(
            "pod sweep",
            terminated=[f"{e.provider}/{e.pod_id} ({e.reason})" for e in report.terminated],
            closed=[f"{e.name} ({e.reason})" for e in report.closed],
            errors=report.errors,
        )
    return report


def _close_vanished(
    provider: str,
    ledger: LeaseLedger,
    before: list[Lease],
    pods: list[Pod],
    *,
    clock: Callable[[], float],
    startup: bool,
    report: SweepReport,
) -> None:
    """Close the leases whose pods the provider no longer lists."""
    listed_ids = {pod.pod_id for pod in pods}
    listed_names = {pod.name for pod in pods}
    for lease in before:
        current = ledger.get(lease.name)
        if current is None or not current.live:
            continue
        if lease.pod_id is not None and lease.pod_id not in listed_ids:
            final = LeaseState.RELEASED if lease.state is LeaseState.RELEASING else LeaseState.LOST
            reason = "the provider no longer lists the pod"
        elif startup and lease.pod_id is None and lease.name not in listed_names:
            final, reason = LeaseState.FAILED, "the rent did not finish and created no pod"
        else:
            continue
        ledger.set_state(lease.name, final, reason, clock())
        report.closed.append(Ended(provider, lease.pod_id or "", lease.name, reason))


async def _terminate_unleased(
    provider: Provider, pod: Pod, reason: str, report: SweepReport
) -> bool:
    try:
        await provider.terminate(pod.pod_id)
    except PodError as exc:
        report.errors.append(f"{provider.name} {pod.pod_id}: {exc}")
        return False
    log.warning(
        "terminated a pod the ledger does not hold",
        provider=provider.name,
        pod=pod.pod_id,
        name=pod.name,
        reason=reason,
    )
    return True
