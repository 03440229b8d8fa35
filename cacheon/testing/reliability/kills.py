"""`cacheon-validator run` SIGKILLed in each phase of a round, then started again.

The restart must resolve the round it left (resume the agent, or void the round and retry its
challengers), release or reuse the pod it had, never set weights twice, and lose no verdict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from botocore.exceptions import ClientError

from cacheon.testing.reliability.trial import Case, Trial

EITHER = frozenset({"survived", "NO_DECISION"})


def _kill_when(what: str, check: Callable[[Trial], bool]) -> Callable[[Trial], Awaitable[None]]:
    async def inject(trial: Trial) -> None:
        await trial.until(what, lambda: check(trial), 300)
        trial.start_fault()
        # the kill hits the newest round, even one that concluded just before it (judged then
        # by what the restart does to it: nothing twice, nothing lost)
        newest = trial.rows("SELECT started_at FROM rounds ORDER BY started_at DESC LIMIT 1")
        if newest:
            trial.fault_start = min(trial.fault_start, float(newest[0]["started_at"]))
        trial.kill_process()
        trial.start_process()
        trial.end_fault()

    return inject


def _planned(trial: Trial) -> bool:
    return bool(trial.rows("SELECT 1 FROM rounds WHERE state = 'planned'"))


def _leased(trial: Trial) -> bool:
    return _planned(trial) and bool(
        trial.rows("SELECT 1 FROM pod_leases WHERE ended_at IS NULL AND pod_id IS NOT NULL")
    )


def _report_uploaded(trial: Trial) -> bool:
    row = trial.running_round()
    if row is None:
        return False
    arena = trial.arena
    key = f"cacheon/rounds/{row['round_id']}/report.json"
    try:
        arena.services.s3.client().head_object(Bucket=arena.bucket, Key=key)
    except ClientError:
        return False
    return True


def _scored(trial: Trial) -> bool:
    return bool(trial.rows("SELECT 1 FROM rounds WHERE state = 'scored'"))


KILLS: tuple[Case, ...] = tuple(
    Case(
        f"SIGKILL: {phase}",
        "daemon",
        f"SIGKILL {when}, then restart",
        _kill_when(phase, check),
        expect,
        subprocess=True,
    )
    for phase, when, check, expect in (
        ("round planned", "once the round is planned", _planned, EITHER),
        ("pod leased", "once the pod is leased, before the agent", _leased, EITHER),
        (
            "agent running",
            "while the agent runs",
            lambda t: t.running_round() is not None,
            frozenset({"survived"}),
        ),
        (
            "report uploaded",
            "after the report is in S3, before scoring",
            _report_uploaded,
            frozenset({"survived"}),
        ),
        (
            "round scored",
            "right after scoring (weights may be pending)",
            _scored,
            frozenset({"survived"}),
        ),
    )
)
