"""Build toy contestant images without network access and push them to a test registry.

The toy server needs only a Python interpreter and its standard library, so the image's root
filesystem is assembled from the interpreter running this code: its binary, the shared libraries
`ldd` names, and the standard library minus tests, Tk and site-packages (about 40 MB), plus
busybox for a shell. That works on any Linux host with no package download, unlike debootstrap
(90 s and a mirror). The base image is imported once per daemon; each toy image is a two-line
build on top of it (its knobs and command), so images differ only in their config and share one
layer in the registry. A `Payload` adds a layer of seeded files, as a miner's own work would (the
file-level copy check compares those); it is generated into a build context on disk, so a large
image never sits in memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import docker.errors

import cacheon
import cacheon.testing
from cacheon.testing import toy_lm, toy_server
from cacheon.testing.services import DockerDaemon, Registry, ServiceError
from cacheon.testing.toy_server import Knobs

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

PYTHON = "/usr/local/bin/python3"
PYTHON_HOME = "/usr/local"
STDLIB = f"{PYTHON_HOME}/lib/python{sys.version_info.major}.{sys.version_info.minor}"
SERVER = "/app/toy_server.py"

_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "__pycache__",
    }
)
_SKIP_MODULES = re.compile(r"^(_tkinter|_test|_xx|xx).*\.so$")
_BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "id", "wc", "env", "nc", "ps", "kill")


def _shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    libraries: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for match in re.finditer(r"(/\S+) \(0x", out.stdout):
            libraries.add(Path(match.group(1)))
    return libraries


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size = len(content)
    info.mode = mode
    tar.addfile(info, io.BytesIO(content))


def _stdlib_files(stdlib: Path) -> Iterable[Path]:
    for path in sorted(stdlib.rglob("*")):
        relative = path.relative_to(stdlib)
        if _SKIP_DIRS & set(relative.parts) or relative.parts[0].startswith("config-"):
            continue
        if path.is_file() and not _SKIP_MODULES.match(path.name):
            yield path


@functools.cache
def python_rootfs_tar() -> bytes:
    """The toy base filesystem as an uncompressed tar; built once per process."""
    executable = Path(sys.executable).resolve()  # a venv's python links to (or copies) it
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    dynload = Path(str(sysconfig.get_config_var("DESTSHARED"))).resolve()
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ServiceError("busybox is not installed; run `make test` (it installs it)")
    extensions = sorted(p for p in dynload.glob("*.so") if not _SKIP_MODULES.match(p.name))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "app", "usr", "usr/local", "usr/local/bin", "var"):
            _add_dir(tar, directory)
        _add_dir(tar, "tmp", 0o1777)
        tar.add(Path(busybox).resolve(), arcname="bin/busybox")
        for applet in _BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        tar.add(executable, arcname=PYTHON.lstrip("/"))
        for library in sorted(_shared_libraries([executable, *extensions])):
            tar.add(library.resolve(), arcname=str(library).lstrip("/"))
        for path in _stdlib_files(stdlib):
            tar.add(path, arcname=f"{STDLIB}/{path.relative_to(stdlib)}".lstrip("/"))
        if not dynload.is_relative_to(stdlib):
            for path in extensions:
                tar.add(path, arcname=f"{STDLIB}/lib-dynload/{path.name}".lstrip("/"))
        _add_bytes(tar, SERVER, Path(toy_server.__file__).read_bytes(), 0o644)
        # the server imports its model as `cacheon.testing.toy_lm`: the package beside the script
        for module in (cacheon, cacheon.testing, toy_lm):
            name = Path(module.__file__ or "").relative_to(Path(cacheon.__file__).parent.parent)
            _add_bytes(tar, f"app/{name}", Path(module.__file__ or "").read_bytes(), 0o644)
        _add_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    return buffer.getvalue()


def _base_image(client: docker.DockerClient) -> str:
    rootfs = python_rootfs_tar()
    tag = f"cacheon-toy-base:{hashlib.sha256(rootfs).hexdigest()[:16]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        repository, _, version = tag.partition(":")
        client.api.import_image_from_data(
            rootfs,
            repository=repository,
            tag=version,
            changes=[f"ENV PYTHONHOME={PYTHON_HOME}", "ENV PYTHONDONTWRITEBYTECODE=1"],
        )
    return tag


def toy_command(knobs: Knobs) -> list[str]:
    return [PYTHON, SERVER, "--knobs", knobs.to_json()]


@dataclass(frozen=True)
class Payload:
    """Files of seeded random content under `root`, one per size: a toy miner's own work."""

    root: str
    sizes: tuple[int, ...]
    seed: int = 0

    def files(self) -> Iterator[tuple[str, int, BinaryIO]]:
        """(path, size, content) of every file; the content is generated as it is read."""
        for i, size in enumerate(self.sizes):
            path = f"{self.root}/{i // 1000:03d}/{i:06d}.bin"
            yield path, size, io.BufferedReader(_SeededBytes(f"{self.seed}/{i}", size), 1 << 20)


class _SeededBytes(io.RawIOBase):
    def __init__(self, seed: str, size: int) -> None:
        self._rng = random.Random(seed)  # noqa: S311 (test content, not a secret)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        out = memoryview(buffer).cast("B")
        size = min(len(out), self._left)
        out[:size] = self._rng.randbytes(size)
        self._left -= size
        return size


def push_toy_image(
    daemon: DockerDaemon,
    registry: Registry,
    repository: str,
    knobs: Knobs | None = None,
    *,
    command: Sequence[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
    payload: Payload | None = None,
    push: bool = True,
) -> str:
    """Build a toy contestant image, push it, and return its canonical digest reference.

    By default the image runs the toy server with `knobs`; `command` replaces that (an isolation
    probe, say), with `extra_files` copied in at their absolute paths and `payload` in a layer of
    its own. With `push` False the image stays in the daemon, tagged, and its tag is returned.
    """
    client = daemon.client()
    try:
        argv = list(command) if command is not None else toy_command(knobs or Knobs())
        target = f"{registry.host}/{repository}"
        with tempfile.TemporaryFile() as context:
            with tarfile.open(fileobj=context, mode="w") as tar:
                copies = "".join(
                    f"COPY files/{i} {path}\n" for i, path in enumerate(sorted(extra_files or {}))
                )
                for i, path in enumerate(sorted(extra_files or {})):
                    _add_bytes(tar, f"files/{i}", (extra_files or {})[path])
                if payload is not None:
                    copies += f"COPY payload/ {payload.root}/\n"
                    for path, size, content in payload.files():
                        info = tarfile.TarInfo(f"payload/{path.removeprefix(payload.root)}")
                        info.size, info.mode = size, 0o644
                        tar.addfile(info, content)
                dockerfile = f"FROM {_base_image(client)}\n{copies}CMD {json.dumps(argv)}\n"
                _add_bytes(tar, "Dockerfile", dockerfile.encode(), 0o644)
            context.seek(0)
            client.images.build(fileobj=context, custom_context=True, tag=target, rm=True)
        return push_tagged(client, target) if push else target
    finally:
        client.close()


def push_tagged(client: docker.DockerClient, target: str) -> str:
    """Push the daemon's `target` (a tag without a version), untag it, return its digest ref."""
    digest = None
    for event in client.api.push(target, tag="latest", stream=True, decode=True):
        if "error" in event:
            raise ServiceError(f"push {target}: {event['error']}")
        digest = event.get("aux", {}).get("Digest", digest)
    if digest is None:
        raise ServiceError(f"push {target}: the registry returned no digest")
    client.images.remove(target, noprune=True)
    return f"{target}@{digest}"


def base_layers(daemon: DockerDaemon) -> tuple[str, ...]:
    """The diff ids of the toy base image: the layers every toy image shares by right."""
    client = daemon.client()
    try:
        image = client.images.get(_base_image(client))
        return tuple(image.attrs["RootFS"]["Layers"])
    finally:
        client.close()
