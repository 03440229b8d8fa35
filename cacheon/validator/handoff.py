"""The validator's side of the S3 handoff: per-round HMAC keys, and reading reports back.

The pod is untrusted, so a report is evidence only after it passes every check here: it exists,
fits the size limit, parses, has our schema version, names this round, and carries a valid MAC
under this round's key (kept in the database before the round starts, so a restarted validator
can still verify). Anything else becomes a `ReportRejected` -- a NO_DECISION with a reason that
nobody is charged for -- never an exception and never a state write.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from cacheon.log import get_logger
from cacheon.protocol import (
    REPORT_OBJECT,
    SCHEMA_VERSION,
    Outcome,
    ReasonCode,
    RoundReport,
    SignedReport,
    TraceRecord,
    TraceRef,
    decode_trace,
    verify_report,
)
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore, ObjectStoreError, ObjectTooLarge

KEY_BYTES = 32
MAX_REPORT_BYTES = 32 << 20
MAX_TRACE_BYTES = 512 << 20

log = get_logger(__name__)


class ReportProblem(StrEnum):
    """Why a report was not accepted; stable strings for logs and the public report."""

    NO_KEY = "no_key"
    MISSING = "missing"
    STORE_UNAVAILABLE = "store_unavailable"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    SCHEMA_VERSION = "schema_version"
    WRONG_ROUND = "wrong_round"
    BAD_MAC = "bad_mac"
    TRACE_MISMATCH = "trace_mismatch"


_REASONS = {ReportProblem.STORE_UNAVAILABLE: ReasonCode.S3_UNAVAILABLE}


@dataclass(frozen=True)
class ReportRejected:
    problem: ReportProblem
    detail: str

    @property
    def outcome(self) -> Outcome:
        return Outcome.NO_DECISION

    @property
    def reason(self) -> ReasonCode:
        return _REASONS.get(self.problem, ReasonCode.AGENT_FAILED)


@dataclass(frozen=True)
class VerifiedReport:
    report: RoundReport


def issue_round_key(db: Database, round_id: str) -> bytes:
    """The round's HMAC key, created and committed on first call; call it before the round
    starts so that a restarted validator can still verify the report."""
    with db.transaction() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO round_keys(round_id, hmac_key, created_at) VALUES (?, ?, ?)",
            (round_id, secrets.token_bytes(KEY_BYTES), time.time()),
        )
    key = round_key(db, round_id)
    if key is None:
        raise RuntimeError(f"round key for {round_id} vanished after it was written")
    return key


def round_key(db: Database, round_id: str) -> bytes | None:
    rows = db.query("SELECT hmac_key FROM round_keys WHERE round_id = ?", (round_id,))
    return bytes(rows[0]["hmac_key"]) if rows else None


def verify_report_bytes(data: bytes, key: bytes, round_id: str) -> VerifiedReport | ReportRejected:
    """Check one `report.json`'s bytes; pure, total (never raises)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return ReportRejected(ReportProblem.MALFORMED, f"not JSON (truncated?): {exc}")
    if not isinstance(raw, dict):
        return ReportRejected(ReportProblem.MALFORMED, "not a JSON object")
    versions = {raw.get("schema_version")}
    if isinstance(raw.get("report"), dict):
        versions.add(raw["report"].get("schema_version"))
    if versions != {SCHEMA_VERSION}:
        return ReportRejected(
            ReportProblem.SCHEMA_VERSION,
            f"schema version {sorted(map(str, versions))}, this validator reads {SCHEMA_VERSION}",
        )
    try:
        signed = SignedReport.model_validate(raw)
    except ValueError as exc:
        return ReportRejected(ReportProblem.MALFORMED, f"not a signed report: {exc}")
    if signed.report.round_id != round_id:
        return ReportRejected(
            ReportProblem.WRONG_ROUND,
            f"the report is for round {signed.report.round_id!r}, not {round_id!r} (replayed?)",
        )
    if not verify_report(key, signed):
        return ReportRejected(ReportProblem.BAD_MAC, "the MAC does not match (tampered?)")
    return VerifiedReport(signed.report)


def fetch_report(
    store: ObjectStore, db: Database, round_id: str
) -> VerifiedReport | ReportRejected:
    """Read and verify the round's report with the validator's own credentials. Blocking
    (boto3): call it with `asyncio.to_thread` from the event loop."""
    key = round_key(db, round_id)
    if key is None:
        return _rejected(round_id, ReportProblem.NO_KEY, "no HMAC key was recorded for this round")
    try:
        data = store.get(store.round_key(round_id, REPORT_OBJECT), MAX_REPORT_BYTES)
    except ObjectTooLarge as exc:
        return _rejected(round_id, ReportProblem.TOO_LARGE, str(exc))
    except ObjectStoreError as exc:
        return _rejected(round_id, ReportProblem.STORE_UNAVAILABLE, str(exc))
    if data is None:
        return _rejected(round_id, ReportProblem.MISSING, "the agent uploaded no report")
    result = verify_report_bytes(data, key, round_id)
    if isinstance(result, ReportRejected):
        return _rejected(round_id, result.problem, result.detail)
    log.info("report verified", round_id=round_id, launches=len(result.report.launches))
    return result


def fetch_trace(
    store: ObjectStore, round_id: str, ref: TraceRef
) -> list[TraceRecord] | ReportRejected:
    """One trace named by a verified report; its sha256 must match the signed reference."""
    try:
        data = store.get(store.round_key(round_id, ref.name), MAX_TRACE_BYTES)
    except ObjectStoreError as exc:
        return _rejected(round_id, ReportProblem.STORE_UNAVAILABLE, str(exc))
    if data is None:
        return _rejected(round_id, ReportProblem.MISSING, f"trace {ref.name} is missing")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        return _rejected(
            round_id, ReportProblem.TRACE_MISMATCH, f"{ref.name} is not the signed one"
        )
    try:
        return decode_trace(data)
    except (OSError, EOFError, ValueError) as exc:
        return _rejected(round_id, ReportProblem.MALFORMED, f"{ref.name}: {exc}")


def _rejected(round_id: str, problem: ReportProblem, detail: str) -> ReportRejected:
    log.warning("report rejected", round_id=round_id, problem=str(problem), detail=detail)
    return ReportRejected(problem, detail)
