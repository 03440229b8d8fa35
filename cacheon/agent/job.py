"""One agent job, start to finish: detach from SSH, run the job kind, sign and upload the report.

The validator starts `cacheon-agent run --job DIR/job.json` over SSH with the round's HMAC key on
stdin. The key is read before anything else and never written anywhere; the process then detaches
(double fork, new session, stdio to `agent.log`) so that a dropped connection does not end the
round. Everything the validator needs later lives in the job directory:

    job.json        the JobSpec (no secret)            progress.jsonl  ProgressEvent lines
    pid             the detached process id            status.json     JobStatus, at the end
    agent.log       the agent's own log                urls.json       refreshed upload URLs

A job kind is `async def (spec, ctx) -> RoundReport`; `ctx` lets it report progress and upload
traces. The report is signed and uploaded to the `report.json` slot whatever the kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TextIO

import httpx

from cacheon import __version__
from cacheon.agent import uploads
from cacheon.agent.probe import run_probe
from cacheon.agent.round import run_round
from cacheon.log import get_logger
from cacheon.protocol import (
    REPORT_OBJECT,
    JobKind,
    JobSpec,
    JobStatus,
    Phase,
    ProgressEvent,
    RoundReport,
    TraceRecord,
    TraceRef,
    encode_trace,
    sign_report,
    trace_object,
)

PROGRESS_FILE = "progress.jsonl"
STATUS_FILE = "status.json"
PID_FILE = "pid"
LOG_FILE = "agent.log"
KEY_BYTES = 32

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_UPLOAD_FAILED = 3

log = get_logger(__name__)


class JobError(Exception):
    """The job cannot start; the message says why (bad job file, bad key, already ran)."""


class JobContext:
    """What a job kind may do besides computing its report: say how far it is, upload traces."""

    def __init__(
        self, spec: JobSpec, job_dir: Path, book: uploads.SlotBook, client: httpx.AsyncClient
    ) -> None:
        self.spec = spec
        self.job_dir = job_dir
        self._book = book
        self._client = client
        self._traces: list[TraceRef] = []
        self._started = time.monotonic()

    @property
    def traces(self) -> tuple[TraceRef, ...]:
        return tuple(self._traces)

    @property
    def deadline_left_s(self) -> float:
        return self.spec.round_deadline_s - (time.monotonic() - self._started)

    def emit(self, phase: Phase, **fields: object) -> None:
        """Append one progress line; the validator tails the file (flushed per line)."""
        event = ProgressEvent(
            ts=time.time(),
            phase=phase,
            elapsed_s=round(time.monotonic() - self._started, 3),
            **fields,
        )
        with (self.job_dir / PROGRESS_FILE).open("ab") as handle:
            handle.write(event.model_dump_json(exclude_none=True).encode() + b"\n")

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        """Upload the next numbered trace object; its hash goes into the signed report."""
        name = trace_object(len(self._traces))
        data = encode_trace(records)
        await uploads.upload(
            self._client, self._book, name, data, wait_s=max(60.0, self.deadline_left_s)
        )
        ref = TraceRef(
            name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), records=len(records)
        )
        self._traces.append(ref)
        return ref


JobKindRunner = Callable[[JobSpec, JobContext], Awaitable[RoundReport]]

JOB_KINDS: dict[JobKind, JobKindRunner] = {JobKind.PROBE: run_probe, JobKind.ROUND: run_round}
"""The kinds this agent runs."""


def read_key(stream: TextIO | None = None) -> bytes:
    """The HMAC key: one hex line on stdin, never a file or an argument (those are visible)."""
    line = (stream or sys.stdin).readline()
    try:
        key = bytes.fromhex(line.strip())
    except ValueError:
        raise JobError("the HMAC key on stdin is not hex") from None
    if len(key) != KEY_BYTES:
        raise JobError(f"the HMAC key on stdin must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_job(job_file: Path) -> JobSpec:
    try:
        spec = JobSpec.model_validate_json(job_file.read_bytes())
    except OSError as exc:
        raise JobError(f"{job_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise JobError(f"{job_file}: not a valid job: {exc}") from None
    if spec.kind not in JOB_KINDS:
        raise JobError(f"job kind {spec.kind} is not supported by cacheon-agent {__version__}")
    if (job_file.parent / STATUS_FILE).exists() or (job_file.parent / PID_FILE).exists():
        raise JobError(f"{job_file.parent} already ran a job; a job runs once")
    return spec


def detach(job_dir: Path) -> int | None:
    """Double-fork into a new session with stdio on the log. Returns the child's pid in the
    caller and None in the detached child."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end, "rb") as pipe:
            pid = pipe.read().decode()
        return int(pid) if pid else 0
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    log_fd = os.open(job_dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    (job_dir / PID_FILE).write_text(str(os.getpid()))
    os.write(write_end, str(os.getpid()).encode())
    os.close(write_end)
    return None


async def run_job(spec: JobSpec, key: bytes, job_dir: Path) -> JobStatus:
    """Run the job's kind, sign and upload its report, and write `status.json`."""
    book = uploads.SlotBook(job_dir, spec.uploads)
    async with httpx.AsyncClient(timeout=httpx.Timeout(uploads.PUT_TIMEOUT_S)) as client:
        ctx = JobContext(spec, job_dir, book, client)
        ctx.emit(Phase.PREPARE, message=f"cacheon-agent {__version__}, job {spec.kind}")
        try:
            report = await asyncio.wait_for(
                JOB_KINDS[spec.kind](spec, ctx), timeout=spec.round_deadline_s
            )
        except Exception as exc:  # any failure of the job ends it with a status, never silently
            log.error("job failed", error=repr(exc), trace=traceback.format_exc())
            error = f"{type(exc).__name__}: {exc}"
            ctx.emit(Phase.FAILED, error=error)
            return _finish(job_dir, spec, EXIT_JOB_FAILED, uploaded=False, error=error)
        report = report.model_copy(
            update={"traces": ctx.traces, "agent_version": __version__, "kind": spec.kind}
        )
        ctx.emit(Phase.UPLOAD, message=REPORT_OBJECT)
        body = sign_report(key, report).model_dump_json().encode()
        try:
            await uploads.upload(
                client, book, REPORT_OBJECT, body, wait_s=max(60.0, ctx.deadline_left_s)
            )
        except uploads.UploadError as exc:
            ctx.emit(Phase.FAILED, error=str(exc))
            return _finish(job_dir, spec, EXIT_UPLOAD_FAILED, uploaded=False, error=str(exc))
        ctx.emit(Phase.DONE, message=f"report uploaded with {len(ctx.traces)} traces")
        return _finish(job_dir, spec, EXIT_OK, uploaded=True, error=None)


def _finish(
    job_dir: Path, spec: JobSpec, code: int, *, uploaded: bool, error: str | None
) -> JobStatus:
    status = JobStatus(
        round_id=spec.round_id,
        exit_code=code,
        report_uploaded=uploaded,
        error=error,
        finished_at=time.time(),
    )
    tmp = job_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(status.model_dump_json())
    tmp.replace(job_dir / STATUS_FILE)
    return status
