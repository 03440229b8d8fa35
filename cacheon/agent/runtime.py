"""Start, watch and stop contestant servers: in Docker with the one run profile, or as processes.

Baseline and contestants run under the same profile (DESIGN.md §4.8), so no one is advantaged:
pulled by digest and checked against it, `--network none` (the load generator joins the
container's network namespace), all capabilities dropped, no-new-privileges, read-only root,
tmpfs scratch, a large /dev/shm, memlock as high as the host allows, generous pid and memory
limits, the model read-only and no other host path, all GPUs when there are any. What the engine
actually enforced is read back from the kernel (`limits.read_enforced`), since Docker-in-Docker
providers may silently drop cgroup limits.

A pull also fingerprints the image's files for the file-level copy check (`fingerprint.py`): the
image is on the pod anyway, and a pull never runs while a launch measures, so the disk reading and
hashing that a large image costs is in nobody's timing. A save that cannot be read is ours to fix,
never a reason to skip the check: the launch ends as AGENT_FAILED (NO_DECISION).

`ProcessRuntime` has the same interface and runs a command per image on this host, for local
development and for timing a server on a GPU machine without Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from cacheon.agent.fingerprint import FingerprintError, fingerprint_image
from cacheon.agent.limits import memlock_ceiling, read_enforced
from cacheon.agent.loadgen import Target
from cacheon.log import get_logger
from cacheon.protocol import ImageFacts, ReasonCode

PORT: Final = 8000
MODEL_MOUNT: Final = "/model"
LABEL: Final = "cacheon.agent"
SCRATCH_DIRS: Final = ("/tmp", "/var/tmp", "/root/.cache")  # noqa: S108 (tmpfs in the container)
"""Writable tmpfs mounts over the read-only root: scratch space and the usual cache dirs."""
LOG_TAIL_BYTES: Final = 256 << 10
"""The bounded log kept of every launch, whatever its outcome."""

log = get_logger(__name__)


class LaunchFault(Exception):
    """A launch could not go on; `reason` says whose fault (see `arena` attribution)."""

    def __init__(self, reason: ReasonCode, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ServerSpec:
    """What every server of a round is told (DESIGN.md §4.2)."""

    served_model_name: str
    model_path: str
    max_model_len: int
    base_layers: frozenset[str] = frozenset()
    """The job's base layers: files from them are not an image's own (DESIGN.md §4.6)."""


@dataclass(frozen=True)
class Exit:
    """How a server ended: its exit code and whether the kernel killed it for memory."""

    code: int | None
    oom: bool


class Server(Protocol):
    @property
    def target(self) -> Target: ...

    async def exited(self) -> Exit | None:
        """None while the server runs."""

    async def enforced_limits(self) -> dict[str, str]: ...

    async def stop(self) -> Exit:
        """Stop (SIGTERM, then SIGKILL), keep its bounded log, remove it."""


class Runtime(Protocol):
    async def remove_leftovers(self) -> int:
        """Remove servers an earlier agent left behind; returns how many."""

    async def pull(self, image: str) -> ImageFacts:
        """Fetch `image` (a canonical digest reference) and check it; raises LaunchFault."""

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        """Start `image` with the run profile; raises LaunchFault."""


# --- docker --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunProfile:
    """The one set of limits every container of a round runs under."""

    memory_bytes: int
    pids: int
    shm_bytes: int
    tmpfs_bytes: int
    memlock_bytes: int
    """-1 for unlimited."""
    gpus: bool
    stop_timeout_s: float = 30.0

    @classmethod
    def for_host(cls) -> RunProfile:
        """Generous limits from this host: 90% of its memory, memlock as high as allowed."""
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(
            memory_bytes=memory * 9 // 10,
            pids=65536,
            shm_bytes=min(memory // 4, 256 << 30),
            tmpfs_bytes=min(memory // 8, 64 << 30),
            memlock_bytes=memlock_ceiling(),
            gpus=Path("/dev/nvidiactl").exists(),
        )


_DIGEST_REF = re.compile(r"^(?P<repo>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
_NOT_FOUND = ("manifest unknown", "not found", "unauthorized", "denied", "invalid reference")


def container_options(profile: RunProfile, spec: ServerSpec) -> dict[str, Any]:
    """The run profile (DESIGN.md §4.8) as keyword arguments of the docker SDK's `containers.run`.

    One definition for the agent's launches and for `cacheon-miner serve-leader`, which runs the
    leader under the same profile with only its network changed.
    """
    tmpfs = f"rw,nosuid,nodev,size={profile.tmpfs_bytes}"
    return {
        "environment": {
            "PORT": str(PORT),
            "MODEL_PATH": MODEL_MOUNT,
            "SERVED_MODEL_NAME": spec.served_model_name,
            "MAX_MODEL_LEN": str(spec.max_model_len),
            "HF_HUB_OFFLINE": "1",
        },
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {path: tmpfs for path in SCRATCH_DIRS},
        "shm_size": profile.shm_bytes,
        "ulimits": [
            docker.types.Ulimit(
                name="memlock", soft=profile.memlock_bytes, hard=profile.memlock_bytes
            )
        ],
        "pids_limit": profile.pids,
        "mem_limit": profile.memory_bytes,
        "memswap_limit": profile.memory_bytes,
        "volumes": {spec.model_path: {"bind": MODEL_MOUNT, "mode": "ro"}},
        "log_config": docker.types.LogConfig(
            type="json-file", config={"max-size": "10m", "max-file": "2"}
        ),
        "device_requests": (
            [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if profile.gpus else []
        ),
    }


def check_pulled(image: str, attrs: Mapping[str, Any]) -> ImageFacts:
    """The facts of the pulled `image` (the engine's inspect `attrs`); DIGEST_MISMATCH unless
    the engine holds it under the very digest reference asked for.

    The engine names Docker Hub images in `RepoDigests` without `docker.io/` (and `library/`),
    while a canonical reference always has the host: both spellings of one reference match.
    """
    held = attrs.get("RepoDigests") or []
    if image not in held and _familiar(image) not in held:
        raise LaunchFault(ReasonCode.DIGEST_MISMATCH, f"the engine pulled {held} for {image}")
    return ImageFacts(
        digest=image.rpartition("@")[2],
        config_digest=attrs.get("Id"),
        layer_diff_ids=tuple((attrs.get("RootFS") or {}).get("Layers", ())),
    )


def _familiar(image: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if image.startswith(prefix):
            return image.removeprefix(prefix)
    return image


def _agent_id() -> str:
    """The label value of this agent's containers: which process on which host started them
    (read at the start, never at import: the agent detaches by forking after its imports)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(agent: str) -> bool:
    """Whether the agent that labelled a container still runs (on this host: pids are local)."""
    host, _, pid = agent.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False  # our own leftovers are from before this start: nothing of ours runs yet
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


class DockerRuntime:
    def __init__(self, client: docker.DockerClient, profile: RunProfile, spec: ServerSpec) -> None:
        self.client = client
        self.profile = profile
        self.spec = spec

    async def remove_leftovers(self) -> int:
        """Remove the servers of agents that are no longer running (an agent killed mid-round
        leaves its container); an agent still running on this engine keeps its own."""

        def remove() -> int:
            labelled = self.client.containers.list(all=True, filters={"label": LABEL})
            stale = [c for c in labelled if not _owner_alive(c.labels.get(LABEL, ""))]
            for container in stale:
                container.remove(force=True)
            return len(stale)

        return await asyncio.to_thread(remove)

    async def pull(self, image: str) -> ImageFacts:
        match = _DIGEST_REF.match(image)
        if match is None:
            raise LaunchFault(ReasonCode.PULL_FAILED, f"{image} is not a digest reference")
        try:
            pulled = await asyncio.to_thread(self.client.images.pull, image)
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            if isinstance(exc, docker.errors.NotFound) or any(m in text for m in _NOT_FOUND):
                raise LaunchFault(ReasonCode.PULL_FAILED, text[:500]) from None
            raise LaunchFault(ReasonCode.REGISTRY_UNAVAILABLE, text[:500]) from None
        facts = check_pulled(image, pulled.attrs)
        try:
            files = await fingerprint_image(pulled, facts.layer_diff_ids, self.spec.base_layers)
        except FingerprintError as exc:
            raise LaunchFault(ReasonCode.AGENT_FAILED, str(exc)[:500]) from None
        return facts.model_copy(update={"files": files})

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        try:
            container = await asyncio.to_thread(self._run, image, name)
            await asyncio.to_thread(container.reload)
        except docker.errors.APIError as exc:
            with contextlib.suppress(docker.errors.APIError):
                await asyncio.to_thread(self.client.api.remove_container, name, force=True)
            raise LaunchFault(ReasonCode.START_FAILED, str(exc.explanation or exc)[:500]) from None
        return DockerServer(container, self.profile, log_file, self.client)

    def _run(self, image: str, name: str) -> Container:
        """Start `image` detached under the run profile (DESIGN.md §4.8). Blocking (docker SDK)."""
        return self.client.containers.run(
            image,
            detach=True,
            name=name,
            labels={LABEL: _agent_id()},
            **container_options(self.profile, self.spec),
        )


class DockerServer:
    def __init__(
        self, container: Container, profile: RunProfile, log_file: Path, client: docker.DockerClient
    ) -> None:
        self.container = container
        self.profile = profile
        self.log_file = log_file
        self.client = client
        self.pid = int(container.attrs["State"]["Pid"])

    @property
    def target(self) -> Target:
        return Target(f"http://127.0.0.1:{PORT}", netns_pid=self.pid)

    async def exited(self) -> Exit | None:
        await asyncio.to_thread(self.container.reload)
        state = self.container.attrs["State"]
        if state.get("Running"):
            return None
        return Exit(state.get("ExitCode"), bool(state.get("OOMKilled")))

    async def enforced_limits(self) -> dict[str, str]:
        info = await asyncio.to_thread(self.client.info)
        return read_enforced(self.pid, info)

    async def stop(self) -> Exit:
        timeout = int(self.profile.stop_timeout_s)
        with contextlib.suppress(docker.errors.APIError):
            await asyncio.to_thread(self.container.stop, timeout=timeout)
        await asyncio.to_thread(self.container.reload)
        state = self.container.attrs["State"]
        ended = Exit(state.get("ExitCode"), bool(state.get("OOMKilled")))
        try:
            logs = await asyncio.to_thread(self.container.logs, tail=5000)
        except docker.errors.APIError as exc:
            logs = f"(logs unavailable: {exc})".encode()
        self.log_file.write_bytes(logs[-LOG_TAIL_BYTES:])
        with contextlib.suppress(docker.errors.APIError):
            await asyncio.to_thread(self.container.remove, force=True)
        return ended


# --- processes -----------------------------------------------------------------------------------


class ProcessRuntime:
    """One command per image, run on this host with the contract's environment.

    A command's arguments may use `{port}` and `{model_path}`; each server gets a fresh
    port from `ports`. There is no isolation: this is for development and GPU checks only.
    """

    def __init__(
        self, commands: Mapping[str, Sequence[str]], spec: ServerSpec, ports: Sequence[int]
    ) -> None:
        self.commands = commands
        self.spec = spec
        self.ports = list(ports)
        self._next = 0

    async def remove_leftovers(self) -> int:
        return 0

    async def pull(self, image: str) -> ImageFacts:
        match = _DIGEST_REF.match(image)
        if match is None or image not in self.commands:
            raise LaunchFault(ReasonCode.PULL_FAILED, f"no command for {image}")
        return ImageFacts(digest=match["digest"])

    async def start(self, image: str, name: str, log_file: Path) -> Server:
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        argv = [
            arg.replace("{port}", str(port)).replace("{model_path}", self.spec.model_path)
            for arg in self.commands[image]
        ]
        env = {
            **os.environ,
            "PORT": str(port),
            "MODEL_PATH": self.spec.model_path,
            "SERVED_MODEL_NAME": self.spec.served_model_name,
            "MAX_MODEL_LEN": str(self.spec.max_model_len),
            "HF_HUB_OFFLINE": "1",
        }
        with log_file.open("wb") as out:
            try:
                process = await asyncio.to_thread(
                    subprocess.Popen,
                    argv,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaunchFault(ReasonCode.START_FAILED, f"{argv[0]}: {exc}") from None
        return ProcessServer(process, port, log_file)


class ProcessServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_file: Path) -> None:
        self.process = process
        self.port = port
        self.log_file = log_file

    @property
    def target(self) -> Target:
        return Target(f"http://127.0.0.1:{self.port}")

    async def exited(self) -> Exit | None:
        code = self.process.poll()
        return None if code is None else Exit(code, oom=False)

    async def enforced_limits(self) -> dict[str, str]:
        return {"runtime": "process (no isolation)"}

    async def stop(self, grace_s: float = 30.0) -> Exit:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await asyncio.to_thread(self.process.wait)
        data = self.log_file.read_bytes()
        if len(data) > LOG_TAIL_BYTES:
            self.log_file.write_bytes(data[-LOG_TAIL_BYTES:])
        return Exit(self.process.returncode, oom=False)
