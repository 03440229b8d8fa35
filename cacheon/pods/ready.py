"""Wait until a new pod is usable: the provider says it runs, and SSH lets our key in.

Shared by every provider so that "ready" means the same thing everywhere, and bounded by one
deadline so that a pod stuck provisioning is given up (and terminated by the caller) instead of
billing forever.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from cacheon.log import get_logger
from cacheon.pods.base import Pod, PodFailed, PodState, PodTimeout, Provider, SshRefused
from cacheon.pods.keys import PodKey
from cacheon.pods.ssh_probe import SshNotReady, probe_ssh
from cacheon.sshtarget import SshTarget

log = get_logger("cacheon.pods.ready")


@dataclass(frozen=True)
class ReadyPolicy:
    timeout_s: float
    """The whole wait, from rent to SSH answering."""
    poll_s: float
    ssh_timeout_s: float
    """One SSH attempt: connect, authenticate, run `true`."""


async def wait_ready(provider: Provider, pod: Pod, key: PodKey, policy: ReadyPolicy) -> SshTarget:
    """How to reach the running pod, with the host key it showed (pinned from now on)."""
    deadline = time.monotonic() + policy.timeout_s
    last = "the provider has not reported it running"
    key_refused = False
    while True:
        current = await provider.get(pod.pod_id)
        if current is None or current.state is PodState.GONE:
            raise PodFailed(f"{provider.name} pod {pod.pod_id}: the provider no longer knows it")
        if current.state is PodState.FAILED:
            raise PodFailed(f"{provider.name} pod {pod.pod_id}: the provider reports it failed")
        if current.state is PodState.RUNNING and current.ssh is not None:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                host_key = await probe_ssh(
                    current.ssh, key.private, min(policy.ssh_timeout_s, remaining)
                )
            except SshNotReady as exc:
                last, key_refused = str(exc), exc.key_refused
                log.info("pod not answering SSH yet", pod=pod.pod_id, reason=last)
            else:
                return replace(current.ssh, host_key=host_key)
        else:
            last = f"provider state {current.state}"
        if time.monotonic() + policy.poll_s > deadline:
            message = f"{provider.name} pod {pod.pod_id}: not ready after {policy.timeout_s:.0f}s ({last})"
            raise SshRefused(message) if key_refused else PodTimeout(message)
        await asyncio.sleep(policy.poll_s)
