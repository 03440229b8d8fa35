"""Does a pod answer SSH with our key? One connection, one `true`, and the host key it showed.

This is the readiness check of a rent, not the transport: `remote/ssh.py` owns sessions,
streaming and reattach. A pod whose host key the provider does not publish is pinned on this
first contact (the key is recorded in the lease, and every later connection must match it).
"""

from __future__ import annotations

import asyncio

import asyncssh

from cacheon.pods.base import SshRefused
from cacheon.sshtarget import SshTarget


class SshNotReady(Exception):
    """SSH did not (yet) let us in; `key_refused` tells a rejected key from no answer."""

    def __init__(self, reason: str, *, key_refused: bool = False) -> None:
        super().__init__(reason)
        self.key_refused = key_refused


async def probe_ssh(target: SshTarget, key: asyncssh.SSHKey, timeout_s: float) -> str:
    """Run `true` on the target; return its host key as `<type> <base64>`.

    Raises SshRefused when the host key differs from a pinned one (never worth a retry), and
    SshNotReady otherwise (no listener yet, banner timeout, key not propagated yet).
    """
    known_hosts = (
        asyncssh.import_known_hosts(f"[{target.host}]:{target.port} {target.host_key}\n")
        if target.host_key
        else None
    )
    where = f"{target.user}@{target.host}:{target.port}"
    try:
        async with asyncio.timeout(timeout_s):
            async with asyncssh.connect(
                target.host,
                target.port,
                username=target.user,
                client_keys=[key],
                known_hosts=known_hosts,
                agent_path=None,
                preferred_auth="publickey",
                connect_timeout=timeout_s,
                config=None,
            ) as conn:
                result = await conn.run("true", check=False)
                shown = conn.get_server_host_key()
    except asyncssh.HostKeyNotVerifiable:
        raise SshRefused(f"{where}: host key is not the pinned {target.host_key}") from None
    except asyncssh.PermissionDenied:
        raise SshNotReady(f"{where}: our key was not accepted", key_refused=True) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise SshNotReady(f"{where}: {type(exc).__name__}: {exc}") from None
    if result.exit_status != 0 or shown is None:
        raise SshNotReady(f"{where}: `true` exited {result.exit_status}")
    return " ".join(shown.export_public_key().decode().split()[:2])
