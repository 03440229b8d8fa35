"""Snapshots of the state database, and restoring one, without racing the daemon.

First-seen records and standings cannot be rebuilt from the chain, so an operator must be able to
copy them out while the validator runs and put them back after a disk loss. A snapshot reads
through its own read-only connection with SQLite's online backup API in one step: one read
transaction, so the copy is a single consistent state, and in WAL mode it never blocks the
daemon's writer (nor takes the writer lock of `db.py`). The copy is turned into a standalone
rollback-journal file, checked, and renamed into place, so a reader never sees half a file.

A restore is the opposite: it takes the writer lock (refusing while a daemon holds it), checks
that the file is a sound Cacheon state database of a schema version this build knows, keeps the
current database under a timestamped name, and renames the new one in.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cacheon.store.db import MIGRATIONS, DatabaseError, DatabaseLocked, Migration

_SIDE_FILES = ("-wal", "-shm")


class NotStateDatabase(DatabaseError):
    """The file is not a sound Cacheon state database this build can use."""


@dataclass(frozen=True)
class StateInfo:
    """What a checked state database holds, for the one line the CLI prints."""

    path: Path
    schema_version: int
    size: int
    standings: int
    first_seen: int


def snapshot(source: Path, dest: Path) -> StateInfo:
    """Copy the live database at `source` to `dest` (replaced atomically); never takes its lock."""
    if not source.exists():
        raise DatabaseError(f"{source}: no state database here; check validator.state_dir")
    check_owner(source.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(dest) as partial:
        info = _copy_checked(source, partial, source)
        os.replace(partial, dest)
    _sync_dir(dest.parent)
    return StateInfo(dest, info.schema_version, info.size, info.standings, info.first_seen)


def inspect(
    path: Path, migrations: Sequence[Migration] = MIGRATIONS, shown: str | Path | None = None
) -> StateInfo:
    """Check that `path` is an intact Cacheon state database of a known schema version.

    `shown` names the file in messages when `path` is a staged copy of it."""
    name = shown or path
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = _schema(conn)
            if check != "ok":
                raise NotStateDatabase(f"{name}: damaged ({check}); use an older snapshot")
            if not 1 <= version <= len(migrations):
                raise NotStateDatabase(
                    f"{name}: schema version {version} is not one this build knows "
                    f"(1..{len(migrations)}); a newer cacheon wrote it, or it is not a state file"
                )
            if tables != _expected_schema(migrations[:version]):
                raise NotStateDatabase(
                    f"{name}: its tables are not those of Cacheon state version {version}"
                )
            counts = [_count(conn, table, tables) for table in ("standings", "first_seen")]
    except sqlite3.DatabaseError as exc:
        raise NotStateDatabase(
            f"{name}: damaged, or not a SQLite database ({exc}); use another snapshot"
        ) from None
    return StateInfo(path, version, path.stat().st_size, counts[0], counts[1])


def restore(snapshot_file: Path, target: Path, *, shown: str | None = None) -> Path | None:
    """Replace the database at `target` with a checked copy of `snapshot_file`.

    Returns where the previous database was kept, or None when there was none. Refuses while a
    process holds the writer lock, and holds that lock itself so no daemon starts mid-swap.
    """
    if not snapshot_file.is_file():
        raise DatabaseError(f"{snapshot_file}: no such snapshot file")
    target.parent.mkdir(parents=True, exist_ok=True)
    check_owner(target.parent)
    with _writer_lock(target), _temporary_beside(target) as staged:
        _copy_checked(snapshot_file, staged, shown or snapshot_file)
        kept = _keep_previous(target, time.time())
        os.replace(staged, target)
        _sync_dir(target.parent)
    return kept


def _copy_checked(source: Path, dest: Path, shown: str | Path) -> StateInfo:
    """One-step online backup of `source` into `dest` as a standalone file, then `inspect` it."""
    try:
        with (
            closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as src,
            closing(sqlite3.connect(dest)) as out,
        ):
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")
            out.commit()
    except sqlite3.Error as exc:
        raise NotStateDatabase(f"{shown}: cannot be read as a SQLite database ({exc})") from None
    info = inspect(dest, shown=shown)
    with open(dest, "rb+") as handle:
        os.fsync(handle.fileno())
    return info


def check_owner(state_dir: Path) -> None:
    """Refuse root on another user's state: SQLite would leave root-owned `-wal`/`-shm` or
    database files there, which the daemon's own user then cannot open."""
    owner = state_dir.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        raise DatabaseError(
            f"{state_dir} belongs to uid {owner}: run this as that user "
            "(sudo -u cacheon cacheon-validator ...), not as root"
        )


def _keep_previous(target: Path, now: float) -> Path | None:
    """Rename the current database and its WAL aside (SQLite finds `<name>-wal` next to it)."""
    if not target.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    kept = target.with_name(f"{target.name}.{stamp}.bak")
    os.replace(target, kept)
    wal = Path(f"{target}-wal")
    if wal.exists():
        os.replace(wal, Path(f"{kept}-wal"))
    Path(f"{target}-shm").unlink(missing_ok=True)  # derived from the WAL; rebuilt on open
    return kept


@contextmanager
def _writer_lock(target: Path) -> Iterator[None]:
    """The same exclusive lock `Database.open` takes, so restore and daemon exclude each other."""
    fd = os.open(f"{target}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseLocked(
                f"{target} is in use by a running validator; stop it first "
                "(systemctl stop cacheon-validator), then import again"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh file name in `path`'s directory (same filesystem, so a rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
    finally:
        for suffix in ("", "-journal", *_SIDE_FILES):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)


def _schema(conn: sqlite3.Connection) -> frozenset[tuple[str, str]]:
    rows = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return frozenset((str(kind), str(name)) for kind, name in rows)


def _count(conn: sqlite3.Connection, table: str, schema: frozenset[tuple[str, str]]) -> int:
    if ("table", table) not in schema:
        return 0  # an older schema version, before the table existed
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (a fixed name)


def _expected_schema(migrations: Sequence[Migration]) -> frozenset[tuple[str, str]]:
    with closing(sqlite3.connect(":memory:")) as conn:
        for migration in migrations:
            conn.executescript(migration.sql)
        return _schema(conn)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
