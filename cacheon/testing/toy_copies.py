"""Copies of a pushed toy image that change its layers but not its files (DESIGN.md §4.6).

A copier who takes the leader's image can republish it with new layers: squashed into one, or
cut into other layers with a tiny file of its own on top. The layer check cannot see either; the
file fingerprint must. Both copies keep the leader's command and environment, so they run and
answer exactly as the leader does.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, cast

import docker
from docker.models.images import Image

from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_tagged

TINY_FILE = "/app/NOTICE"


def push_squashed_copy(
    daemon: DockerDaemon, registry: Registry, leader: str, repository: str
) -> str:
    """The leader's file system as one layer (`docker export` + `docker import`), pushed."""
    client = daemon.client()
    try:
        image = client.images.pull(leader)
        target = f"{registry.host}/{repository}"
        with _exported(client, str(image.id)) as rootfs:
            client.api.import_image_from_data(
                rootfs.read(), repository=target, tag="latest", changes=_config_lines(image)
            )
        return push_tagged(client, target)
    finally:
        client.close()


def push_relayered_copy(
    daemon: DockerDaemon, registry: Registry, leader: str, repository: str
) -> str:
    """The leader's files cut into two new layers, under a new top layer of one tiny file."""
    client = daemon.client()
    try:
        image = client.images.pull(leader)
        target = f"{registry.host}/{repository}"
        with _exported(client, str(image.id)) as rootfs, tempfile.TemporaryFile() as context:
            halves = _split(rootfs)
            with tarfile.open(fileobj=context, mode="w") as build:
                for i, half in enumerate(halves):
                    _add(build, f"part{i}.tar", half)
                _add(build, "notice", b"repackaged\n")
                lines = "".join(f"{line}\n" for line in _config_lines(image))
                dockerfile = (
                    f"FROM scratch\nADD part0.tar /\nADD part1.tar /\nCOPY notice {TINY_FILE}\n"
                    f"{lines}"
                )
                _add(build, "Dockerfile", dockerfile.encode())
            context.seek(0)
            client.images.build(fileobj=context, custom_context=True, tag=target, rm=True)
        return push_tagged(client, target)
    finally:
        client.close()


def _split(rootfs: IO[bytes]) -> list[bytes]:
    """Two tars that together hold `rootfs`: every other entry in each, every directory in both
    (with its mode and owner). A toy image is small enough to hold here."""
    halves = [io.BytesIO(), io.BytesIO()]
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(tarfile.open(fileobj=rootfs, mode="r|"))
        parts = [stack.enter_context(tarfile.open(fileobj=h, mode="w")) for h in halves]
        for index, member in enumerate(source):
            if member.isdir():
                for part in parts:
                    part.addfile(member)
            else:
                content = source.extractfile(member) if member.isfile() else None
                parts[index % 2].addfile(member, content)
    return [half.getvalue() for half in halves]


@contextlib.contextmanager
def _exported(client: docker.DockerClient, image: str) -> Iterator[IO[bytes]]:
    """The flattened file system of `image`, from a container created and removed for it."""
    with tempfile.TemporaryFile() as rootfs:
        container = client.containers.create(image)
        try:
            for chunk in container.export():
                rootfs.write(cast(bytes, chunk))  # the SDK's stubs say str; it streams bytes
        finally:
            container.remove(force=True)
        rootfs.seek(0)
        yield rootfs


def _config_lines(image: Image) -> list[str]:
    """The leader's command and environment as Dockerfile instructions."""
    config = image.attrs["Config"]
    env = [f"ENV {name}={json.dumps(value)}" for name, _, value in
           (entry.partition("=") for entry in config.get("Env") or [])]  # fmt: skip
    return [*env, f"CMD {json.dumps(config['Cmd'])}"]


def _add(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(content), 0o644
    tar.addfile(info, io.BytesIO(content))
