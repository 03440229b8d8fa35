"""`cacheon-validator run` as operators run it: SIGKILL mid-round, restart, nothing lost or leaked."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cacheon.testing.local_arena import NETUID, LocalArena

DEADLINE_S = 240.0


def _rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not migrated yet
    finally:
        conn.close()


def _wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"daemon exited {proc.returncode} waiting for {what}:\n{_tail(log)}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


def test_killed_mid_round_the_restart_resolves_it(local_arena: LocalArena, tmp_path: Path) -> None:
    arena = local_arena
    config = arena.write_config(tmp_path / "validator.toml")
    env = {**os.environ, **arena.secrets_env(), "PYTHONUNBUFFERED": "1"}
    db = Path(arena.config()["validator"]["state_dir"]) / "state.db"
    log = tmp_path / "daemon.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            argv = [sys.executable, "-m", "cacheon.cli.validator", "run", "--config", str(config)]
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    arena.commit("fast", "second", "slow")
    daemon = start()
    try:
        _wait(
            "the first round",
            lambda: bool(_rows(db, "SELECT 1 FROM rounds WHERE state = 'scored'")),
            daemon,
            log,
        )
        _wait(
            "weights",
            lambda: bool(_rows(db, "SELECT 1 FROM weights_log WHERE status = 'set'")),
            daemon,
            log,
        )
        standings = _rows(db, "SELECT * FROM standings ORDER BY id DESC LIMIT 1")[0]
        assert arena.name_of(standings["leader_hotkey"]) == "fast"
        assert arena.name_of(standings["runner_hotkey"]) == "second"

        arena.commit("late")
        running = "SELECT round_id FROM rounds WHERE state = 'running' AND job_pid IS NOT NULL"
        _wait("the second round's agent", lambda: bool(_rows(db, running)), daemon, log)
        killed_round = _rows(db, running)[0]["round_id"]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)

        daemon = start()
        over = "SELECT state FROM rounds WHERE round_id = ? AND state IN ('scored', 'void')"
        _wait("the killed round", lambda: bool(_rows(db, over, (killed_round,))), daemon, log)
        assert _rows(db, over, (killed_round,))[0]["state"] == "scored", _tail(log)
        late = _rows(db, "SELECT outcome, reason FROM verdicts ORDER BY id DESC")
        assert any(r["outcome"] in ("PASS", "FAIL") for r in late)
        _wait("the idle pod's release", lambda: arena.lium.live_pods() == [], daemon, log)
        time.sleep(2)  # a few more loop passes: weights must not be set again
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, _tail(log)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)

    assert arena.lium.live_pods() == []
    assert "resuming round" in log.read_text()
    successes = Counter(
        r["standings_id"]
        for r in _rows(db, "SELECT standings_id FROM weights_log WHERE status = 'set'")
    )
    assert successes
    assert max(successes.values()) == 1, successes
    head = arena.devnet.head()
    assert arena.devnet.weights(NETUID, head)[arena.validator.uid]
