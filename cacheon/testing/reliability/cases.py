"""The fault-injection matrix (issue 12): each case injects one fault around a real daemon and
lifts it; `trial.run_case` judges what the daemon made of it.

Triggers are read from the daemon's own state (a round planned, a pod leased, the agent running,
the report in S3, the round scored) or from the agent's progress, so a fault lands in the phase
it names however fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Awaitable, Callable

from botocore.exceptions import ClientError

from cacheon.protocol import Phase
from cacheon.testing.local_arena import TOY_MINERS, ToyMiner
from cacheon.testing.reliability.chaos import fill
from cacheon.testing.reliability.trial import Case, Trial, TrialTimeout
from cacheon.testing.toy_server import Fault, Knobs, Speed

SURVIVED = frozenset({"survived"})
VOID = frozenset({"NO_DECISION"})
EITHER = SURVIVED | VOID
HOLD_S = 4.0
"""How long a transient fault lasts once it has hit."""


def _running(trial: Trial) -> bool:
    return trial.running_round() is not None


async def _when_running(trial: Trial) -> None:
    await trial.until("the agent running", lambda: _running(trial))


async def _hold(trial: Trial, seconds: float = HOLD_S) -> None:
    await asyncio.sleep(seconds)
    trial.end_fault()


# --- chain ---------------------------------------------------------------------------------------


async def chain_down(trial: Trial) -> None:
    await _when_running(trial)
    trial.start_fault()
    trial.chain.down = True
    await trial.until("the round's end", lambda: not _running(trial))
    await _hold(trial)  # the weights step and the next polls meet a dead node
    trial.chain.down = False


async def chain_slow(trial: Trial) -> None:
    trial.start_fault()
    trial.chain.delay_s = 1.5
    await trial.until("a scored round", lambda: bool(trial.rows(_SCORED)))
    trial.chain.delay_s = 0.0
    trial.end_fault()


async def chain_errors(trial: Trial) -> None:
    trial.start_fault()
    trial.chain.errors = 6
    await trial.until("the errors spent", lambda: trial.chain.errors == 0)
    trial.end_fault()


async def chain_fallback(trial: Trial) -> None:
    trial.start_fault()
    trial.chain.dead_connects = 1
    await trial.until("a second connection", lambda: len(trial.chain.connects) >= 2)
    trial.notes.append("connections: " + ", ".join(trial.chain.connects[:3]))
    trial.end_fault()


# --- provider ------------------------------------------------------------------------------------


def _provider(**faults: object) -> Callable[[Trial], Awaitable[None]]:
    async def inject(trial: Trial) -> None:
        trial.start_fault()
        for name, value in faults.items():
            setattr(trial.arena.lium.faults, name, value)
        trial.end_fault()

    return inject


async def pod_dies(trial: Trial) -> None:
    await _when_running(trial)
    trial.start_fault()
    row = _round(trial)
    lium = trial.arena.lium
    for pod in lium.live_pods():
        lium.kill(pod["id"])
    trial.ssh.refuse = True
    await trial.ssh.cut()
    _kill(row["job_pid"])
    await trial.until("the round's end", lambda: not _running(trial))
    trial.ssh.refuse = False
    trial.end_fault()


async def pod_never_ssh(trial: Trial) -> None:
    trial.start_fault()
    trial.arena.lium.faults.stuck = True
    await trial.until("a void round", lambda: bool(trial.rows(_VOID)))
    trial.arena.lium.faults.stuck = False
    trial.end_fault()


# --- SSH -----------------------------------------------------------------------------------------


async def ssh_drop_bootstrap(trial: Trial) -> None:
    await trial.until("the first SSH session", lambda: trial.ssh.connections >= 2)
    trial.start_fault()
    await trial.ssh.cut()
    trial.end_fault()


async def ssh_drop_run(trial: Trial) -> None:
    await trial.until("a measured block", lambda: _phase(trial, Phase.MEASURE))
    trial.start_fault()
    trial.notes.append(f"cut {await trial.ssh.cut()} connection(s)")
    trial.end_fault()


async def ssh_drop_upload(trial: Trial) -> None:
    await trial.until("the agent's upload", lambda: _phase(trial, Phase.UPLOAD))
    trial.start_fault()
    trial.notes.append(f"cut {await trial.ssh.cut()} connection(s)")
    trial.end_fault()


def _phase(trial: Trial, phase: Phase) -> bool:
    return any(event.phase is phase for event in trial.events)


# --- S3 ------------------------------------------------------------------------------------------


async def s3_down(trial: Trial) -> None:
    await _when_running(trial)
    trial.start_fault()
    trial.s3.faults.down = True
    await _hold(trial, 8.0)
    trial.s3.faults.down = False


async def s3_slow(trial: Trial) -> None:
    trial.start_fault()
    trial.s3.faults.delay_s = 0.5
    await trial.until("a scored round", lambda: bool(trial.rows(_SCORED)))
    trial.s3.faults.delay_s = 0.0
    trial.end_fault()


async def s3_errors(trial: Trial) -> None:
    await _when_running(trial)
    trial.start_fault()
    trial.s3.faults.errors = 6
    await trial.until("the errors spent", lambda: trial.s3.faults.errors == 0)
    trial.end_fault()


async def s3_expired(trial: Trial) -> None:
    await _when_running(trial)
    trial.start_fault()
    trial.s3.faults.expired = 3
    await trial.until("the expired answers spent", lambda: trial.s3.faults.expired == 0)
    trial.end_fault()


# --- agent, contestant, disk ---------------------------------------------------------------------


async def agent_crash(trial: Trial) -> None:
    await trial.until("a measured block", lambda: _phase(trial, Phase.MEASURE))
    row = _round(trial)
    trial.start_fault()
    _kill(row["job_pid"])
    trial.end_fault()


async def contestant_exits(trial: Trial) -> None:
    trial.start_fault()
    trial.end_fault()


async def disk_full(trial: Trial) -> None:
    """The state directory fills while the agent measures and stays full past the agent's end:
    nothing can be written (not even the round's end), so the daemon must keep its data and
    settle the round once space is back."""
    await _when_running(trial)
    trial.start_fault()
    filler = fill(trial.db_path.parent)
    await trial.until("the agent's end on a full disk", lambda: _agent_done(trial), 120)
    await asyncio.sleep(HOLD_S)
    filler.unlink()
    trial.end_fault()


def _agent_done(trial: Trial) -> bool:
    row = trial.running_round()
    if row is None:
        return True
    key = f"cacheon/rounds/{row['round_id']}/report.json"
    try:
        trial.arena.services.s3.client().head_object(Bucket=trial.arena.bucket, Key=key)
    except ClientError:
        return False
    return True


def _round(trial: Trial) -> sqlite3.Row:
    row = trial.running_round()
    if row is None:
        raise TrialTimeout("the round ended before the fault could hit it")
    return row


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_SCORED = "SELECT 1 FROM rounds WHERE state = 'scored'"
_VOID = "SELECT 1 FROM rounds WHERE state = 'void'"
CRASHER = ToyMiner("crasher", Knobs(speed=Speed(ttft_s=0.04, token_s=0.02), fault=Fault.CRASH))
FAST_SLOW = tuple(m for m in TOY_MINERS if m.name in ("fast", "slow"))

CASES: tuple[Case, ...] = (
    Case("no fault", "reference", "none", _provider(), SURVIVED),
    Case("chain down", "chain", f"node refuses every call from the agent's run to {HOLD_S:g} s after the round", chain_down, SURVIVED),
    Case("chain slow", "chain", "1.5 s added to every call (deadline 10 s)", chain_slow, SURVIVED),
    Case("chain errors", "chain", "6 calls answer an RPC error", chain_errors, SURVIVED),
    Case("chain fallback", "chain", "primary endpoint refuses; the client reconnects", chain_fallback, SURVIVED),
    Case("provider 429", "provider", "3 answers 429 Retry-After: 1", _provider(rate_limited=3), SURVIVED),
    Case("provider 500", "provider", "3 answers 500", _provider(server_errors=3), EITHER),
    Case("lost create answer", "provider", "the rent is made, its answer dropped", _provider(lose_create_answer=True), SURVIVED),
    Case("pod dies mid-round", "provider", "pod FAILED, SSH refused, agent killed while measuring", pod_dies, VOID),
    Case("pod never gets SSH", "provider", "pods stay provisioning (ready timeout 8 s)", pod_never_ssh, VOID),
    Case("SSH drop: bootstrap", "ssh", "every SSH connection cut during the agent install", ssh_drop_bootstrap, EITHER),
    Case("SSH drop: run", "ssh", "every SSH connection cut while the agent measures", ssh_drop_run, SURVIVED),
    Case("SSH drop: upload", "ssh", "every SSH connection cut as the agent uploads", ssh_drop_upload, SURVIVED),
    Case("S3 unavailable", "s3", "every S3 request dropped for 8 s while the agent runs", s3_down, EITHER),
    Case("S3 slow", "s3", "0.5 s added to every S3 request", s3_slow, SURVIVED),
    Case("S3 500", "s3", "6 S3 requests answer 500 InternalError", s3_errors, SURVIVED),
    Case("presigned URL expired", "s3", "URLs live 60 s; 3 presigned PUTs answer 403 expired", s3_expired, SURVIVED, overrides={"s3": {"url_expiry_s": 60}}),
    Case("agent crash", "agent", "the agent SIGKILLed while it measures", agent_crash, VOID),
    Case("contestant exits", "contestant", "a contestant exits on its first request", contestant_exits, frozenset({"FAIL"}), miners=(*FAST_SLOW, CRASHER)),
    Case("disk full", "state", "state dir on a 256 MiB tmpfs filled while the agent runs", disk_full, EITHER, state_tmpfs_mb=256),
)  # fmt: skip
