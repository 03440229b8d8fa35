"""What a fault case did, judged from the daemon's database and the provider's books, and the
table the bench prints and writes to docs/reliability.md.

- outcome: the round the fault hit -- `survived` (scored, nobody FAILed), `NO_DECISION` (void
  for everyone) or `FAIL` (scored, a contestant FAILed) -- with its reason;
- data lost: rounds left neither scored nor void, verdicts that existed before a kill and not
  after, committed miners the database never recorded, a database failing `integrity_check`;
- pods leaked: pods still live at the provider after the daemon concluded and idled;
- wrong verdicts: an honest miner FAILed, a hostile one PASSed, a leader that is not the
  fastest, weights set twice for one standings;
- recovery: seconds from the fault's end (lifted, or the restart) until a round scored since the
  fault hit and weights set since (0 when both came while the fault still held).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cacheon.testing.reliability.trial import Case, Trial

HONEST = frozenset({"fast", "second", "slow", "late"})


@dataclass
class Row:
    name: str
    group: str
    fault: str
    outcome: str
    reason: str
    data_lost: int
    pods_leaked: int
    wrong_verdicts: int
    recovery_s: float | None
    total_s: float
    ok: bool
    note: str = ""


def judge(case: Case, trial: Trial, total_s: float, error: str) -> Row:
    rounds = trial.rows("SELECT * FROM rounds ORDER BY started_at")
    hit = next(
        (r for r in rounds if r["ended_at"] is None or r["ended_at"] >= trial.fault_start), None
    )
    outcome, reason = _outcome(trial, hit)
    recovery = _recovery(trial, rounds)
    lost = _data_lost(trial, rounds)
    leaked = len(trial.arena.lium.live_pods())
    wrong = _wrong_verdicts(trial)
    notes = [*trial.notes, error] if error else list(trial.notes)
    ok = (
        not error
        and outcome in case.expect
        and lost == 0
        and leaked == 0
        and wrong == 0
        and recovery is not None
    )
    return Row(
        case.name, case.group, case.fault, outcome, reason, lost, leaked, wrong, recovery,
        round(total_s, 1), ok, "; ".join(n for n in notes if n),
    )  # fmt: skip


def _recovery(trial: Trial, rounds: list[sqlite3.Row]) -> float | None:
    """Seconds from the fault's end until a round scored since it hit and weights set since
    (0 when both happened while the fault still held); None when either never came."""
    since = trial.fault_start
    scored = [
        float(r["ended_at"]) for r in rounds if r["state"] == "scored" and r["ended_at"] >= since
    ]
    weights = [
        float(w["created_at"])
        for w in trial.rows("SELECT created_at FROM weights_log WHERE status = 'set'")
    ]
    if not scored or not weights:
        return None
    later = [w for w in weights if w >= since]
    done = max(min(scored), min(later) if later else 0.0)
    return round(max(0.0, done - trial.fault_end), 1)


def _outcome(trial: Trial, hit: sqlite3.Row | None) -> tuple[str, str]:
    if hit is None:
        return "none", "no round after the fault"
    if hit["state"] == "void":
        return "NO_DECISION", hit["reason"] or ""
    if hit["state"] != "scored":
        return "unfinished", hit["state"]
    verdicts = trial.rows(
        "SELECT outcome, reason FROM verdicts WHERE round_id = ?", (hit["round_id"],)
    )
    failed = [v["reason"] for v in verdicts if v["outcome"] == "FAIL"]
    if failed:
        return "FAIL", ",".join(sorted(set(failed)))
    return "survived", ",".join(sorted({v["reason"] or "" for v in verdicts}))


def _data_lost(trial: Trial, rounds: list[sqlite3.Row]) -> int:
    lost = sum(1 for r in rounds if r["state"] not in ("scored", "void"))
    kept = {r["id"] for r in trial.rows("SELECT id FROM verdicts")}
    lost += len(trial.verdicts_before_kill - kept)
    known = {r["hotkey"] for r in trial.rows("SELECT hotkey FROM submissions")}
    committed = {p.hotkey for p in trial.arena.participants.values()}
    lost += len(committed - known)
    check = trial.rows("PRAGMA integrity_check")
    lost += 0 if check and check[0][0] == "ok" else 1
    return lost


def _wrong_verdicts(trial: Trial) -> int:
    arena = trial.arena
    wrong = 0
    for v in trial.rows("SELECT hotkey, outcome FROM verdicts"):
        name = arena.name_of(v["hotkey"])
        honest = name in HONEST
        wrong += (honest and v["outcome"] == "FAIL") or (not honest and v["outcome"] == "PASS")
    standings = trial.rows("SELECT leader_hotkey FROM standings ORDER BY id DESC LIMIT 1")
    if standings and standings[0]["leader_hotkey"]:
        wrong += arena.name_of(standings[0]["leader_hotkey"]) != "fast"
    sets = trial.rows(
        "SELECT standings_id, COUNT(*) AS n FROM weights_log WHERE status = 'set'"
        " GROUP BY standings_id HAVING n > 1"
    )
    return wrong + len(sets)


COLUMNS = (
    "case", "group", "fault injected", "outcome", "reason", "data lost", "pods leaked",
    "wrong verdicts", "recovery s", "case s", "ok",
)  # fmt: skip


def cells(row: Row) -> tuple[str, ...]:
    recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
    return (
        row.name, row.group, row.fault, row.outcome, row.reason, str(row.data_lost),
        str(row.pods_leaked), str(row.wrong_verdicts), recovery, f"{row.total_s:.0f}",
        "yes" if row.ok else "NO",
    )  # fmt: skip


def markdown_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)
