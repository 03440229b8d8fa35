"""The lease ledger: one row per pod we ever asked for, written before the rent call.

A leaked 8xH200 pod costs hundreds of dollars a day, so the row exists before the provider can
have created anything (state `renting`, with the unique pod name) and is updated at every state
change. Whatever the process dies in the middle of, the next start finds the name and the sweep
can end the pod.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from enum import StrEnum

from cacheon.pods.base import Offer
from cacheon.sshtarget import SshTarget
from cacheon.store.db import Database

INSTANCE_META_KEY = "pods.instance_id"


class LeaseState(StrEnum):
    RENTING = "renting"
    """Recorded before the rent call; the provider's pod id is not known yet."""
    STARTING = "starting"
    """The provider gave a pod id; waiting for it to answer SSH."""
    READY = "ready"
    RELEASING = "releasing"
    """Termination asked for but not confirmed; the sweep retries it."""
    RELEASED = "released"
    FAILED = "failed"
    """It never became usable; the pod was terminated."""
    LOST = "lost"
    """The pod died or vanished while leased."""


LIVE_STATES = frozenset(
    {LeaseState.RENTING, LeaseState.STARTING, LeaseState.READY, LeaseState.RELEASING}
)
ENDED_STATES = frozenset({LeaseState.RELEASED, LeaseState.FAILED, LeaseState.LOST})


@dataclass(frozen=True)
class Lease:
    name: str
    provider: str
    offer_id: str
    pod_id: str | None
    state: LeaseState
    price_per_hour: float
    ssh: SshTarget | None
    """With the host key pinned at first contact, once ready."""
    created_at: float
    expires_at: float
    ready_at: float | None
    last_used_at: float | None
    ended_at: float | None
    detail: str

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class LeaseLedger:
    """Reads and writes `pod_leases`; every write is one committed transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def instance_id(self) -> str:
        """A random id of this validator's state, part of every pod name it rents."""
        with self._db.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (INSTANCE_META_KEY,))
            found = row.fetchone()
            if found is not None:
                return str(found["value"])
            value = secrets.token_hex(3)
            conn.execute("INSERT INTO meta(key, value) VALUES(?, ?)", (INSTANCE_META_KEY, value))
            return value

    def pod_prefix(self, name_prefix: str) -> str:
        """Every pod this validator rents is named `<pods.name_prefix>-<state id>-<random>`."""
        return f"{name_prefix}-{self.instance_id()}-"

    def record(self, name: str, offer: Offer, now: float, expires_at: float) -> Lease:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO pod_leases(name, provider, offer_id, state, price_per_hour, "
                "created_at, expires_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (name, offer.provider, offer.offer_id, LeaseState.RENTING, offer.price_per_hour,
                 now, expires_at),
            )  # fmt: skip
        return self._require(name)

    def set_pod(self, name: str, pod_id: str, price_per_hour: float) -> Lease:
        """The provider named the pod; a known price replaces the offer's."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE pod_leases SET pod_id = ?, state = ?, "
                "price_per_hour = CASE WHEN ? > 0 THEN ? ELSE price_per_hour END WHERE name = ?",
                (pod_id, LeaseState.STARTING, price_per_hour, price_per_hour, name),
            )
        return self._require(name)

    def set_ready(self, name: str, ssh: SshTarget, now: float) -> Lease:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE pod_leases SET state = ?, ssh_host = ?, ssh_port = ?, ssh_user = ?, "
                "host_key = ?, ready_at = ?, last_used_at = ? WHERE name = ?",
                (LeaseState.READY, ssh.host, ssh.port, ssh.user, ssh.host_key, now, now, name),
            )
        return self._require(name)

    def touch(self, name: str, now: float) -> None:
        with self._db.transaction() as conn:
            conn.execute("UPDATE pod_leases SET last_used_at = ? WHERE name = ?", (now, name))

    def set_state(self, name: str, state: LeaseState, detail: str, now: float) -> Lease:
        ended = now if state in ENDED_STATES else None
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE pod_leases SET state = ?, detail = ?, ended_at = COALESCE(?, ended_at) "
                "WHERE name = ?",
                (state, detail, ended, name),
            )
        return self._require(name)

    def get(self, name: str) -> Lease | None:
        rows = self._db.query("SELECT * FROM pod_leases WHERE name = ?", (name,))
        return _lease(rows[0]) if rows else None

    def by_pod(self, provider: str, pod_id: str) -> Lease | None:
        rows = self._db.query(
            "SELECT * FROM pod_leases WHERE provider = ? AND pod_id = ?", (provider, pod_id)
        )
        return _lease(rows[0]) if rows else None

    def live(self) -> list[Lease]:
        marks = ",".join("?" * len(LIVE_STATES))
        rows = self._db.query(
            f"SELECT * FROM pod_leases WHERE state IN ({marks}) ORDER BY created_at",  # noqa: S608
            tuple(LIVE_STATES),
        )
        return [_lease(row) for row in rows]

    def active_since(self, start: float) -> list[Lease]:
        """Leases that were billing at some point after `start` (for the budget)."""
        rows = self._db.query(
            "SELECT * FROM pod_leases WHERE ended_at IS NULL OR ended_at > ? ORDER BY created_at",
            (start,),
        )
        return [_lease(row) for row in rows]

    def recent(self, limit: int) -> list[Lease]:
        rows = self._db.query("SELECT * FROM pod_leases ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_lease(row) for row in rows]

    def _require(self, name: str) -> Lease:
        lease = self.get(name)
        if lease is None:
            raise LookupError(f"lease {name} is not in the ledger")
        return lease


def _lease(row: sqlite3.Row) -> Lease:
    ssh = (
        SshTarget(row["ssh_host"], int(row["ssh_port"]), row["ssh_user"], row["host_key"])
        if row["ssh_host"] is not None
        else None
    )
    return Lease(
        name=row["name"],
        provider=row["provider"],
        offer_id=row["offer_id"],
        pod_id=row["pod_id"],
        state=LeaseState(row["state"]),
        price_per_hour=float(row["price_per_hour"]),
        ssh=ssh,
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        ready_at=row["ready_at"],
        last_used_at=row["last_used_at"],
        ended_at=row["ended_at"],
        detail=row["detail"],
    )
