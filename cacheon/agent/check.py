"""The validator's round on a miner's own machine, for `cacheon-miner check`.

Miners win or lose on what they can test before they pay to commit, so the check runs the very
round the validator's agent runs (`RoundRunner`): the same launch order (`B, [L], C1, [L'], B'`),
the same prompts from the same seed, the same run profile, the same correctness pass during
`B'`. It adds one thing: a server that is already running (`--server URL`) can stand in a launch
order without being a container, for servers not yet packaged. Everything here is agent-side
(docker and the base install); the verdict maths stays with the caller, as on the validator.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import docker

from cacheon.agent.correctness import GateResult
from cacheon.agent.loadgen import Target
from cacheon.agent.round import Context, RoundRunner
from cacheon.agent.runtime import (
    DockerRuntime,
    Exit,
    LaunchFault,
    RunProfile,
    Runtime,
    Server,
    ServerSpec,
)
from cacheon.protocol import (
    Contestant,
    GateThresholds,
    ImageFacts,
    JobSpec,
    ReasonCode,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
    Workload,
    encode_trace,
)

ATTACHED_REPOSITORY: Final = "attached/server"
CONTESTANT: Final = "C1"
"""The contestant's key, as the validator names the first challenger of a round."""
OWN_HOTKEY: Final = "this image"
LEADER_HOTKEY: Final = "the leader"
"""Stand-ins for the hotkeys a validator's job names: a check has no chain."""


def attached_image(url: str) -> str:
    """A digest reference that names a running server, so it can take a place in the order."""
    return f"{ATTACHED_REPOSITORY}@sha256:{hashlib.sha256(url.encode()).hexdigest()}"


@dataclass(frozen=True)
class CheckPlan:
    """What one check compares: the images (or attached servers) and the round's parameters."""

    contestant: str
    baseline: str
    leader: str | None
    seed: str
    served_model_name: str
    model_path: str
    max_model_len: int
    workload: Workload
    gate: GateThresholds
    startup_deadline_s: float
    base_layers: frozenset[str] = frozenset()
    """The layers everyone may share, left out of each image's own files (DESIGN.md §4.6)."""

    def job(self) -> JobSpec:
        """The job the validator would give its agent for a round with this one challenger."""
        contestants = [Contestant(key="B", role=Role.BASELINE, image=self.baseline)]
        bookends = []
        if self.leader is not None:
            contestants.append(
                Contestant(key="L", role=Role.LEADER, hotkey=LEADER_HOTKEY, image=self.leader)
            )
            bookends = ["L"]
        contestants.append(
            Contestant(
                key=CONTESTANT, role=Role.CHALLENGER, hotkey=OWN_HOTKEY, image=self.contestant
            )
        )
        return JobSpec(
            round_id=f"check-{self.seed[:12]}",
            seed=self.seed,
            served_model_name=self.served_model_name,
            model_path=self.model_path,
            max_model_len=self.max_model_len,
            contestants=tuple(contestants),
            launch_order=("B", *bookends, CONTESTANT, *bookends, "B"),
            workload=self.workload,
            gate=self.gate,
            startup_deadline_s=self.startup_deadline_s,
            base_layers=tuple(sorted(self.base_layers)),
        )


@dataclass(frozen=True)
class CheckRun:
    report: RoundReport
    gate: Mapping[str, GateResult]
    """The correctness gate's numbers per scored contestant key (none when B' did not score)."""


async def run_check(job: JobSpec, runtime: Runtime, ctx: Context) -> CheckRun:
    runner = RoundRunner(job, runtime, ctx)
    report = await runner.run()
    verdicts = runner.verdicts or {}
    return CheckRun(report, {k: v.gate for k, v in verdicts.items() if v.gate is not None})


@asynccontextmanager
async def local_runtime(job: JobSpec, urls: Mapping[str, str]) -> AsyncIterator[Runtime]:
    """Attached servers for the images in `urls`, this host's Docker for the rest."""
    server = ServerSpec(job.served_model_name, job.model_path, job.max_model_len)
    if all(c.image in urls for c in job.contestants):
        yield LocalRuntime(urls, None)
        return
    client = docker.from_env(timeout=600)
    try:
        yield LocalRuntime(urls, DockerRuntime(client, RunProfile.for_host(), server))
    finally:
        client.close()


class LocalRuntime:
    """Routes each image to an attached server (by its `attached_image` name) or to Docker."""

    def __init__(self, urls: Mapping[str, str], containers: Runtime | None) -> None:
        self.urls = urls
        self.containers = containers

    async def remove_leftovers(self) -> int:
        return 0 if self.containers is None else await self.containers.remove_leftovers()

    async def pull(self, image: str) -> ImageFacts:
        if image in self.urls:
            return ImageFacts(digest=image.rpartition("@")[2])
        return await self._docker(image).pull(image)

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        url = self.urls.get(image)
        if url is not None:
            return AttachedServer(url, log_file)
        return await self._docker(image).start(image, name, log_file)

    def _docker(self, image: str) -> Runtime:
        if self.containers is None:
            raise LaunchFault(ReasonCode.AGENT_FAILED, f"no container runtime for {image}")
        return self.containers


class AttachedServer:
    """A server someone else started: reached at its URL, never started or stopped here."""

    def __init__(self, url: str, log_file: Path) -> None:
        self.url = url.rstrip("/")
        self.log_file = log_file

    @property
    def target(self) -> Target:
        return Target(self.url)

    async def exited(self) -> Exit | None:
        return None  # not ours to watch: a dead server shows as failed requests

    async def enforced_limits(self) -> dict[str, str]:
        return {"runtime": "attached server (no isolation, no run profile)"}

    async def stop(self) -> Exit:
        self.log_file.write_text(f"attached server at {self.url}: its log is wherever it runs\n")
        return Exit(None, oom=False)


def write_trace(job_dir: Path, records: Sequence[TraceRecord]) -> TraceRef:
    """Keep a launch's trace beside the report, numbered as the validator's uploads are."""
    data = encode_trace(records)
    name = f"trace-{len(list(job_dir.glob('trace-*'))):03d}.jsonl.gz"
    (job_dir / name).write_bytes(data)
    return TraceRef(
        name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data), records=len(records)
    )
