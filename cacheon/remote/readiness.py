"""Is the pod what was rented? Docker answers, the NVIDIA runtime is there, the GPUs are the
model and count we pay for. The agent reports what it sees (`cacheon-agent check`); the verdict
is made here, and a pod without GPUs is named as such rather than failing somewhere later.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cacheon.config import ModelSettings
from cacheon.protocol import PodFacts
from cacheon.remote.bootstrap import AgentInstall
from cacheon.remote.ssh import CommandFailed, SshSession

CHECK_DEADLINE_S = 120.0
PULL_DEADLINE_S = 3600.0


class PodNotReady(Exception):
    """The pod cannot be used; `problems` has one line each."""

    def __init__(self, pod: str, problems: list[str]) -> None:
        super().__init__(f"{pod} is not ready: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class PodRequirements:
    gpu_type: str
    gpu_count: int
    """0: a CPU-only pod is acceptable (the local demo); no GPU or NVIDIA runtime is required."""

    @classmethod
    def from_settings(cls, model: ModelSettings) -> PodRequirements:
        return cls(model.gpu_type, model.gpu_count)


def problems_with(facts: PodFacts, wanted: PodRequirements) -> list[str]:
    """Every way `facts` falls short of `wanted`; empty when the pod is fit. Pure."""
    problems = []
    if facts.docker_problem is not None:
        problems.append(facts.docker_problem)
    if wanted.gpu_count == 0:
        return problems
    names = facts.hardware.gpu_names
    if facts.gpu_problem is not None:
        problems.append(f"expected {wanted.gpu_count} x {wanted.gpu_type}, {facts.gpu_problem}")
    elif len(names) != wanted.gpu_count or any(wanted.gpu_type not in name for name in names):
        problems.append(
            f"expected {wanted.gpu_count} x {wanted.gpu_type}, found {len(names)}: {', '.join(names)}"
        )
    if facts.docker_problem is None and "nvidia" not in facts.runtimes:
        problems.append(f"docker has no nvidia runtime (runtimes: {', '.join(facts.runtimes)})")
    return problems


async def check_pod(
    session: SshSession, install: AgentInstall, wanted: PodRequirements
) -> PodFacts:
    """The pod's facts, or PodNotReady listing every problem."""
    result = await session.run(f"{shlex.quote(install.agent)} check", deadline_s=CHECK_DEADLINE_S)
    try:
        facts = PodFacts.model_validate_json(result.stdout)
    except ValueError as exc:
        raise PodNotReady(
            str(session.target), [f"cacheon-agent check answered badly: {exc}"]
        ) from None
    problems = problems_with(facts, wanted)
    if problems:
        raise PodNotReady(str(session.target), problems)
    return facts


async def prepull(session: SshSession, image: str) -> None:
    """Pull the pinned baseline image ahead of the round (by digest; docker verifies it)."""
    try:
        await session.run(f"docker pull --quiet {shlex.quote(image)}", deadline_s=PULL_DEADLINE_S)
    except CommandFailed as exc:
        raise PodNotReady(
            str(session.target), [f"cannot pull the baseline {image}: {exc}"]
        ) from None
