"""One fault case run against a real daemon on a fresh local arena, and what it did.

A trial builds the arena with the chaos injectors already in the path (the pod's SSH through a
TCP proxy, S3 through an HTTP proxy, the chain client flaky on demand), starts the daemon (in this
process, or as `cacheon-validator run` when the case kills it), lets the case inject its fault
and lift it, then waits for the daemon to conclude a round after the fault and to give its pod
back. The judgement reads only the daemon's own database and the fake provider's books.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cacheon.chain.flaky import ChainFaults, FlakyChain
from cacheon.config import Settings
from cacheon.protocol import ProgressEvent
from cacheon.store.db import Database
from cacheon.testing.local_arena import TOY_MINERS, LocalArena, Services, ToyMiner
from cacheon.testing.reliability.chaos import S3Proxy, TcpProxy, small_tmpfs
from cacheon.testing.reliability.report import Row, judge
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon
from cacheon.validator.watch import Step

ROUND_TIMEOUT_S = 420.0
"""Past the 300 s a dead pod's reconnect window holds a round (`remote.jobs`)."""
RELEASE_GRACE_S = 30.0
TERMINAL = ("scored", "void")


class TrialTimeout(Exception):
    """The daemon did not reach what the trial waited for."""


@dataclass(frozen=True)
class Case:
    """A fault, when and how it is injected (`inject` returns once it is lifted), and the
    outcomes of the faulted round that are right for it."""

    name: str
    group: str
    fault: str
    inject: Callable[[Trial], Awaitable[None]]
    expect: frozenset[str]
    miners: tuple[ToyMiner, ...] = tuple(m for m in TOY_MINERS if m.name in ("fast", "slow"))
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    subprocess: bool = False
    """Run `cacheon-validator run` as operators do (the case may SIGKILL it)."""
    state_tmpfs_mb: int = 0
    """Mount a tmpfs of this size as the state directory (the disk-full case)."""


@dataclass
class Trial:
    arena: LocalArena
    ssh: TcpProxy
    s3: S3Proxy
    chain: ChainFaults
    settings: Settings
    config: Path
    log: Path
    fault_start: float = 0.0
    fault_end: float = 0.0
    daemon: Daemon | None = None
    process: subprocess.Popen[bytes] | None = None
    task: asyncio.Task[int] | None = None
    events: list[ProgressEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdicts_before_kill: set[int] = field(default_factory=set)

    @property
    def db_path(self) -> Path:
        return state_path(self.settings)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []  # not migrated yet, or the disk is full
        finally:
            conn.close()

    def running_round(self) -> sqlite3.Row | None:
        rows = self.rows("SELECT * FROM rounds WHERE state = 'running' AND job_pid IS NOT NULL")
        return rows[0] if rows else None

    def start_fault(self) -> None:
        self.fault_start = time.time()

    def end_fault(self) -> None:
        self.fault_end = time.time()

    async def until(self, what: str, check: Callable[[], bool], timeout_s: float = 0) -> None:
        deadline = time.monotonic() + (timeout_s or ROUND_TIMEOUT_S)
        while not check():
            if self.task is not None and self.task.done():
                raise TrialTimeout(f"the daemon ended ({self.task.result()}) before {what}")
            if self.process is not None and self.process.poll() is not None:
                raise TrialTimeout(f"the daemon exited {self.process.returncode} before {what}")
            if time.monotonic() > deadline:
                raise TrialTimeout(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    # --- the daemon, in this process or as operators run it -------------------------------

    def start_process(self) -> None:
        env = {**os.environ, **self.arena.secrets_env(), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "cacheon.cli.validator", "run", "--config", str(self.config)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def kill_process(self) -> None:
        if self.process is None:
            raise TrialTimeout("no daemon process to kill")
        self.verdicts_before_kill = {r["id"] for r in self.rows("SELECT id FROM verdicts")}
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def start_in_process(self, db: Database) -> None:
        parts = build_parts(self.settings, db)
        # the trial watches the agent's progress the way the runner reports it
        watcher = _Progress(self.events)
        parts = replace(parts, chain=FlakyChain(self.settings.chain, self.chain), watcher=watcher)
        self.daemon = Daemon(self.settings, parts)
        self.task = asyncio.create_task(self.daemon.run())

    async def stop(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.stop()
            try:
                await asyncio.wait_for(self.task, 60)
            except TimeoutError:  # wait_for cancelled it: recorded, the next case still runs
                self.notes.append("did not stop within 60 s of stop()")
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.notes.append("did not stop within 60 s of SIGTERM")


def run_case(case: Case, services: Services, root: Path) -> Row:
    """Run one case on a fresh arena under `root`; never raises for the daemon's failures."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if case.state_tmpfs_mb:
            stack.enter_context(small_tmpfs(root / "state", case.state_tmpfs_mb))
        return _run_case(case, services, root, started)


def _run_case(case: Case, services: Services, root: Path, started: float) -> Row:
    arena = LocalArena.create(root, services, miners=case.miners)
    ssh, s3 = TcpProxy(services.pod.port), S3Proxy(services.s3.endpoint_url)
    services.loop.run(ssh.start())
    services.loop.run(s3.start())
    arena.lium.pods_host.port = ssh.port
    overrides: dict[str, dict[str, Any]] = {
        "s3": {"endpoint_url": s3.endpoint_url},
        "web": {"port": 0},
        "pods": {"ready_timeout_s": 8.0},
    }
    for table, values in case.overrides.items():
        overrides[table] = {**overrides.get(table, {}), **values}
    settings = arena.settings(**overrides)
    trial = Trial(
        arena, ssh, s3, ChainFaults(), settings,
        arena.write_config(root / "validator.toml", **overrides), root / "daemon.log",
    )  # fmt: skip
    try:
        arena.commit(*(m.name for m in case.miners))
        return asyncio.run(_judge(case, trial, started))
    finally:
        services.loop.run(ssh.stop())
        services.loop.run(s3.stop())
        arena.close()


async def _judge(case: Case, trial: Trial, started: float) -> Row:
    arena = trial.arena
    db = None if case.subprocess else Database.open(trial.db_path)
    error = ""
    try:
        if db is None:
            trial.start_process()
        else:
            trial.start_in_process(db)
        await case.inject(trial)
        if not trial.fault_end:
            trial.end_fault()
        await trial.until("a round concluded after the fault", lambda: _concluded_after(trial))
        await trial.until("weights on chain", lambda: bool(_weights_set(trial)))
        with contextlib.suppress(TrialTimeout):  # a pod still live is counted as leaked
            await trial.until(
                "the pod's release", lambda: not arena.lium.live_pods(), RELEASE_GRACE_S
            )
    except (TrialTimeout, OSError) as exc:
        error = str(exc)
    finally:
        await trial.stop()
        if db is not None:
            db.close()
    return judge(case, trial, time.monotonic() - started, error)


def _concluded_after(trial: Trial) -> bool:
    """A round scored since the fault hit: the hit round itself, or the retry of a void one."""
    return bool(
        trial.rows(
            "SELECT 1 FROM rounds WHERE state = 'scored' AND ended_at >= ?", (trial.fault_start,)
        )
    )


def _weights_set(trial: Trial) -> list[sqlite3.Row]:
    return trial.rows("SELECT * FROM weights_log WHERE status = 'set'")


class _Progress:
    """A `RoundWatcher` that keeps the agents' progress lines, for the fault's trigger."""

    def __init__(self, events: list[ProgressEvent]) -> None:
        self.events = events

    def step(self, step: Step, detail: str, round_id: str | None = None) -> None:
        """Steps are not what a fault waits for."""

    def progress(self, event: ProgressEvent, round_id: str | None = None) -> None:
        self.events.append(event)
