"""The report handoff through real SeaweedFS: every way a report can be wrong ends as a
NO_DECISION with a reason and writes no state; presigned URLs are refused once expired or altered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cacheon.agent import uploads
from cacheon.agent.job import JobContext
from cacheon.protocol import (
    REPORT_OBJECT,
    HardwareFacts,
    JobKind,
    JobSpec,
    Outcome,
    ReasonCode,
    RoundReport,
    TraceRecord,
    UploadSlot,
    sign_report,
    trace_object,
)
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore
from cacheon.validator.handoff import (
    ReportProblem,
    ReportRejected,
    VerifiedReport,
    fetch_report,
    fetch_trace,
    issue_round_key,
    round_key,
)


def _report(round_id: str) -> RoundReport:
    return RoundReport(
        round_id=round_id, kind=JobKind.PROBE, hardware=HardwareFacts(gpu_names=("NVIDIA H200",))
    )


def _signed_bytes(round_id: str, key: bytes) -> bytes:
    return sign_report(key, _report(round_id)).model_dump_json().encode()


def _put_via_presigned(store: ObjectStore, round_id: str, body: bytes) -> int:
    slot = store.upload_slots(round_id, traces=0)[0]
    return httpx.put(slot.url, content=body).status_code


def _tamper(body: bytes) -> bytes:
    data = json.loads(body)
    data["report"]["hardware"]["gpu_names"] = ["NVIDIA H100"]
    return json.dumps(data).encode()


def _schema(body: bytes) -> bytes:
    data = json.loads(body)
    data["schema_version"] = 99
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("tampered", ReportProblem.BAD_MAC),
        ("truncated", ReportProblem.MALFORMED),
        ("replayed", ReportProblem.WRONG_ROUND),
        ("missing", ReportProblem.MISSING),
        ("schema", ReportProblem.SCHEMA_VERSION),
        ("foreign_key", ReportProblem.BAD_MAC),
    ],
)
def test_a_bad_report_is_no_decision_and_writes_nothing(
    store: ObjectStore, db: Database, case: str, problem: ReportProblem
) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    key = issue_round_key(db, round_id)
    good = _signed_bytes(round_id, key)
    bodies = {
        "tampered": _tamper(good),
        "truncated": good[: len(good) // 2],
        # a genuine report of another round, under that round's own key, uploaded here
        "replayed": _signed_bytes("r-earlier", issue_round_key(db, "r-earlier")),
        "schema": _schema(good),
        "foreign_key": _signed_bytes(round_id, b"\x01" * 32),
    }
    if case in bodies:
        assert _put_via_presigned(store, round_id, bodies[case]) == 200
    before = db.query("SELECT round_id, hmac_key FROM round_keys ORDER BY round_id")
    result = fetch_report(store, db, round_id)
    assert isinstance(result, ReportRejected)
    assert result.problem is problem
    assert result.outcome is Outcome.NO_DECISION
    assert result.reason is ReasonCode.AGENT_FAILED
    assert db.query("SELECT round_id, hmac_key FROM round_keys ORDER BY round_id") == before


def test_the_genuine_report_verifies_even_after_a_validator_restart(
    store: ObjectStore, tmp_path: Path
) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    with Database.open(tmp_path / "state.db") as db:
        key = issue_round_key(db, round_id)
        assert issue_round_key(db, round_id) == key  # stable once issued
    assert _put_via_presigned(store, round_id, _signed_bytes(round_id, key)) == 200
    with Database.open(tmp_path / "state.db") as restarted:
        assert round_key(restarted, round_id) == key
        result = fetch_report(store, restarted, round_id)
    assert isinstance(result, VerifiedReport)
    assert result.report.hardware.gpu_names == ("NVIDIA H200",)


def test_no_key_and_an_unreachable_store_are_no_decision(store: ObjectStore, db: Database) -> None:
    assert fetch_report(store, db, "r-unknown").problem is ReportProblem.NO_KEY  # type: ignore[union-attr]
    issue_round_key(db, "r-down")
    down = ObjectStore(store.client, "no-such-bucket-" + uuid.uuid4().hex[:6], "p", 600)
    result = fetch_report(down, db, "r-down")
    assert isinstance(result, ReportRejected)
    assert result.problem is ReportProblem.STORE_UNAVAILABLE
    assert result.reason is ReasonCode.S3_UNAVAILABLE


def test_seaweedfs_refuses_expired_and_altered_presigned_urls(store: ObjectStore) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    slot = store.upload_slots(round_id, traces=1, expiry_s=1)[1]
    assert slot.name == trace_object(0)
    time.sleep(2.5)
    assert httpx.put(slot.url, content=b"late").status_code == 403
    fresh = store.upload_slots(round_id, traces=1)
    other_key = fresh[0].url.replace(REPORT_OBJECT, "elsewhere.json")
    assert httpx.put(other_key, content=b"x").status_code == 403
    other_round = fresh[0].url.replace(round_id, "r-other")
    assert httpx.put(other_round, content=b"x").status_code == 403
    unsigned = fresh[0].url.split("?")[0]
    assert httpx.put(unsigned, content=b"x").status_code == 403
    assert httpx.put(fresh[0].url, content=b"{}").status_code == 200


def test_an_agent_upload_waits_for_refreshed_urls(store: ObjectStore, tmp_path: Path) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    stale = tuple(
        UploadSlot(name=s.name, url=s.url, expires_at=time.time() - 1)
        for s in store.upload_slots(round_id, traces=0, expiry_s=60)
    )
    book = uploads.SlotBook(tmp_path, stale)

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            waiting = asyncio.create_task(
                uploads.upload(client, book, REPORT_OBJECT, b'{"late": true}', wait_s=30)
            )
            await asyncio.sleep(1.0)
            assert not waiting.done()
            uploads.write_refreshed_slots(tmp_path, store.upload_slots(round_id, traces=0))
            await waiting
            with pytest.raises(uploads.UploadError, match="no upload slot"):
                await uploads.upload(client, book, "trace-999.jsonl.gz", b"", wait_s=1)

    asyncio.run(main())
    assert store.get(store.round_key(round_id, REPORT_OBJECT), 100) == b'{"late": true}'
    assert (tmp_path / uploads.URLS_FILE).stat().st_mode & 0o777 == 0o600


def test_traces_upload_through_the_job_context_and_verify_by_hash(
    store: ObjectStore, tmp_path: Path
) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    spec = JobSpec(
        round_id=round_id,
        seed="00",
        served_model_name="m",
        model_path="/m",
        max_model_len=16,
        contestants=(),
        launch_order=(),
        uploads=store.upload_slots(round_id, traces=2),
    )
    records = [
        TraceRecord(
            launch=0, contestant="B", concurrency=1, block=0, prompt=i, sent_ns=i, token_ns=(5, 9)
        )
        for i in range(3)
    ]

    async def main() -> list[object]:
        async with httpx.AsyncClient() as client:
            ctx = JobContext(spec, tmp_path, uploads.SlotBook(tmp_path, spec.uploads), client)
            return [await ctx.upload_trace(records), await ctx.upload_trace(records[:1])]

    first, second = asyncio.run(main())
    assert (first.name, second.name) == (trace_object(0), trace_object(1))  # type: ignore[attr-defined]
    assert fetch_trace(store, round_id, first) == records  # type: ignore[arg-type]
    forged = first.model_copy(update={"sha256": hashlib.sha256(b"x").hexdigest()})  # type: ignore[attr-defined]
    result = fetch_trace(store, round_id, forged)
    assert isinstance(result, ReportRejected)
    assert result.problem is ReportProblem.TRACE_MISMATCH


def test_old_rounds_are_pruned(store: ObjectStore) -> None:
    prefix_store = ObjectStore(store.client, store.bucket, f"prune-{uuid.uuid4().hex[:6]}", 600)
    for index in range(3):
        prefix_store.put(prefix_store.round_key(f"r{index}", REPORT_OBJECT), b"{}")
        prefix_store.put(prefix_store.round_key(f"r{index}", trace_object(0)), b"{}")
        time.sleep(1.1)  # S3 LastModified has one-second resolution
    assert prefix_store.prune_rounds(keep=1) == 4
    assert prefix_store.get(prefix_store.round_key("r2", REPORT_OBJECT), 10) == b"{}"
    assert prefix_store.get(prefix_store.round_key("r0", REPORT_OBJECT), 10) is None
