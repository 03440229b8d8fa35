"""The validator's SQLite state: WAL mode, numbered migrations, one writer per process.

First-seen records and standings are irreplaceable, so the database is opened with WAL and full
synchronous commits, migrations run inside a transaction each, and a second process that tries
to write the same file is refused up front (an exclusive lock file) instead of racing. Other
parts add their tables by appending a migration to `MIGRATIONS`; a migration, once released, is
never edited.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "meta",
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "first_seen",
        """
        CREATE TABLE first_seen (
            digest TEXT NOT NULL,
            hotkey TEXT NOT NULL,
            uid    INTEGER,
            block  INTEGER NOT NULL,
            PRIMARY KEY (digest, hotkey)
        );
        """,
    ),
    Migration(
        3,
        "pod_leases",
        """
        CREATE TABLE pod_leases (
            name           TEXT PRIMARY KEY,
            provider       TEXT NOT NULL,
            offer_id       TEXT NOT NULL,
            pod_id         TEXT,
            state          TEXT NOT NULL,
            price_per_hour REAL NOT NULL,
            ssh_host       TEXT,
            ssh_port       INTEGER,
            ssh_user       TEXT,
            host_key       TEXT,
            created_at     REAL NOT NULL,
            expires_at     REAL NOT NULL,
            ready_at       REAL,
            last_used_at   REAL,
            ended_at       REAL,
            detail         TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX pod_leases_pod ON pod_leases(provider, pod_id);
        CREATE TABLE static_claims (
            address    TEXT PRIMARY KEY,
            name       TEXT NOT NULL UNIQUE,
            claimed_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "round_keys",
        """
        CREATE TABLE round_keys (
            round_id   TEXT PRIMARY KEY,
            hmac_key   BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "validator_state",
        """
        CREATE TABLE submissions (
            hotkey       TEXT NOT NULL,
            digest       TEXT NOT NULL,
            image        TEXT NOT NULL,
            uid          INTEGER NOT NULL,
            first_seen   INTEGER NOT NULL,
            layers       TEXT,
            size         INTEGER,
            current      INTEGER NOT NULL DEFAULT 1,
            seen_at      REAL NOT NULL,
            PRIMARY KEY (hotkey, digest)
        );
        CREATE TABLE rounds (
            round_id   TEXT PRIMARY KEY,
            block      INTEGER NOT NULL,
            block_hash TEXT NOT NULL,
            salt       TEXT NOT NULL,
            salt_hash  TEXT NOT NULL,
            seed       TEXT NOT NULL,
            state      TEXT NOT NULL,
            reason     TEXT,
            detail     TEXT NOT NULL DEFAULT '',
            job        TEXT NOT NULL,
            report     TEXT,
            pod        TEXT,
            job_dir    TEXT,
            job_pid    INTEGER,
            started_at REAL NOT NULL,
            ended_at   REAL
        );
        CREATE TABLE verdicts (
            id                 INTEGER PRIMARY KEY,
            round_id           TEXT,
            hotkey             TEXT NOT NULL,
            digest             TEXT NOT NULL,
            outcome            TEXT NOT NULL,
            reason             TEXT,
            detail             TEXT NOT NULL DEFAULT '',
            attribution        TEXT,
            charged            INTEGER NOT NULL DEFAULT 0,
            evaluation_version TEXT NOT NULL,
            created_at         REAL NOT NULL
        );
        CREATE INDEX verdicts_digest ON verdicts(digest);
        CREATE TABLE evidence (
            digest         TEXT NOT NULL,
            kind           TEXT NOT NULL,
            against        TEXT NOT NULL,
            launches       INTEGER NOT NULL,
            total          REAL NOT NULL,
            variance_units REAL NOT NULL,
            call           TEXT,
            PRIMARY KEY (digest, kind)
        );
        CREATE TABLE noise_pairs (
            round_id TEXT NOT NULL,
            value    REAL NOT NULL
        );
        CREATE TABLE behaves_like (
            digest TEXT NOT NULL,
            leader TEXT NOT NULL,
            PRIMARY KEY (digest, leader)
        );
        CREATE TABLE evaluation_starts (
            hotkey TEXT NOT NULL,
            digest TEXT NOT NULL,
            block  INTEGER NOT NULL,
            PRIMARY KEY (hotkey, digest)
        );
        CREATE TABLE standings (
            id            INTEGER PRIMARY KEY,
            round_id      TEXT,
            leader_hotkey TEXT,
            leader_digest TEXT,
            runner_hotkey TEXT,
            runner_digest TEXT,
            changes       TEXT NOT NULL,
            created_at    REAL NOT NULL
        );
        CREATE TABLE weights_log (
            id          INTEGER PRIMARY KEY,
            standings_id INTEGER,
            block       INTEGER NOT NULL,
            vector      TEXT NOT NULL,
            status      TEXT NOT NULL,
            detail      TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL
        );
        """,
    ),
    Migration(
        6,
        "evaluation_versions",
        # Evidence, noise pairs and charges are kept per evaluation version (DESIGN.md §4.5): a
        # decision reached under other rules or another baseline is another decision. Evidence
        # from before this migration belongs to no version, which restarts pending challengers.
        """
        CREATE TABLE evidence_by_version (
            digest             TEXT NOT NULL,
            kind               TEXT NOT NULL,
            evaluation_version TEXT NOT NULL,
            against            TEXT NOT NULL,
            launches           INTEGER NOT NULL,
            total              REAL NOT NULL,
            variance_units     REAL NOT NULL,
            squares            REAL NOT NULL DEFAULT 0,
            call               TEXT,
            PRIMARY KEY (digest, kind, evaluation_version)
        );
        INSERT INTO evidence_by_version(digest, kind, evaluation_version, against, launches,
            total, variance_units, call)
            SELECT digest, kind, '', against, launches, total, variance_units, call FROM evidence;
        DROP TABLE evidence;
        ALTER TABLE evidence_by_version RENAME TO evidence;
        ALTER TABLE noise_pairs ADD COLUMN evaluation_version TEXT NOT NULL DEFAULT '';
        ALTER TABLE verdicts ADD COLUMN checks TEXT NOT NULL DEFAULT '';
        CREATE TABLE fingerprints (
            digest      TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL
        );
        """,
    ),
)


class DatabaseError(Exception):
    """The state database cannot be used; the message says why and what to do."""


class DatabaseLocked(DatabaseError):
    """Another process already writes this database."""


class Database:
    """One connection, one writer lock; safe to share between threads of one process."""

    def __init__(self, conn: sqlite3.Connection, lock_fd: int, path: Path) -> None:
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> Database:
        path = path.expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise DatabaseLocked(
                f"{path} is in use by another process; stop it or point validator.state_dir elsewhere"
            ) from None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = cls(conn, lock_fd, path)
            db.migrate(migrations)
        except sqlite3.DatabaseError as exc:
            os.close(lock_fd)
            raise DatabaseError(
                f"{path}: {exc}; restore it with `cacheon-validator state import`"
            ) from None
        except BaseException:
            os.close(lock_fd)
            raise
        return db

    def close(self) -> None:
        with self._mutex:
            self._conn.close()
            os.close(self._lock_fd)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def migrate(self, migrations: Sequence[Migration]) -> None:
        versions = [m.version for m in migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise DatabaseError(f"migrations must be numbered 1..n without gaps, got {versions}")
        current = self.schema_version
        if current > len(migrations):
            raise DatabaseError(
                f"{self.path} has schema version {current}, newer than this validator knows "
                f"({len(migrations)}); upgrade cacheon"
            )
        for migration in migrations[current:]:
            # executescript commits any open transaction first, so the script carries its own.
            with self._mutex:
                try:
                    self._conn.executescript(
                        f"BEGIN IMMEDIATE;\n{migration.sql}\n;"
                        f"PRAGMA user_version={migration.version};\nCOMMIT;"
                    )
                except sqlite3.Error:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE): committed on success, rolled back on error."""
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._conn.execute(sql, params).fetchall()

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
