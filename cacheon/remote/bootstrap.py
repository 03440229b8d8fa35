"""Install this validator's exact agent on a pod, once per build, without the pod reaching PyPI.

The validator packs its own code into a wheel (the files it is running, so the pod runs the same
code) and downloads a wheelhouse of the base dependencies pinned to the versions installed here,
for the pod's Python and platform; both are cached under `validator.state_dir`. They are
uploaded to `agent_root` (only what the pod lacks), a venv is made with the pod's Python >= 3.11
(the system one, or a standalone build fetched on the pod and checked against its sha256), and
the agent is installed with `--no-index`. A venv that answers `cacheon-agent --version` with our
version is reused. Any failure is a `BootstrapError` carrying the pod's output.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import importlib.metadata
import json
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cacheon
from cacheon import __version__
from cacheon.log import get_logger
from cacheon.remote.ssh import CommandFailed, SshSession

MIN_PYTHON = (3, 11)
SYSTEM_PYTHONS = ("python3.13", "python3.12", "python3.11", "python3")
PIP_DEADLINE_S = 600.0
COMMAND_DEADLINE_S = 120.0
FETCH_PYTHON_DEADLINE_S = 900.0
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

log = get_logger(__name__)


class BootstrapError(Exception):
    """The agent could not be installed on the pod; the message carries the pod's output."""


@dataclass(frozen=True)
class PodPython:
    exe: str
    version: tuple[int, int]
    machine: str
    glibc: tuple[int, int]

    @property
    def tag(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}-{self.machine}-glibc{self.glibc[0]}.{self.glibc[1]}"


@dataclass(frozen=True)
class Wheelhouse:
    self_wheel: Path
    deps: tuple[Path, ...]
    build_id: str
    """`<version>-<hash of our wheel>`: a new build of the same version gets a new venv."""


@dataclass(frozen=True)
class AgentInstall:
    agent_root: str
    build_id: str

    @property
    def venv(self) -> str:
        return f"{self.agent_root}/venvs/{self.build_id}"

    @property
    def agent(self) -> str:
        return f"{self.venv}/bin/cacheon-agent"


# --- the local side: our wheel and the dependency wheelhouse -------------------------------------


@functools.cache
def package_snapshot() -> tuple[tuple[str, bytes], ...]:
    """The package's files as this process first read them. The daemon takes the snapshot when
    it starts, so the pod runs the code the daemon loaded even if the installation changes under
    it (an upgrade without a restart would otherwise sign reports the daemon cannot read)."""
    package_dir = Path(cacheon.__file__).parent
    return tuple(
        (f"cacheon/{path.relative_to(package_dir).as_posix()}", path.read_bytes())
        for path in sorted(package_dir.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def build_self_wheel(dest_dir: Path) -> Path:
    """A wheel of the `cacheon` package as this process loaded it (editable or not), with the
    installed metadata; deterministic, so equal code gives an equal wheel."""
    # the installed dist-info, not a source tree's egg-info that may shadow it from the cwd
    found = list(importlib.metadata.distributions(name="cacheon"))
    dist = next((d for d in found if d.read_text("METADATA")), found[0])
    info = f"cacheon-{__version__}.dist-info"
    entries: list[tuple[str, bytes]] = list(package_snapshot())
    entries += [
        (
            f"{info}/METADATA",
            (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").encode(),
        ),
        (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode()),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: cacheon\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ]
    record = "".join(f"{name},sha256={_b64_digest(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel = dest_dir / f"cacheon-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data)
    return wheel


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _lock() -> str:
    """`name==version` of everything installed here: the pod gets the versions we run."""
    pins = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "cacheon" and "+" not in dist.version:
            pins.add(f"{name.lower()}=={dist.version}")
    return "".join(f"{pin}\n" for pin in sorted(pins))


def build_wheelhouse(cache_dir: Path, pod: PodPython) -> Wheelhouse:
    """Our wheel plus the base dependencies' wheels for the pod's Python; the dependencies are
    downloaded once per (lock, pod Python) and kept in `cache_dir`. Blocking (pip)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # built beside its final place: a rename across filesystems (a tmpfs /tmp) would fail
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        built = build_self_wheel(Path(tmp))
        build_id = f"{__version__}-{hashlib.sha256(built.read_bytes()).hexdigest()[:12]}"
        self_dir = cache_dir / "self" / build_id
        self_dir.mkdir(parents=True, exist_ok=True)
        self_wheel = self_dir / built.name
        built.replace(self_wheel)
    lock = _lock()
    deps_dir = cache_dir / "deps" / f"{pod.tag}-{hashlib.sha256(lock.encode()).hexdigest()[:12]}"
    done = deps_dir / ".complete"
    if not done.exists():
        _download_deps(deps_dir, self_wheel, lock, pod)
        done.write_text(__version__)
    deps = tuple(sorted(p for p in deps_dir.glob("*.whl") if not p.name.startswith("cacheon-")))
    return Wheelhouse(self_wheel, deps, build_id)


def _download_deps(deps_dir: Path, self_wheel: Path, lock: str, pod: PodPython) -> None:
    deps_dir.mkdir(parents=True, exist_ok=True)
    constraints = deps_dir / "constraints.txt"
    constraints.write_text(lock)
    pip_version = importlib.metadata.version("pip")
    platforms = [f"manylinux_2_{minor}_{pod.machine}" for minor in range(17, pod.glibc[1] + 1)]
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--dest", str(deps_dir), "--constraint", str(constraints), "--only-binary=:all:",
        "--python-version", f"{pod.version[0]}.{pod.version[1]}",
        "--implementation", "cp", "--abi", f"cp{pod.version[0]}{pod.version[1]}",
        *(arg for platform in [*platforms, f"manylinux2014_{pod.machine}"] for arg in ("--platform", platform)),
        str(self_wheel), f"pip=={pip_version}",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        raise BootstrapError(
            f"cannot build the agent's wheelhouse for {pod.tag}: {result.stderr.strip()[-2000:]}"
        )


# --- the pod side --------------------------------------------------------------------------------

_PROBE = (
    "import sys, platform, json; "
    "print(json.dumps({'exe': sys.executable, 'version': list(sys.version_info[:2]), "
    "'machine': platform.machine(), 'libc': platform.libc_ver()}))"
)


async def find_python(
    session: SshSession, agent_root: str, python_url: str | None, python_sha256: str | None
) -> PodPython:
    """The pod's Python >= 3.11: a system one, a standalone one fetched earlier, or one fetched
    now from `python_url` (verified against `python_sha256`)."""
    standalone = f"{agent_root}/python/bin/python3"
    found = await _probe_pythons(session, [*SYSTEM_PYTHONS, standalone])
    if found is not None:
        return found
    if python_url is None or python_sha256 is None:
        raise BootstrapError(
            f"{session.target}: no Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} on the pod; "
            "set pods.python_url and pods.python_sha256 to a standalone build to fetch there"
        )
    await _fetch_standalone(session, agent_root, python_url, python_sha256)
    found = await _probe_pythons(session, [standalone])
    if found is None:
        raise BootstrapError(
            f"{session.target}: the standalone Python from {python_url} does not run"
        )
    return found


async def _probe_pythons(session: SshSession, candidates: list[str]) -> PodPython | None:
    script = "; ".join(
        f"command -v {shlex.quote(c)} >/dev/null 2>&1 && {shlex.quote(c)} -c {shlex.quote(_PROBE)}"
        for c in candidates
    )
    result = await session.run(f"{script}; true", deadline_s=COMMAND_DEADLINE_S, check=False)
    for line in result.stdout.splitlines():
        try:
            info = json.loads(line)
            version = (int(info["version"][0]), int(info["version"][1]))
            libc_name, libc_version = info["libc"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if version < MIN_PYTHON or libc_name != "glibc":
            continue
        major, minor = (int(part) for part in libc_version.split(".")[:2])
        return PodPython(str(info["exe"]), version, str(info["machine"]), (major, minor))
    return None


async def _fetch_standalone(session: SshSession, agent_root: str, url: str, sha256: str) -> None:
    root = shlex.quote(agent_root)
    archive = f"{root}/python.tar.gz"
    script = (
        f"set -e; mkdir -p {root}; rm -rf {root}/python.new; mkdir {root}/python.new; "
        f"curl -fsSL --retry 3 --max-time {int(FETCH_PYTHON_DEADLINE_S)} -o {archive} {shlex.quote(url)}; "
        f'echo "{sha256}  {archive}" | sha256sum -c --quiet -; '
        f"tar -xzf {archive} -C {root}/python.new; rm -f {archive}; "
        f"rm -rf {root}/python; mv {root}/python.new/python {root}/python; rm -rf {root}/python.new"
    )
    try:
        await session.run(script, deadline_s=FETCH_PYTHON_DEADLINE_S)
    except CommandFailed as exc:
        raise BootstrapError(
            f"{session.target}: fetching a standalone Python failed: {exc}"
        ) from None


async def install_agent(
    session: SshSession,
    *,
    agent_root: str,
    cache_dir: Path,
    python_url: str | None = None,
    python_sha256: str | None = None,
) -> AgentInstall:
    """Make `cacheon-agent` of this exact build runnable on the pod; reuse a verified venv."""
    try:
        python = await find_python(session, agent_root, python_url, python_sha256)
        wheelhouse = await asyncio.to_thread(build_wheelhouse, cache_dir, python)
        install = AgentInstall(agent_root, wheelhouse.build_id)
        if await _version_ok(session, install, check=False):
            log.info("agent already installed", pod=str(session.target), build=install.build_id)
            return install
        await _upload_missing(session, agent_root, wheelhouse)
        await _make_venv(session, python, install, wheelhouse)
        await _version_ok(session, install, check=True)
    except CommandFailed as exc:
        raise BootstrapError(f"{session.target}: installing the agent failed: {exc}") from None
    log.info("agent installed", pod=str(session.target), build=install.build_id, python=python.exe)
    return install


async def _upload_missing(session: SshSession, agent_root: str, wheelhouse: Wheelhouse) -> None:
    wheels = f"{agent_root}/wheels"
    listing = await session.run(
        f"mkdir -p {shlex.quote(wheels)} && ls -1 {shlex.quote(wheels)}",
        deadline_s=COMMAND_DEADLINE_S,
    )
    present = set(listing.stdout.split())
    missing = [path for path in wheelhouse.deps if path.name not in present]
    if missing:
        await session.upload(missing, wheels)
    await session.upload([wheelhouse.self_wheel], f"{agent_root}/self/{wheelhouse.build_id}")
    log.info("wheelhouse uploaded", pod=str(session.target), files=len(missing) + 1)


async def _make_venv(
    session: SshSession, python: PodPython, install: AgentInstall, wheelhouse: Wheelhouse
) -> None:
    wheels = f"{install.agent_root}/wheels"
    pip = next((p.name for p in wheelhouse.deps if p.name.startswith("pip-")), None)
    if pip is None:
        raise BootstrapError("the wheelhouse has no pip wheel")
    venv = shlex.quote(install.venv)
    self_wheel = f"{install.agent_root}/self/{install.build_id}/{wheelhouse.self_wheel.name}"
    expected = shlex.quote(f"cacheon-agent {__version__}")
    script = (
        f'set -e; [ "$({shlex.quote(install.agent)} --version 2>/dev/null)" = {expected} ]'
        f" && exit 0; rm -rf {venv}; {shlex.quote(python.exe)} -m venv --without-pip {venv}; "
        f"{venv}/bin/python {shlex.quote(wheels)}/{pip}/pip install --quiet --no-index "
        f"--disable-pip-version-check --no-cache-dir --find-links {shlex.quote(wheels)} "
        f"{shlex.quote(self_wheel)} 2>&1"
    )
    try:
        await session.run(locked(install.agent_root, "install", script), deadline_s=PIP_DEADLINE_S)
    except CommandFailed as exc:
        raise BootstrapError(
            f"{session.target}: installing the agent into {install.venv} failed: {exc}"
        ) from None


async def _version_ok(session: SshSession, install: AgentInstall, *, check: bool) -> bool:
    expected = f"cacheon-agent {__version__}"
    result = await session.run(
        f"{shlex.quote(install.agent)} --version", deadline_s=COMMAND_DEADLINE_S, check=False
    )
    if result.exit_status == 0 and result.stdout.strip() == expected:
        return True
    if check:
        raise BootstrapError(
            f"{session.target}: {install.agent} --version answered "
            f"{(result.stdout + result.stderr).strip()!r}, expected {expected!r}"
        )
    return False


def locked(agent_root: str, name: str, script: str) -> str:
    """`script` under an exclusive lock of the pod's `agent_root`, where `flock` exists.

    A pod runs one round at a time, but a host that several leases reach (a static host, the
    local arena's two fake pods on one sshd) can be prepared by two rounds at once: the second
    then waits and finds the venv or the model in place, instead of removing it under the first.
    """
    lock = shlex.quote(f"{agent_root}/.{name}.lock")
    body = shlex.quote(script)
    return (
        f"mkdir -p {shlex.quote(agent_root)}; if command -v flock >/dev/null 2>&1;"
        f" then exec flock {lock} sh -c {body}; else exec sh -c {body}; fi"
    )
