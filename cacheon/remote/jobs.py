"""Drive one agent job on a pod: start it detached, follow its progress, survive disconnects.

The agent keeps running when SSH drops; the validator reconnects, reattaches where it left off
(progress is read by byte offset, so no event is lost or seen twice), hands the agent fresh
upload URLs, and keeps following until the agent process ends. How it ended is read from the
job's `status.json`; an agent that died without one is reported with the tail of its log.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from cacheon.log import get_logger
from cacheon.protocol import JobSpec, JobStatus, ProgressEvent, UploadSlot
from cacheon.remote.bootstrap import AgentInstall
from cacheon.remote.ssh import SshDisconnected, SshSession, SshUnreachable

COMMAND_DEADLINE_S = 60.0
STATUS_MAX_BYTES = 64 * 1024
LOG_TAIL_LINES = 40

log = get_logger(__name__)

Connector = Callable[[], Awaitable[SshSession]]
SlotMaker = Callable[[], tuple[UploadSlot, ...]]


class JobStartError(Exception):
    """The agent refused the job or could not be started; the message has its answer."""


@dataclass(frozen=True)
class RemoteJob:
    round_id: str
    job_dir: str
    pid: int

    @property
    def job_file(self) -> str:
        return f"{self.job_dir}/job.json"


@dataclass
class JobOutcome:
    """How a job ended as seen from the validator. `status` is None when the agent died
    without writing one (killed, OOM, pod rebooted); `log_tail` then says what it last did."""

    job: RemoteJob
    status: JobStatus | None
    events: list[ProgressEvent] = field(default_factory=list)
    reattached: int = 0
    log_tail: str = ""


def job_dir(install: AgentInstall, round_id: str) -> str:
    return f"{install.agent_root}/jobs/{round_id}"


async def start_job(
    session: SshSession, install: AgentInstall, spec: JobSpec, key: bytes
) -> RemoteJob:
    """Write the job file and start the agent detached; the key goes over stdin only."""
    directory = job_dir(install, spec.round_id)
    await session.run(f"mkdir -p -m 700 {shlex.quote(directory)}", deadline_s=COMMAND_DEADLINE_S)
    job = RemoteJob(spec.round_id, directory, 0)
    await session.write_file(job.job_file, spec.model_dump_json().encode())
    result = await session.run(
        f"{shlex.quote(install.agent)} run --job {shlex.quote(job.job_file)}",
        deadline_s=COMMAND_DEADLINE_S,
        stdin=key.hex() + "\n",
        check=False,
    )
    if result.exit_status != 0:
        raise JobStartError(f"cacheon-agent run refused the job: {result.stderr.strip()}")
    try:
        pid = int(json.loads(result.stdout.strip().splitlines()[-1])["pid"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise JobStartError(f"cacheon-agent run answered {result.stdout!r}") from None
    log.info("agent job started", round_id=spec.round_id, pid=pid, pod=str(session.target))
    return RemoteJob(spec.round_id, directory, pid)


async def refresh_urls(
    session: SshSession, install: AgentInstall, job: RemoteJob, slots: tuple[UploadSlot, ...]
) -> None:
    """Hand the running agent fresh presigned URLs (over stdin, not the command line)."""
    body = "[" + ",".join(slot.model_dump_json() for slot in slots) + "]"
    await session.run(
        f"{shlex.quote(install.agent)} refresh_urls --job {shlex.quote(job.job_file)}",
        deadline_s=COMMAND_DEADLINE_S,
        stdin=body,
    )


async def read_status(session: SshSession, job: RemoteJob) -> JobStatus | None:
    data = await session.read_file(f"{job.job_dir}/status.json", STATUS_MAX_BYTES)
    if data is None:
        return None
    try:
        return JobStatus.model_validate_json(data)
    except ValueError:
        return None


async def follow_progress(
    session: SshSession,
    job: RemoteJob,
    offset: int,
    on_event: Callable[[ProgressEvent, int], None],
    deadline_s: float,
) -> None:
    """Stream progress lines from byte `offset` until the agent process exits. `on_event` gets
    each event and the offset just past it, which is where a reattach resumes."""
    path = shlex.quote(f"{job.job_dir}/progress.jsonl")
    command = f"touch {path} && tail -c +{offset + 1} --pid={job.pid} -f {path}"
    async for line in session.lines(command, deadline_s=deadline_s):
        if not line.endswith(b"\n"):
            return  # a partial last line is read again, whole, after a reattach
        offset += len(line)
        try:
            event = ProgressEvent.model_validate_json(line)
        except ValueError:
            log.warning("unreadable progress line", round_id=job.round_id, offset=offset)
            continue
        on_event(event, offset)


async def drive_job(
    connect: Connector,
    install: AgentInstall,
    spec: JobSpec,
    key: bytes,
    new_slots: SlotMaker,
    *,
    on_event: Callable[[ProgressEvent], None] | None = None,
    on_started: Callable[[RemoteJob], None] | None = None,
    reconnect_within_s: float = 300.0,
) -> JobOutcome:
    """Start `spec` on the pod and follow it to the end, reconnecting and reattaching after
    every dropped connection (for at most `reconnect_within_s` each time). URLs are refreshed
    after each reattach and before they expire. `on_started` gets the job as soon as the agent
    runs, so the caller can persist it and resume after its own restart (`resume_job`)."""
    session = await connect()
    job = await start_job(session, install, spec, key)
    if on_started is not None:
        on_started(job)
    expiry = min((slot.expires_at for slot in spec.uploads), default=float("inf"))
    return await _follow(
        connect, session, install, job, new_slots=new_slots, expiry=expiry,
        deadline_s=spec.round_deadline_s, on_event=on_event, reconnect_within_s=reconnect_within_s,
    )  # fmt: skip


async def resume_job(
    connect: Connector,
    install: AgentInstall,
    job: RemoteJob,
    new_slots: SlotMaker,
    *,
    deadline_s: float,
    on_event: Callable[[ProgressEvent], None] | None = None,
    reconnect_within_s: float = 300.0,
) -> JobOutcome:
    """Reattach to a job an earlier validator process started: fresh URLs first (the old ones
    may have expired while nobody refreshed them), then follow its progress from the start."""
    session = await connect()
    slots = new_slots()
    if await read_status(session, job) is None:
        await refresh_urls(session, install, job, slots)
    expiry = min((slot.expires_at for slot in slots), default=float("inf"))
    outcome = await _follow(
        connect, session, install, job, new_slots=new_slots, expiry=expiry,
        deadline_s=deadline_s, on_event=on_event, reconnect_within_s=reconnect_within_s,
    )  # fmt: skip
    outcome.reattached += 1
    return outcome


async def _follow(
    connect: Connector,
    session: SshSession,
    install: AgentInstall,
    job: RemoteJob,
    *,
    new_slots: SlotMaker,
    expiry: float,
    deadline_s: float,
    on_event: Callable[[ProgressEvent], None] | None,
    reconnect_within_s: float,
) -> JobOutcome:
    outcome = JobOutcome(job, None)
    offset = 0
    started = time.monotonic()

    def seen(event: ProgressEvent, new_offset: int) -> None:
        nonlocal offset
        offset = new_offset
        outcome.events.append(event)
        if on_event is not None:
            on_event(event)

    while True:
        left = deadline_s + COMMAND_DEADLINE_S - (time.monotonic() - started)
        try:
            async with asyncio.TaskGroup() as group:
                follow = group.create_task(follow_progress(session, job, offset, seen, left))
                keeper = group.create_task(
                    _keep_urls_fresh(session, install, job, expiry, new_slots)
                )
                await follow
                keeper.cancel()
            break
        except ExceptionGroup as group:
            _, other = group.split(SshDisconnected)
            if other is not None:
                await session.close()
                raise other.exceptions[0] from None
            log.warning("connection to the pod dropped; reattaching", round_id=job.round_id)
        await session.close()
        session = await _reconnect(connect, reconnect_within_s)
        outcome.reattached += 1
        slots = new_slots()
        expiry = min((slot.expires_at for slot in slots), default=float("inf"))
        await refresh_urls(session, install, job, slots)
    try:
        outcome.status = await read_status(session, job)
        if outcome.status is None:
            outcome.log_tail = await _log_tail(session, job)
    finally:
        await session.close()
    return outcome


async def _keep_urls_fresh(
    session: SshSession, install: AgentInstall, job: RemoteJob, expiry: float, new_slots: SlotMaker
) -> None:
    """Refresh the URLs when a quarter of their remaining life is left, while the job runs."""
    while True:
        if math.isinf(expiry):
            await asyncio.Event().wait()  # no slots, nothing to refresh
        await asyncio.sleep(max(1.0, (expiry - time.time()) * 0.75))
        slots = new_slots()
        await refresh_urls(session, install, job, slots)
        expiry = min((slot.expires_at for slot in slots), default=float("inf"))
        log.info("upload URLs refreshed", round_id=job.round_id, slots=len(slots))


async def _reconnect(connect: Connector, within_s: float) -> SshSession:
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(SshUnreachable),
        stop=stop_after_delay(within_s),
        wait=wait_exponential(multiplier=1, max=30),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await connect()
    raise AssertionError("unreachable: tenacity re-raises on the last attempt")


async def _log_tail(session: SshSession, job: RemoteJob) -> str:
    result = await session.run(
        f"tail -n {LOG_TAIL_LINES} {shlex.quote(job.job_dir + '/agent.log')}",
        deadline_s=COMMAND_DEADLINE_S,
        check=False,
    )
    return result.stdout or result.stderr
