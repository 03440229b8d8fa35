"""The operator's own GPU machines: a fixed list of `user@host:port <host key>` entries.

Nothing is rented and nothing bills, but the machines are still leased through the same ledger so
that one round at a time uses a machine: create claims a free one (a row in `static_claims`),
terminate releases it. The host key is pinned from the config, never learned; our public key
must already be in the machine's `authorized_keys` (`cacheon-validator keys init` prints it).
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from cacheon.pods.base import Offer, Pod, PodState, ProviderError
from cacheon.sshtarget import SshTarget
from cacheon.store.db import Database

_ENTRY = re.compile(r"^(?P<user>[^@\s]+)@(?P<host>[^:\s]+):(?P<port>\d{1,5})\s+(?P<key>\S+\s+\S+)$")


@dataclass(frozen=True)
class StaticHost:
    user: str
    host: str
    port: int
    host_key: str

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def parse_static_host(entry: str) -> StaticHost:
    """`user@host:port ssh-ed25519 AAAA…` -> StaticHost; ValueError says what is wrong."""
    match = _ENTRY.match(entry.strip())
    if match is None:
        raise ValueError(
            f"pods.static_hosts entry {entry!r} is not `user@host:port <key type> <base64 key>` "
            "(take the key from `ssh-keyscan -p PORT HOST`)"
        )
    return StaticHost(match["user"], match["host"], int(match["port"]), match["key"])


class StaticProvider:
    """`Provider` over a list of machines; claims are rows so they survive a restart."""

    def __init__(self, hosts: list[StaticHost], db: Database) -> None:
        self._hosts = {host.address: host for host in hosts}
        self._db = db

    @property
    def name(self) -> str:
        return "static"

    async def aclose(self) -> None:
        return None

    async def offers(self, gpu_type: str, gpu_count: int, max_price: float) -> list[Offer]:
        # The operator lists machines of the configured hardware; the agent's pod check
        # verifies the GPUs before any round runs on one.
        claimed = self._claims()
        return [
            Offer(self.name, address, gpu_type, gpu_count, 0.0)
            for address in self._hosts
            if address not in claimed
        ]

    async def create(self, offer: Offer, name: str, public_key: str, lifetime_h: float) -> Pod:
        if offer.offer_id not in self._hosts:
            raise ProviderError(f"static host {offer.offer_id} is not in pods.static_hosts")
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO static_claims(address, name, claimed_at) VALUES(?, ?, ?)",
                    (offer.offer_id, name, time.time()),
                )
        except sqlite3.IntegrityError:
            raise ProviderError(f"static host {offer.offer_id} is already claimed") from None
        return self._pod(offer.offer_id, name)

    async def get(self, pod_id: str) -> Pod | None:
        name = self._claims().get(pod_id)
        return None if name is None or pod_id not in self._hosts else self._pod(pod_id, name)

    async def terminate(self, pod_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM static_claims WHERE address = ?", (pod_id,))

    async def list_ours(self, prefix: str) -> list[Pod]:
        return [
            self._pod(address, name)
            for address, name in self._claims().items()
            if name.startswith(prefix) and address in self._hosts
        ]

    def _claims(self) -> dict[str, str]:
        rows = self._db.query("SELECT address, name FROM static_claims")
        return {str(row["address"]): str(row["name"]) for row in rows}

    def _pod(self, address: str, name: str) -> Pod:
        host = self._hosts[address]
        ssh = SshTarget(host.host, host.port, host.user, host.host_key)
        return Pod(self.name, address, name, PodState.RUNNING, 0.0, ssh)
