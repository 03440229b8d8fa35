"""One round end to end: plan it, get a pod, prepare it, run the agent, read the report back.

The plan (salt, seed, job) is persisted before any money is spent; the agent job is recorded as
soon as it runs, so a validator restarted mid-round reattaches to it (`resume`) instead of
paying for it twice. Whatever breaks on the way (pod, SSH, bootstrap, agent, S3) becomes a
NO_DECISION reason for the whole round, never an exception out of the loop: nobody is penalised
for the validator's or the provider's trouble.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cacheon.arena import Holder, RoundResult
from cacheon.config import Settings
from cacheon.log import get_logger
from cacheon.pods.base import BudgetExceeded, PodError
from cacheon.pods.leases import PodLeases
from cacheon.pods.ledger import Lease
from cacheon.protocol import (
    Block,
    Contestant,
    GateThresholds,
    JobSpec,
    ProgressEvent,
    ReasonCode,
    Role,
    UploadSlot,
    Workload,
)
from cacheon.remote.bootstrap import (
    AgentInstall,
    BootstrapError,
    install_agent,
    package_snapshot,
)
from cacheon.remote.jobs import (
    Connector,
    JobOutcome,
    JobStartError,
    RemoteJob,
    drive_job,
    resume_job,
)
from cacheon.remote.provision import ProvisionError, fetch_plan, model_dir, provision_model
from cacheon.remote.readiness import PodNotReady, PodRequirements, check_pod, prepull
from cacheon.remote.ssh import PodGone, SshError, SshOptions, SshSession, SshUnreachable, connect
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore, ObjectStoreError
from cacheon.validator.evaluation import round_salt, round_seed
from cacheon.validator.handoff import ReportRejected, fetch_report, issue_round_key
from cacheon.validator.state import RoundRecord, RoundState, SubmissionRecord, ValidatorState
from cacheon.validator.watch import RoundWatcher, Step

log = get_logger("cacheon.validator.rounds")


@dataclass(frozen=True)
class RoundPlan:
    record: RoundRecord
    job: JobSpec
    challengers: tuple[SubmissionRecord, ...]
    leader: Holder | None


def plan_round(
    *,
    round_id: str,
    block: Block,
    block_hash: str,
    secret: bytes,
    settings: Settings,
    workload: Workload,
    gate: GateThresholds,
    leader: Holder | None,
    leader_image: str | None,
    challengers: Sequence[SubmissionRecord],
    base_layers: frozenset[str] = frozenset(),
) -> RoundPlan:
    """`B, L, C1..Cn (seeded order), L', B'` (DESIGN.md §3 step 6, §4.5). `base_layers` are the
    layers everyone may share (the baseline's, the configured public bases'): the agent leaves
    their files out of each image's own files when it fingerprints them (§4.6)."""
    salt = round_salt(secret, round_id)
    seed = round_seed(block_hash, salt)
    order = list(challengers)
    random.Random(seed).shuffle(order)  # noqa: S311 (a published, reproducible order)
    contestants = [Contestant(key="B", role=Role.BASELINE, image=settings.model.baseline_image)]
    if leader is not None and leader_image is not None:
        contestants.append(
            Contestant(key="L", role=Role.LEADER, hotkey=leader.hotkey, image=leader_image)
        )
    for index, challenger in enumerate(order, 1):
        contestants.append(
            Contestant(
                key=f"C{index}",
                role=Role.CHALLENGER,
                hotkey=challenger.submission.hotkey,
                image=challenger.image,
            )
        )
    bookends = ["L"] if len(contestants) > 1 and contestants[1].role is Role.LEADER else []
    middle = [c.key for c in contestants if c.role is Role.CHALLENGER]
    job = JobSpec(
        round_id=round_id,
        seed=seed,
        served_model_name=settings.model.name,
        model_path=model_dir(settings.model, settings.pods.agent_root),
        max_model_len=settings.model.max_model_len,
        contestants=tuple(contestants),
        launch_order=("B", *bookends, *middle, *bookends, "B"),
        workload=workload,
        gate=gate,
        startup_deadline_s=settings.workload.startup_deadline_s,
        round_deadline_s=settings.workload.round_deadline_s,
        base_layers=tuple(sorted(base_layers)),
    )
    record = RoundRecord(
        round_id=round_id,
        block=block,
        block_hash=block_hash,
        salt=salt.hex(),
        salt_hash=hashlib.sha256(salt).hexdigest(),
        seed=seed,
        state=RoundState.PLANNED,
        job=job.model_dump_json(),
    )
    return RoundPlan(record, job, tuple(order), leader)


class RoundRunner:
    """Runs planned rounds on pods from `leases`; reads reports with the validator's S3 key."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        state: ValidatorState,
        leases: PodLeases,
        store: ObjectStore,
        watcher: RoundWatcher | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._state = state
        self._leases = leases
        self._store = store
        self._watcher = watcher
        self._installing = asyncio.Lock()
        """One agent install at a time: the wheelhouse is built in this process's cache."""
        self._wheelhouse = Path(settings.validator.state_dir).expanduser() / "wheelhouse"
        package_snapshot()  # now, while the files on disk are the code this process loaded
        self._ssh = SshOptions(
            client_key=Path(settings.pods.ssh_key_path).expanduser(),
            connect_timeout_s=settings.pods.ssh_connect_timeout_s,
            keepalive_s=settings.pods.ssh_keepalive_s,
        )

    async def run(self, plan: RoundPlan) -> RoundResult:
        round_id = plan.record.round_id
        key = issue_round_key(self._db, round_id)
        pods = self._settings.pods
        self._step(round_id, Step.RENT, f"a pod from {', '.join(pods.providers)}")
        try:
            lease = await self._leases.acquire(self._settings.workload.expected_round_hours)
        except BudgetExceeded as exc:
            return RoundResult(round_id, None, ReasonCode.BUDGET, str(exc))
        except PodError as exc:
            return RoundResult(round_id, None, ReasonCode.POD_LOST, str(exc))
        self._step(
            round_id, Step.RENT, f"{lease.name} from {lease.provider}, {lease.price_per_hour:.2f}/h"
        )
        spec = plan.job.model_copy(update={"uploads": self._slots(plan.job)})
        try:
            install = await self._prepare(round_id, lease)

            def started(job: RemoteJob) -> None:
                self._state.round_running(round_id, lease.name, job.job_dir, job.pid)

            order = spec.launch_order
            primed = (f"{k}'" if k in order[:i] else k for i, k in enumerate(order))
            self._step(round_id, Step.LAUNCHES, " ".join(primed))
            outcome = await drive_job(
                self._connector(lease),
                install,
                spec,
                key,
                lambda: self._slots(plan.job),
                on_event=self._events(round_id),
                on_started=started,
            )
        except (SshError, BootstrapError, PodNotReady, ProvisionError, JobStartError) as exc:
            return await self._pod_failed(round_id, lease, exc)
        finally:
            self._leases.done(lease)
        return await self._finish(round_id, outcome)

    async def resume(self, record: RoundRecord) -> RoundResult:
        """Reattach to the agent of a round an earlier process started, if it still runs."""
        round_id = record.round_id
        lease = self._leases.ledger.get(record.pod) if record.pod else None
        if lease is None or not lease.live or record.job_dir is None or record.job_pid is None:
            return RoundResult(round_id, None, ReasonCode.ROUND_ABANDONED, "its pod is gone")
        job = JobSpec.model_validate_json(record.job)
        self._leases.hold(lease)
        try:
            install = await self._prepare(round_id, lease, pull=False)
            outcome = await resume_job(
                self._connector(lease),
                install,
                RemoteJob(round_id, record.job_dir, record.job_pid),
                lambda: self._slots(job),
                deadline_s=job.round_deadline_s,
                on_event=self._events(round_id),
            )
        except (SshError, BootstrapError, PodNotReady, ProvisionError) as exc:
            return await self._pod_failed(round_id, lease, exc)
        finally:
            self._leases.done(lease)
        return await self._finish(round_id, outcome)

    async def _prepare(self, round_id: str, lease: Lease, *, pull: bool = True) -> AgentInstall:
        """Agent installed, pod checked, model verified, baseline pulled (all cached per pod)."""
        settings = self._settings
        self._step(round_id, Step.INSTALL, f"the agent on {lease.name} over SSH")
        session = await self._connector(lease)()
        try:
            async with self._installing:
                install = await install_agent(
                    session,
                    agent_root=settings.pods.agent_root,
                    cache_dir=self._wheelhouse,
                    python_url=settings.pods.python_url,
                    python_sha256=settings.pods.python_sha256,
                )
            if pull:
                model = settings.model
                detail = f"{model.name}@{model.revision} and the baseline"
                self._step(round_id, Step.PROVISION, detail)
                await check_pod(session, install, PodRequirements.from_settings(settings.model))
                plan = fetch_plan(settings.model, settings.pods.agent_root, self._store)
                await provision_model(session, install, plan, on_event=self._events(round_id))
                await prepull(session, settings.model.baseline_image)
        finally:
            await session.close()
        return install

    def _step(self, round_id: str, step: Step, detail: str) -> None:
        if self._watcher is not None:
            self._watcher.step(step, detail, round_id)

    def _events(self, round_id: str) -> Callable[[ProgressEvent], None] | None:
        watcher = self._watcher
        if watcher is None:
            return None
        return lambda event: watcher.progress(event, round_id)

    def _connector(self, lease: Lease) -> Connector:
        target = lease.ssh
        if target is None:
            raise PodNotReady(lease.name, ["the lease has no SSH address"])

        async def open_session() -> SshSession:
            try:
                return await connect(target, self._ssh)
            except SshUnreachable:
                # a pod the provider has ended will not come back: stop reconnecting now
                if not await self._leases.alive(lease):
                    raise PodGone(f"{lease.provider} says pod {lease.pod_id} is gone") from None
                raise

        return open_session

    def _slots(self, job: JobSpec) -> tuple[UploadSlot, ...]:
        return self._store.upload_slots(job.round_id, traces=len(job.launch_order))

    async def _pod_failed(self, round_id: str, lease: Lease, exc: Exception) -> RoundResult:
        reason = ReasonCode.AGENT_FAILED if isinstance(exc, JobStartError) else ReasonCode.POD_LOST
        log.warning("round lost its pod", round_id=round_id, lease=lease.name, reason=str(exc))
        if reason is ReasonCode.POD_LOST:
            await self._leases.pod_lost(lease, str(exc)[:500])
        return RoundResult(round_id, None, reason, f"{type(exc).__name__}: {exc}")

    async def _finish(self, round_id: str, outcome: JobOutcome) -> RoundResult:
        if outcome.status is None:
            tail = outcome.log_tail.strip().splitlines()[-3:]
            return RoundResult(
                round_id, None, ReasonCode.AGENT_FAILED, "agent died: " + " | ".join(tail)
            )
        try:
            fetched = await asyncio.to_thread(fetch_report, self._store, self._db, round_id)
        except ObjectStoreError as exc:
            return RoundResult(round_id, None, ReasonCode.S3_UNAVAILABLE, str(exc))
        if isinstance(fetched, ReportRejected):
            return RoundResult(round_id, None, fetched.reason, fetched.detail)
        return RoundResult(round_id, fetched.report)
