"""`cacheon-validator state export|import` on real files, a database being written by another
process, and the SeaweedFS S3 server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from cacheon.arena.standings import Change, ChangeKind, Holder, Standings
from cacheon.cli.validator import main
from cacheon.protocol import Digest, Hotkey
from cacheon.store import backup
from cacheon.store.db import MIGRATIONS, Database
from cacheon.testing.services import SeaweedS3
from cacheon.validator.state import ValidatorState

WRITER = Path(__file__).with_name("state_writer.py")
LEADER = Holder(Hotkey("5Leader"), Digest("sha256:" + "a" * 64))
RUNNER = Holder(Hotkey("5Runner"), Digest("sha256:" + "b" * 64))


def _state_dir(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / name
    monkeypatch.setenv("CACHEON_VALIDATOR__STATE_DIR", str(state))
    return state


def _fill(path: Path) -> None:
    with Database.open(path) as db:
        state = ValidatorState(db)
        state.set_standings(Standings(LEADER), [Change(ChangeKind.CROWNED, LEADER)], "r1")
        state.set_standings(Standings(LEADER, RUNNER), [Change(ChangeKind.PROMOTED, RUNNER)], "r2")
        with db.transaction() as conn:
            for i, holder in enumerate((LEADER, RUNNER)):
                conn.execute(
                    "INSERT INTO first_seen(digest, hotkey, uid, block) VALUES(?, ?, ?, ?)",
                    (holder.digest, holder.hotkey, i + 1, 100 + i),
                )


def _dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return list(conn.iterdump())


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()  # noqa: S608


def test_export_then_import_into_an_empty_state_reproduces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _state_dir(tmp_path, "old", monkeypatch)
    _fill(old / "state.db")
    snapshot = tmp_path / "snap.db"
    assert main(["state", "export", "--to", str(snapshot)]) == 0
    out = capsys.readouterr().out
    assert f"to {snapshot}" in out
    assert f"schema {len(MIGRATIONS)}" in out
    assert "2 standings rows, 2 first-seen records" in out

    new = _state_dir(tmp_path, "new", monkeypatch)
    assert main(["state", "import", str(snapshot)]) == 0
    assert "there was none before" in capsys.readouterr().out
    assert _rows(new / "state.db", "standings") == _rows(old / "state.db", "standings")
    assert _dump(new / "state.db") == _dump(old / "state.db")
    with Database.open(new / "state.db") as db:  # the daemon opens it as its own
        _, standings = ValidatorState(db).standings()
    assert standings == Standings(LEADER, RUNNER)


def test_export_defaults_to_the_backups_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state_dir(tmp_path, "state", monkeypatch)
    _fill(state / "state.db")
    assert main(["state", "export"]) == 0
    (made,) = (state / "backups").glob("state-*Z.db")
    assert str(made) in capsys.readouterr().out
    assert backup.inspect(made).standings == 2


def test_snapshots_of_a_database_being_written_are_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds the writer lock and commits pairs of rows; every snapshot taken
    meanwhile holds whole transactions only, and the writer is never held up or refused."""
    state = _state_dir(tmp_path, "live", monkeypatch)
    Database.open(state / "state.db").close()
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(state / "state.db"), "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        counts = []
        for i in range(8):
            snapshot = tmp_path / f"snap-{i}.db"
            assert main(["state", "export", "--to", str(snapshot)]) == 0, capsys.readouterr()
            first_seen = len(_rows(snapshot, "first_seen"))
            assert len(_rows(snapshot, "noise_pairs")) == first_seen
            counts.append(first_seen)
            time.sleep(0.02)
        _, stderr = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, stderr
    assert counts == sorted(counts)
    assert counts[-1] > counts[0], "the snapshots should have seen the writer progress"
    assert len(_rows(state / "state.db", "first_seen")) == 3000


def test_import_refuses_while_a_daemon_holds_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _state_dir(tmp_path, "source", monkeypatch)
    _fill(source / "state.db")
    snapshot = tmp_path / "snap.db"
    assert main(["state", "export", "--to", str(snapshot)]) == 0
    state = _state_dir(tmp_path, "running", monkeypatch)
    with Database.open(state / "state.db") as db:
        before = _dump(state / "state.db")
        assert main(["state", "import", str(snapshot)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "in use by a running validator; stop it first" in err
        assert db.get_meta("anything") is None  # the daemon's database still works
    assert _dump(state / "state.db") == before
    assert not list(state.glob("*.bak"))


def test_import_keeps_the_replaced_database_with_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _state_dir(tmp_path, "source", monkeypatch)
    _fill(source / "state.db")
    snapshot = tmp_path / "snap.db"
    assert main(["state", "export", "--to", str(snapshot)]) == 0
    state = _state_dir(tmp_path, "state", monkeypatch)
    with Database.open(state / "state.db") as db:
        db.set_meta("who", "the old one")
        before = _dump(state / "state.db")
    assert main(["state", "import", str(snapshot)]) == 0
    (kept,) = state.glob("state.db.*Z.bak")
    assert f"kept at {kept}" in capsys.readouterr().out
    assert _dump(kept) == before
    assert _dump(state / "state.db") == _dump(source / "state.db")


def _not_ours(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("PRAGMA user_version=1")
        conn.commit()


def _future(path: Path) -> None:
    with Database.open(path) as db, db.transaction() as conn:
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")


def _damaged(path: Path) -> None:
    _fill(path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # the second page, a table's root: no valid page type
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"not a database, just bytes" * 100), "cannot be read as"),
        (_not_ours, "its tables are not those of Cacheon state version 1"),
        (_future, f"schema version {len(MIGRATIONS) + 1} is not one this build knows"),
        (_damaged, "damaged"),
    ],
    ids=["not-sqlite", "not-cacheon", "newer-schema", "damaged"],
)
def test_import_refuses_a_file_that_is_not_a_known_state(
    make: object,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.db"
    make(bad)  # type: ignore[operator]
    state = _state_dir(tmp_path, "state", monkeypatch)
    _fill(state / "state.db")
    before = _dump(state / "state.db")
    assert main(["state", "import", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert says in err
    assert str(bad) in err
    assert _dump(state / "state.db") == before
    assert sorted(p.name for p in state.iterdir()) == ["state.db", "state.db.lock"]


def test_root_refuses_another_users_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite run as root would leave root-owned files the service's user cannot open."""
    state = _state_dir(tmp_path, "state", monkeypatch)
    _fill(state / "state.db")
    if os.geteuid() == 0:
        os.chown(state, 12345, 12345)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["state", "export", "--to", str(tmp_path / "snap.db")]) == 1
    assert "run this as that user" in capsys.readouterr().err
    assert not (tmp_path / "snap.db").exists()


def test_export_and_import_through_s3(
    s3_env: SeaweedS3,
    ops_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = _state_dir(tmp_path, "old", monkeypatch)
    _fill(old / "state.db")
    location = f"s3://{ops_bucket}/backups/state-test.db"
    assert main(["state", "export", "--to", location]) == 0
    assert f"to {location}" in capsys.readouterr().out
    head = s3_env.client().head_object(Bucket=ops_bucket, Key="backups/state-test.db")
    assert head["ContentType"] == "application/vnd.sqlite3"

    new = _state_dir(tmp_path, "new", monkeypatch)
    assert main(["state", "import", location]) == 0
    assert _dump(new / "state.db") == _dump(old / "state.db")

    assert main(["state", "import", f"s3://{ops_bucket}/backups/missing.db"]) == 1
    assert "no such object" in capsys.readouterr().err
    assert main(["state", "export", "--to", f"s3://{ops_bucket}/"]) == 2
    assert "s3://<bucket>/<key>" in capsys.readouterr().err


def test_s3_errors_are_one_line(
    s3_env: SeaweedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = _state_dir(tmp_path, "state", monkeypatch)
    _fill(state / "state.db")
    monkeypatch.setenv("CACHEON_S3__SECRET_ACCESS_KEY", "wrong")
    assert main(["state", "export", "--to", "s3://cacheon-ops-none/k.db"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("state: S3 put k.db")
