"""The validator's memory between rounds, over `store/db.py`.

The daemon is the only writer. Everything the arena needs to continue after a restart lives
here: who committed what and when we first saw it, every verdict with its reason code, the
accumulated evidence of pending challengers, the launch-noise history, the standings and every
weights attempt. Rows are never updated in place where history matters (verdicts, standings,
weights); the latest row is the current value.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cacheon.arena import Change, Evidence, Holder, Judged, Standings, Submission
from cacheon.chain import commitments, firstseen
from cacheon.protocol import (
    Attribution,
    Block,
    Digest,
    FileFingerprint,
    Hotkey,
    Outcome,
    ReasonCode,
    Uid,
)
from cacheon.store.db import Database


class RoundState(StrEnum):
    PLANNED = "planned"  # persisted (salt, job) but no pod work started
    RUNNING = "running"  # the agent was started on a pod
    SCORED = "scored"  # the report was verified and scored
    VOID = "void"  # NO_DECISION for everyone in it


class EvidenceKind(StrEnum):
    TEST = "test"  # against the opponent of the moat decision: the leader, or the baseline
    BASELINE = "baseline"  # against the baseline, for ranking and the runner-up


@dataclass(frozen=True)
class SubmissionRecord:
    submission: Submission
    image: str
    size: int | None
    current: bool


@dataclass(frozen=True)
class Verdict:
    hotkey: Hotkey
    digest: Digest
    outcome: Outcome
    reason: ReasonCode | None
    detail: str
    round_id: str | None
    evaluation_version: str
    attribution: Attribution | None = None
    charged: bool = False
    created_at: float = 0.0
    checks: tuple[str, ...] = ()
    """The copy checks this verdict passed (`layers`, `files`, `behaviour`): what was known."""


@dataclass(frozen=True)
class RoundRecord:
    round_id: str
    block: Block
    block_hash: str
    salt: str
    salt_hash: str
    seed: str
    state: RoundState
    job: str
    reason: ReasonCode | None = None
    detail: str = ""
    report: str | None = None
    pod: str | None = None
    job_dir: str | None = None
    job_pid: int | None = None
    started_at: float = 0.0
    ended_at: float | None = None


@dataclass(frozen=True)
class WeightsRecord:
    standings_id: int | None
    block: Block
    vector: dict[Uid, float]
    status: str
    detail: str
    created_at: float


class ValidatorState:
    """Typed reads and writes of the validator's tables; one instance per daemon.

    Evidence, the launch-noise history and charges belong to one evaluation version
    (DESIGN.md §4.5): this instance reads and writes those of `evaluation_version`, so an
    upgrade that changes the rules starts them afresh instead of mixing two rule sets.
    """

    def __init__(
        self, db: Database, clock: Callable[[], float] = time.time, *, evaluation_version: str = ""
    ) -> None:
        self.db = db
        self._now = clock
        self.version = evaluation_version

    # --- submissions -----------------------------------------------------------------------

    def record_submissions(self, records: Iterable[SubmissionRecord]) -> None:
        """Upsert what the last poll saw; hotkeys' other digests stop being current."""
        rows = list(records)
        with self.db.transaction() as conn:
            conn.execute("UPDATE submissions SET current = 0")
            for record in rows:
                sub = record.submission
                layers = None if sub.layers is None else _layers_json(sub)
                conn.execute(
                    "INSERT INTO submissions(hotkey, digest, image, uid, first_seen, layers, size,"
                    " current, seen_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(hotkey, digest) DO UPDATE SET uid = excluded.uid,"
                    " first_seen = MIN(first_seen, excluded.first_seen),"
                    " layers = COALESCE(excluded.layers, layers), size = COALESCE(excluded.size, size),"
                    " current = excluded.current",
                    (
                        sub.hotkey,
                        sub.digest,
                        record.image,
                        sub.uid,
                        sub.first_seen,
                        layers,
                        record.size,
                        int(record.current),
                        self._now(),
                    ),
                )

    def submissions(self, *, current_only: bool = False) -> list[SubmissionRecord]:
        where = " WHERE current = 1" if current_only else ""
        rows = self.db.query(f"SELECT * FROM submissions{where}")  # noqa: S608 (fixed fragment)
        return [_submission(row) for row in rows]

    def not_failed(self) -> list[Submission]:
        """Submissions whose latest decisive verdict is not a FAIL (none yet included): the
        earlier holders of a digest that a later exact copy of it cannot displace."""
        rows = self.db.query(
            "SELECT s.* FROM submissions s WHERE COALESCE((SELECT v.outcome FROM verdicts v"
            " WHERE v.hotkey = s.hotkey AND v.digest = s.digest AND v.outcome != ?"
            " ORDER BY v.id DESC LIMIT 1), '') != ?",
            (Outcome.NO_DECISION.value, Outcome.FAIL.value),
        )
        return [_submission(row).submission for row in rows]

    def passed(self) -> list[Submission]:
        """Submissions whose latest decisive verdict is a PASS: the earlier holders worth
        protecting from copies (DESIGN.md §4.6); a failed one protects nothing."""
        rows = self.db.query(
            "SELECT s.* FROM submissions s JOIN verdicts v ON v.hotkey = s.hotkey"
            " AND v.digest = s.digest WHERE v.id = (SELECT MAX(id) FROM verdicts w"
            " WHERE w.hotkey = s.hotkey AND w.digest = s.digest AND w.outcome != ?)"
            " AND v.outcome = ?",
            (Outcome.NO_DECISION.value, Outcome.PASS.value),
        )
        return [_submission(row).submission for row in rows]

    def submission(self, hotkey: Hotkey, digest: Digest) -> SubmissionRecord | None:
        rows = self.db.query(
            "SELECT * FROM submissions WHERE hotkey = ? AND digest = ?", (hotkey, digest)
        )
        return _submission(rows[0]) if rows else None

    # --- first seen (DESIGN.md §3 step 1) --------------------------------------------------

    def record_first_seen(self, submissions: Iterable[commitments.Submission]) -> None:
        """Fold one poll's submissions into the ledger, keeping the earliest block per pair."""
        rows = [(s.image.digest, s.hotkey, s.uid, s.block) for s in submissions]
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO first_seen (digest, hotkey, uid, block) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest, hotkey) DO UPDATE SET "
                "block = MIN(block, excluded.block), uid = COALESCE(excluded.uid, uid)",
                rows,
            )

    def first_seen_holders(self, digest: Digest) -> list[firstseen.Holder]:
        """Every hotkey known to have held `digest`, first-seen first."""
        rows = self.db.query(
            "SELECT hotkey, uid, block FROM first_seen WHERE digest = ?", (digest,)
        )
        return firstseen.rank(
            firstseen.Holder(
                digest=digest,
                hotkey=Hotkey(r["hotkey"]),
                uid=None if r["uid"] is None else Uid(r["uid"]),
                block=Block(r["block"]),
            )
            for r in rows
        )

    # --- verdicts --------------------------------------------------------------------------

    def add_verdicts(self, verdicts: Iterable[Verdict]) -> None:
        with self.db.transaction() as conn:
            for v in verdicts:
                _insert_verdict(conn, v, self._now())

    def verdicts(self, *, digest: Digest | None = None, limit: int | None = None) -> list[Verdict]:
        sql, params = "SELECT * FROM verdicts", list[object]()
        if digest is not None:
            sql, params = sql + " WHERE digest = ?", [digest]
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, limit]
        return [_verdict(row) for row in self.db.query(sql, params)]

    def latest_verdict(self, hotkey: Hotkey, digest: Digest) -> Verdict | None:
        rows = self.db.query(
            "SELECT * FROM verdicts WHERE hotkey = ? AND digest = ? ORDER BY id DESC LIMIT 1",
            (hotkey, digest),
        )
        return _verdict(rows[0]) if rows else None

    def judged(self) -> list[Judged]:
        return [
            Judged(v.digest, v.evaluation_version, v.outcome, v.reason) for v in self.verdicts()
        ]

    def charges(self, hotkey: Hotkey, digest: Digest) -> int:
        """Contestant-attributed NO_DECISIONs so far (the limit of 3 ends in unevaluable)."""
        rows = self.db.query(
            "SELECT COUNT(*) FROM verdicts WHERE hotkey = ? AND digest = ? AND charged = 1"
            " AND evaluation_version = ?",
            (hotkey, digest, self.version),
        )
        return int(rows[0][0])

    def round_verdicts(self, round_id: str) -> list[Verdict]:
        rows = self.db.query("SELECT * FROM verdicts WHERE round_id = ? ORDER BY id", (round_id,))
        return [_verdict(row) for row in rows]

    def verdict_counts(self) -> dict[tuple[Outcome, ReasonCode | None], int]:
        rows = self.db.query(
            "SELECT outcome, reason, COUNT(*) AS n FROM verdicts GROUP BY outcome, reason"
        )
        return {
            (Outcome(r["outcome"]), None if r["reason"] is None else ReasonCode(r["reason"])): int(
                r["n"]
            )
            for r in rows
        }

    # --- evidence and noise ----------------------------------------------------------------

    def evidence(self, digest: Digest, kind: EvidenceKind) -> Evidence | None:
        rows = self.db.query(
            "SELECT * FROM evidence WHERE digest = ? AND kind = ? AND evaluation_version = ?",
            (digest, kind.value, self.version),
        )
        if not rows:
            return None
        row = rows[0]
        return Evidence(
            Digest(row["against"]),
            row["launches"],
            row["total"],
            row["variance_units"],
            row["squares"],
        )

    def evidence_call(self, digest: Digest) -> str | None:
        rows = self.db.query(
            "SELECT call FROM evidence WHERE digest = ? AND kind = ? AND evaluation_version = ?",
            (digest, EvidenceKind.TEST.value, self.version),
        )
        return rows[0]["call"] if rows else None

    def noise_pairs(self) -> list[float]:
        rows = self.db.query(
            "SELECT value FROM noise_pairs WHERE evaluation_version = ?", (self.version,)
        )
        return [float(row["value"]) for row in rows]

    def fingerprint(self, digest: Digest) -> FileFingerprint | None:
        """The file sample the agent took of `digest` in its latest round (§4.6)."""
        rows = self.db.query("SELECT fingerprint FROM fingerprints WHERE digest = ?", (digest,))
        return FileFingerprint.model_validate_json(rows[0]["fingerprint"]) if rows else None

    def behaves_like(self, digest: Digest) -> frozenset[Digest]:
        rows = self.db.query("SELECT leader FROM behaves_like WHERE digest = ?", (digest,))
        return frozenset(Digest(row["leader"]) for row in rows)

    # --- evaluation starts (cooldown) ------------------------------------------------------

    def last_started(self) -> dict[Hotkey, Block]:
        rows = self.db.query(
            "SELECT hotkey, MAX(block) AS block FROM evaluation_starts GROUP BY hotkey"
        )
        return {Hotkey(row["hotkey"]): Block(row["block"]) for row in rows}

    def started(self, hotkey: Hotkey, digest: Digest) -> bool:
        rows = self.db.query(
            "SELECT 1 FROM evaluation_starts WHERE hotkey = ? AND digest = ?", (hotkey, digest)
        )
        return bool(rows)

    # --- rounds ----------------------------------------------------------------------------

    def begin_round(self, record: RoundRecord, starts: Sequence[Submission]) -> None:
        """Persist the round (salt, seed, job) before any pod work, with its new evaluations."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO rounds(round_id, block, block_hash, salt, salt_hash, seed, state, job,"
                " started_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.round_id,
                    record.block,
                    record.block_hash,
                    record.salt,
                    record.salt_hash,
                    record.seed,
                    record.state.value,
                    record.job,
                    self._now(),
                ),
            )
            for sub in starts:
                conn.execute(
                    "INSERT OR IGNORE INTO evaluation_starts(hotkey, digest, block) VALUES(?, ?, ?)",
                    (sub.hotkey, sub.digest, record.block),
                )

    def round_running(self, round_id: str, pod: str, job_dir: str, job_pid: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE rounds SET state = ?, pod = ?, job_dir = ?, job_pid = ? WHERE round_id = ?",
                (RoundState.RUNNING.value, pod, job_dir, job_pid, round_id),
            )

    def round(self, round_id: str) -> RoundRecord | None:
        rows = self.db.query("SELECT * FROM rounds WHERE round_id = ?", (round_id,))
        return _round(rows[0]) if rows else None

    def rounds(self, limit: int = 50) -> list[RoundRecord]:
        rows = self.db.query("SELECT * FROM rounds ORDER BY started_at DESC LIMIT ?", (limit,))
        return [_round(row) for row in rows]

    def round_counts(self) -> dict[RoundState, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM rounds GROUP BY state")
        return {RoundState(r["state"]): int(r["n"]) for r in rows}

    def unfinished_rounds(self) -> list[RoundRecord]:
        rows = self.db.query(
            "SELECT * FROM rounds WHERE state IN (?, ?) ORDER BY started_at",
            (RoundState.PLANNED.value, RoundState.RUNNING.value),
        )
        return [_round(row) for row in rows]

    def void_round(
        self, round_id: str, reason: ReasonCode, detail: str, verdicts: Iterable[Verdict]
    ) -> None:
        """End a round as NO_DECISION for everyone in it, in one transaction."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE rounds SET state = ?, reason = ?, detail = ?, ended_at = ? WHERE round_id = ?",
                (RoundState.VOID.value, reason.value, detail[:2000], self._now(), round_id),
            )
            for v in verdicts:
                _insert_verdict(conn, v, self._now())

    def score_round(self, scored: ScoredRound) -> int:
        """Persist everything one scored round changes, atomically; returns the standings id."""
        now = self._now()
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE rounds SET state = ?, reason = ?, detail = ?, report = ?, ended_at = ?"
                " WHERE round_id = ?",
                (
                    RoundState.SCORED.value if scored.void is None else RoundState.VOID.value,
                    None if scored.void is None else scored.void.value,
                    scored.detail[:2000],
                    scored.report,
                    now,
                    scored.round_id,
                ),
            )
            for value in scored.noise_pairs:
                conn.execute(
                    "INSERT INTO noise_pairs(round_id, value, evaluation_version) VALUES(?, ?, ?)",
                    (scored.round_id, value, self.version),
                )
            for digest, kind, evidence, call in scored.evidence:
                conn.execute(
                    "INSERT INTO evidence(digest, kind, evaluation_version, against, launches,"
                    " total, variance_units, squares, call) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(digest, kind, evaluation_version) DO UPDATE SET"
                    " against = excluded.against, launches = excluded.launches,"
                    " total = excluded.total, variance_units = excluded.variance_units,"
                    " squares = excluded.squares, call = excluded.call",
                    (
                        digest,
                        kind.value,
                        self.version,
                        evidence.against,
                        evidence.launches,
                        evidence.total,
                        evidence.variance_units,
                        evidence.squares,
                        call,
                    ),
                )
            for digest, fingerprint in scored.fingerprints:
                conn.execute(
                    "INSERT INTO fingerprints(digest, fingerprint) VALUES(?, ?)"
                    " ON CONFLICT(digest) DO UPDATE SET fingerprint = excluded.fingerprint",
                    (digest, fingerprint.model_dump_json()),
                )
            for digest, leader in scored.behaves_like:
                conn.execute(
                    "INSERT OR IGNORE INTO behaves_like(digest, leader) VALUES(?, ?)",
                    (digest, leader),
                )
            for v in scored.verdicts:
                _insert_verdict(conn, v, now)
            # A new standings row only for a new decision: weights are keyed by it.
            current_id, current = self.standings()
            if scored.standings == current and current_id is not None:
                return current_id
            return _insert_standings(conn, scored.standings, scored.changes, scored.round_id, now)

    # --- standings and weights -------------------------------------------------------------

    def standings(self) -> tuple[int | None, Standings]:
        rows = self.db.query("SELECT * FROM standings ORDER BY id DESC LIMIT 1")
        if not rows:
            return None, Standings()
        row = rows[0]
        leader = _holder(row["leader_hotkey"], row["leader_digest"])
        runner = _holder(row["runner_hotkey"], row["runner_digest"])
        return int(row["id"]), Standings(leader, runner)

    def set_standings(
        self, standings: Standings, changes: Sequence[Change], round_id: str | None
    ) -> int:
        with self.db.transaction() as conn:
            return _insert_standings(conn, standings, changes, round_id, self._now())

    def standings_history(self, limit: int = 50) -> list[dict[str, object]]:
        rows = self.db.query("SELECT * FROM standings ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(row) for row in rows]

    def record_weights(
        self,
        standings_id: int | None,
        block: Block,
        vector: dict[Uid, float],
        status: str,
        detail: str,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO weights_log(standings_id, block, vector, status, detail, created_at)"
                " VALUES(?, ?, ?, ?, ?, ?)",
                (standings_id, block, json.dumps(vector), status, detail[:2000], self._now()),
            )

    def weights_log(self, limit: int = 20) -> list[WeightsRecord]:
        rows = self.db.query("SELECT * FROM weights_log ORDER BY id DESC LIMIT ?", (limit,))
        return [
            WeightsRecord(
                row["standings_id"],
                Block(row["block"]),
                {Uid(int(k)): float(v) for k, v in json.loads(row["vector"]).items()},
                row["status"],
                row["detail"],
                row["created_at"],
            )
            for row in rows
        ]

    def last_successful_weights(self) -> WeightsRecord | None:
        """The latest set or commit; a missed reveal undoes the commit it was the reveal of."""
        missed = 0
        for w in self.weights_log(200):
            if w.status == REVEAL_MISSED:
                missed += 1
            elif w.status == "committed" and missed:
                missed -= 1
            elif w.status in SUCCESS:
                return w
        return None

    def weights_counts(self) -> dict[str, int]:
        """Weights log rows by status, over the whole history."""
        rows = self.db.query("SELECT status, COUNT(*) AS n FROM weights_log GROUP BY status")
        return {str(r["status"]): int(r["n"]) for r in rows}

    def pending_reveal(self) -> str | None:
        """Our weights commit whose reveal is still to be checked (JSON of validator.weights)."""
        return self.db.get_meta(PENDING_REVEAL)

    def set_pending_reveal(self, commit: str | None) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_REVEAL,))
            if commit is not None:
                conn.execute("INSERT INTO meta(key, value) VALUES(?, ?)", (PENDING_REVEAL, commit))


SUCCESS = frozenset({"set", "committed"})
"""Weights statuses that count as done (chain.weights.WeightsStatus values)."""
REVEAL_MISSED = "reveal_missed"
"""The status recorded when a commit's reveal never landed (chain.weights.WeightsStatus)."""
PENDING_REVEAL = "weights_pending_reveal"


EvidenceRow = tuple[Digest, EvidenceKind, Evidence, str | None]
"""Evidence of one digest of one kind, with the moat decision's call for a test."""


@dataclass(frozen=True)
class ScoredRound:
    """Everything one scored round writes; built by `validator.scoring`."""

    round_id: str
    report: str | None
    void: ReasonCode | None
    detail: str
    noise_pairs: tuple[float, ...]
    evidence: tuple[EvidenceRow, ...]
    behaves_like: tuple[tuple[Digest, Digest], ...]
    verdicts: tuple[Verdict, ...]
    standings: Standings
    changes: tuple[Change, ...]
    fingerprints: tuple[tuple[Digest, FileFingerprint], ...] = ()
    """The file samples the agent took this round, kept for the runner-up's copy check."""


def _insert_standings(
    conn: sqlite3.Connection,
    standings: Standings,
    changes: Sequence[Change],
    round_id: str | None,
    now: float,
) -> int:
    cursor = conn.execute(
        "INSERT INTO standings(round_id, leader_hotkey, leader_digest, runner_hotkey,"
        " runner_digest, changes, created_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
        (
            round_id,
            *_holder_columns(standings.leader),
            *_holder_columns(standings.runner_up),
            json.dumps([_change_json(c) for c in changes]),
            now,
        ),
    )
    return int(cursor.lastrowid or 0)


def _insert_verdict(conn: sqlite3.Connection, v: Verdict, now: float) -> None:
    conn.execute(
        "INSERT INTO verdicts(round_id, hotkey, digest, outcome, reason, detail, attribution,"
        " charged, evaluation_version, created_at, checks) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            v.round_id,
            v.hotkey,
            v.digest,
            v.outcome.value,
            None if v.reason is None else v.reason.value,
            v.detail[:2000],
            None if v.attribution is None else v.attribution.value,
            int(v.charged),
            v.evaluation_version,
            now,
            ",".join(v.checks),
        ),
    )


def _layers_json(sub: Submission) -> str:
    """{diff id: compressed bytes or null}: the layers and the sizes the registry gave."""
    sizes = dict(sub.layer_sizes)
    return json.dumps({layer: sizes.get(layer) for layer in sorted(sub.layers or ())})


def _submission(row: sqlite3.Row) -> SubmissionRecord:
    stored = None if row["layers"] is None else json.loads(row["layers"])
    layers = None if stored is None else frozenset(stored)  # a list before sizes were kept
    sizes = stored.items() if isinstance(stored, dict) else ()
    return SubmissionRecord(
        Submission(
            Hotkey(row["hotkey"]),
            Uid(row["uid"]),
            Digest(row["digest"]),
            Block(row["first_seen"]),
            layers,
            tuple((layer, int(size)) for layer, size in sizes if size is not None),
        ),
        row["image"],
        row["size"],
        bool(row["current"]),
    )


def _verdict(row: sqlite3.Row) -> Verdict:
    return Verdict(
        Hotkey(row["hotkey"]),
        Digest(row["digest"]),
        Outcome(row["outcome"]),
        None if row["reason"] is None else ReasonCode(row["reason"]),
        row["detail"],
        row["round_id"],
        row["evaluation_version"],
        None if row["attribution"] is None else Attribution(row["attribution"]),
        bool(row["charged"]),
        row["created_at"],
        tuple(check for check in row["checks"].split(",") if check),
    )


def _round(row: sqlite3.Row) -> RoundRecord:
    return RoundRecord(
        round_id=row["round_id"],
        block=Block(row["block"]),
        block_hash=row["block_hash"],
        salt=row["salt"],
        salt_hash=row["salt_hash"],
        seed=row["seed"],
        state=RoundState(row["state"]),
        job=row["job"],
        reason=None if row["reason"] is None else ReasonCode(row["reason"]),
        detail=row["detail"],
        report=row["report"],
        pod=row["pod"],
        job_dir=row["job_dir"],
        job_pid=row["job_pid"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


def _holder(hotkey: str | None, digest: str | None) -> Holder | None:
    return None if hotkey is None or digest is None else Holder(Hotkey(hotkey), Digest(digest))


def _holder_columns(holder: Holder | None) -> tuple[str | None, str | None]:
    return (None, None) if holder is None else (holder.hotkey, holder.digest)


def _change_json(change: Change) -> dict[str, str | None]:
    return {
        "kind": change.kind.value,
        "hotkey": change.holder.hotkey,
        "digest": change.holder.digest,
        "loss": None if change.loss is None else change.loss.value,
    }
