"""Build the validator's Docker image for real, from the project's Dockerfile, without network.

Nothing is fetched from inside a container. The base is Debian 12 made on the host by
`debootstrap --variant=minbase` from the Debian mirror, with Python and its venv module, and
imported with `docker import`; the Python packages come from a wheelhouse that pip builds on the
host at the versions of the running environment; the Dockerfile is then built on that base with
`--network none`, installing from the wheelhouse alone (its `BASE_IMAGE` and `WHEELHOUSE` build
arguments). debootstrap takes about two and a half minutes and the wheelhouse about twenty
seconds, so both are cached under `build/`, each in a directory named by a hash of its inputs; a
change of input makes a new directory and leaves the old one for `rm -rf build/validator-*`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from cacheon.testing.services import DockerDaemon, ServiceError

DEBIAN_SUITE = "bookworm"
DEBIAN_PYTHON = (3, 11)
"""Debian 12's python3: the wheelhouse is built by this interpreter, so it must match."""
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
EXTRA = "validator"
BUILD_RECIPE = 1
"""Bump when the way the base or the wheelhouse is made changes, so old caches are not reused."""


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    base_s: float
    """Making the base: debootstrap (when not cached) and the import."""
    wheels_s: float
    """Making the wheelhouse (when not cached)."""
    build_s: float
    """`docker build` of the project's Dockerfile."""


def build_validator_image(daemon: DockerDaemon, repo: Path, tag: str) -> BuiltImage:
    """Build `repo`'s Dockerfile on the test engine as `tag`; caches live in `repo/build`."""
    cache = repo / "build"
    started = time.monotonic()
    base_tar = debian_base(cache)
    client = daemon.client()
    try:
        version = base_tar.parent.name.rsplit("-", 1)[1]
        base_tag = f"cacheon-base:{version}"
        try:
            client.images.get(base_tag)
        except docker.errors.ImageNotFound:
            client.api.import_image_from_file(str(base_tar), repository="cacheon-base", tag=version)
        base_s = time.monotonic() - started
        started = time.monotonic()
        wheels = wheelhouse(cache, repo)
        wheels_s = time.monotonic() - started
        with tempfile.TemporaryDirectory(prefix="cacheon-image-") as scratch:
            context = _context(repo, wheels, Path(scratch))
            started = time.monotonic()
            try:
                image, _ = client.images.build(
                    path=str(context),
                    tag=tag,
                    buildargs={"BASE_IMAGE": base_tag, "WHEELHOUSE": "wheelhouse"},
                    network_mode="none",
                    pull=False,
                    rm=True,
                    forcerm=True,
                )
            except docker.errors.BuildError as exc:
                log = "".join(
                    str(step.get("stream", step.get("error", ""))) for step in exc.build_log
                )
                raise ServiceError(f"docker build failed: {exc.msg}\n{log[-3000:]}") from None
            build_s = time.monotonic() - started
        return BuiltImage(tag, int(image.attrs["Size"]), base_s, wheels_s, build_s)
    finally:
        client.close()


def debian_base(cache: Path) -> Path:
    """A minimal Debian root filesystem with Python as a tar, made once per set of inputs."""
    inputs = {
        "suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "packages": BASE_PACKAGES,
        "recipe": BUILD_RECIPE,
    }  # fmt: skip
    target = cache / f"validator-base-{_key(inputs)}"
    tar = target / "rootfs.tar"
    with _locked(target):
        if tar.exists():
            return tar
        debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
        if debootstrap is None:
            raise ServiceError("debootstrap is not installed; run `make test` (it installs it)")
        if os.geteuid() != 0:
            raise ServiceError("debootstrap needs root, as the test dockerd does")
        root = target / "rootfs"
        try:
            _run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                  DEBIAN_SUITE, str(root), DEBIAN_MIRROR], "debootstrap")  # fmt: skip
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (root / leftover).glob("*"):
                    if path.is_file():
                        path.unlink()
            partial = target / "rootfs.tar.partial"
            _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], "tar")
            partial.rename(tar)
        finally:
            _unmount_below(root)
            shutil.rmtree(root, ignore_errors=True)
    return tar


def wheelhouse(cache: Path, repo: Path) -> Path:
    """Wheels of everything `.[validator]` needs (and the build backend), at the versions
    installed in the running environment, made once per set of requirements and versions."""
    if sys.version_info[:2] != DEBIAN_PYTHON:
        raise ServiceError(
            f"the wheelhouse is built by this Python {sys.version_info[:2]}; Debian 12's is"
            f" {DEBIAN_PYTHON}, so run the tests from a Python 3.11 venv"
        )
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    requirements = [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"][EXTRA],
    ]
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    inputs = {"requirements": requirements, "pins": frozen, "recipe": BUILD_RECIPE}
    target = cache / f"validator-wheels-{_key(inputs)}"
    done = target / ".complete"
    with _locked(target):
        if done.exists():
            return target
        constraints = target / "constraints.txt"
        constraints.write_text(frozen)
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target),
              "-c", str(constraints), *requirements], "pip wheel")  # fmt: skip
        done.touch()
    return target


def _context(repo: Path, wheels: Path, scratch: Path) -> Path:
    """The build context an operator's checkout gives (the paths `.dockerignore` lets in), plus
    the wheelhouse."""
    context = scratch / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore"):
        shutil.copy(repo / name, context / name)
    allowed = [
        line[1:] for line in (repo / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]  # fmt: skip
    for name in allowed:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy(source, context / name)
    shutil.copytree(wheels, context / "wheelhouse", ignore=shutil.ignore_patterns("*.txt"))
    return context


def _key(inputs: object) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One builder per cache directory: concurrent test runs wait instead of racing."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f"{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise ServiceError(f"{what} failed with exit code {done.returncode}:\n{tail}")


def _unmount_below(root: Path) -> None:
    """An interrupted debootstrap can leave /proc and /sys mounted in the new root."""
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{root}/")
    ]  # fmt: skip
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
