"""State database: WAL, numbered migrations, one writer per process, refuses a newer schema."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cacheon.store.db import MIGRATIONS, Database, DatabaseError, DatabaseLocked, Migration


def test_open_migrates_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    with Database.open(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        assert db.query("PRAGMA journal_mode")[0][0] == "wal"
        db.set_meta("first_seen", "1")
        db.set_meta("first_seen", "2")
    with Database.open(path) as db:
        assert db.get_meta("first_seen") == "2"
        assert db.get_meta("absent") is None


def test_second_writer_is_refused_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Database.open(path):
        script = (
            "from pathlib import Path\nfrom cacheon.store.db import Database, DatabaseLocked\n"
            f"try:\n    Database.open(Path({str(path)!r}))\nexcept DatabaseLocked as e:\n    print('locked', e)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert result.stdout.startswith("locked")
        with pytest.raises(DatabaseLocked):
            Database.open(path)
    Database.open(path).close()


def test_failed_transaction_rolls_back(tmp_path: Path) -> None:
    with Database.open(tmp_path / "s.db") as db:
        db.set_meta("k", "before")

        def fail_midway() -> None:
            with db.transaction() as conn:
                conn.execute("UPDATE meta SET value = 'after' WHERE key = 'k'")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_midway()
        assert db.get_meta("k") == "before"


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Database.open(path).close()
    broken = (
        *MIGRATIONS,
        Migration(len(MIGRATIONS) + 1, "broken", "CREATE TABLE t(x); SELECT nope FROM t;"),
    )
    with pytest.raises(DatabaseError):
        Database.open(path, broken)
    with Database.open(path) as db:
        assert db.schema_version == len(MIGRATIONS)
        assert not db.query("SELECT name FROM sqlite_master WHERE name = 't'")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Database.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(DatabaseError, match="newer than this validator knows"):
        Database.open(path)
