"""The file fingerprint of a pulled image (DESIGN.md §4.6), read from the stream `docker save` writes.

A squash or a re-layering changes an image's layers but not its files, so the copy check that
survives both compares files. Every regular, non-empty file of the image as a container sees it
(the layers applied in order, whiteouts honoured) is named by the first 16 hex digits of
sha256(path NUL size NUL sha256(content)); the sample keeps every file of `FILE_SAMPLE_ALL_BYTES`
or more and the smaller ones whose name falls in the first 1/`FILE_SAMPLE_RATE` of the hash space,
so any two images' samples cover the same files. A file is `own` when the layer it comes from is
not a base layer: what the arena protects is a miner's own work, not the public images beneath.

It streams: `docker save` writes each layer as an uncompressed tar inside one outer tar, and both
are read front to back (`tarstream.py`), each file hashed a chunk at a time. What is held is a
buffer or two and one small entry per file path, never a layer. The outer tar's `manifest.json`
names the layer members in order, which pairs them with the image's diff ids in either layout
Docker writes (`<id>/layer.tar` before Docker 25, `blobs/sha256/<hex>` from it on).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import posixpath
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import docker.errors
from docker.models.images import Image

from cacheon.agent.tarstream import TarStream
from cacheon.log import get_logger
from cacheon.protocol import FILE_SAMPLE_ALL_BYTES, FILE_SAMPLE_RATE, FileFingerprint

CHUNK = 1 << 20
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_SAMPLED_BELOW = (1 << 64) // FILE_SAMPLE_RATE

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = get_logger(__name__)


class FingerprintError(Exception):
    """The saved image could not be read as the layers its config lists."""


@dataclass(frozen=True)
class _File:
    size: int
    sha256: bytes


@dataclass
class _Layer:
    """What one layer does to the file system beneath it."""

    files: dict[str, _File] = field(default_factory=dict)
    """Its regular, non-empty files (hard links resolved), by normalised path."""
    covers: set[str] = field(default_factory=set)
    """Paths at and under which the layers beneath are hidden: every non-directory entry, every
    whiteout's target, every opaque directory."""
    replaces: set[str] = field(default_factory=set)
    """Paths hidden exactly (a directory over a lower file), not what lies under them."""


def file_name(path: str, size: int, sha256: bytes) -> str:
    """A file's name in the fingerprint: the same file at the same path has it in any image."""
    blob = f"{path}\0{size}\0{sha256.hex()}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sampled(name: str, size: int) -> bool:
    return size >= FILE_SAMPLE_ALL_BYTES or int(name, 16) < _SAMPLED_BELOW


async def fingerprint_image(
    image: Image, layers: Sequence[str], base_layers: frozenset[str]
) -> FileFingerprint | None:
    """The file sample of a pulled image, or None: for an image with no layer of its own (the
    baseline, a reference image), which the poll's layer check already judges and nobody copies,
    and for a job that names no base layers, where a sample would call the public base beneath
    every image its own and make two independent images copies of each other.
    Raises FingerprintError when the engine's save cannot be read."""
    if not base_layers or set(layers) <= base_layers:
        return None
    started = time.monotonic()

    def read() -> FileFingerprint:
        return fingerprint_saved(image.save(chunk_size=CHUNK), layers, base_layers)

    try:
        files = await asyncio.to_thread(read)
    except (docker.errors.APIError, OSError) as exc:
        raise FingerprintError(f"could not read the saved image {image.id}: {exc}") from None
    log.info(
        "image fingerprinted",
        image=image.id,
        files=files.files,
        megabytes=round(files.bytes / 1e6, 1),
        samples=len(files.samples),
        seconds=round(time.monotonic() - started, 1),
    )
    return files


def fingerprint_saved(
    chunks: Iterable[bytes], diff_ids: Sequence[str], base_layers: frozenset[str]
) -> FileFingerprint:
    """The fingerprint of the image whose `docker save` stream is `chunks`; `diff_ids` are its
    layers in order (the config's `rootfs.diff_ids`)."""
    layers: dict[str, _Layer] = {}
    links: dict[str, str] = {}
    manifest: list[dict[str, object]] | None = None
    buffer = bytearray(CHUNK)
    outer = TarStream(io.BufferedReader(_ChunkReader(chunks), CHUNK))
    try:
        for member in outer:
            name = posixpath.normpath(member.name)
            if member.issym():
                target = posixpath.join(posixpath.dirname(name), member.linkname)
                links[name] = posixpath.normpath(target)
            elif member.isreg() and name == "manifest.json":
                manifest = json.loads(outer.member().read())
            elif member.isreg() and (name.endswith("/layer.tar") or name.startswith("blobs/")):
                layer = _read_layer(TarStream(outer.member()), buffer)
                if layer is not None:
                    layers[name] = layer
    except (tarfile.TarError, ValueError) as exc:
        raise FingerprintError(f"the saved image is not a readable tar: {exc}") from None
    order = _layer_members(manifest, links, diff_ids)
    return _flatten(
        [(layers.get(m), d not in base_layers, m) for m, d in zip(order, diff_ids, strict=True)]
    )


def _layer_members(
    manifest: list[dict[str, object]] | None, links: dict[str, str], diff_ids: Sequence[str]
) -> list[str]:
    if not manifest or not isinstance(manifest, list) or len(manifest) != 1:
        raise FingerprintError("the saved image has no manifest.json with one image")
    listed = manifest[0].get("Layers")
    if not isinstance(listed, list) or len(listed) != len(diff_ids):
        raise FingerprintError(
            f"manifest.json lists {len(listed) if isinstance(listed, list) else 'no'} layers,"
            f" the config {len(diff_ids)}"
        )
    members = []
    for entry in listed:
        name = posixpath.normpath(str(entry))
        for _ in range(8):  # a repeated layer is saved once and linked
            name = links.get(name, name)
        members.append(name)
    return members


def _flatten(layers: Sequence[tuple[_Layer | None, bool, str]]) -> FileFingerprint:
    """The files a container sees, the top layer first: a path a higher layer covers is gone."""
    visible: dict[str, tuple[_File, bool]] = {}
    covered: set[str] = set()
    replaced: set[str] = set()
    for layer, own, member in reversed(layers):
        if layer is None:
            raise FingerprintError(f"layer {member} is missing from the saved image or not a tar")
        for path, entry in layer.files.items():
            if path not in replaced and not _under(path, covered):
                visible[path] = (entry, own)
        covered |= layer.covers
        replaced |= layer.replaces
    samples = []
    for path, (entry, own) in visible.items():
        name = file_name(path, entry.size, entry.sha256)
        if sampled(name, entry.size):
            samples.append((name, entry.size, own))
    return FileFingerprint(
        files=len(visible),
        bytes=sum(entry.size for entry, _ in visible.values()),
        samples=tuple(sorted(samples)),
    )


def _under(path: str, covered: set[str]) -> bool:
    """`path` or one of its parent directories is in `covered`."""
    while True:
        if path in covered:
            return True
        cut = path.rfind("/")
        if cut < 0:
            return False
        path = path[:cut]


def _read_layer(tar: TarStream, buffer: bytearray) -> _Layer | None:
    """One layer tar, read as it streams; None when the member is not a tar (a JSON blob)."""
    layer = _Layer()
    try:
        for member in tar:
            _add_entry(layer, tar, member, buffer)
    except tarfile.TarError:
        return None
    return layer


def _add_entry(layer: _Layer, tar: TarStream, member: tarfile.TarInfo, buffer: bytearray) -> None:
    path = _normal(member.name)
    if not path:
        return
    parent, base = posixpath.split(path)
    if base == OPAQUE:
        layer.covers.add(parent)
    elif base.startswith(WHITEOUT):
        layer.covers.add(posixpath.join(parent, base[len(WHITEOUT) :]))
    elif member.isdir():
        layer.replaces.add(path)
    elif member.islnk():
        target = layer.files.get(_normal(member.linkname))
        if target is not None:
            layer.files[path] = target
        layer.covers.add(path)
    else:
        if member.isreg() and member.size > 0:
            layer.files[path] = _File(member.size, _sha256(tar, buffer))
        layer.covers.add(path)


def _sha256(tar: TarStream, buffer: bytearray) -> bytes:
    digest = hashlib.sha256()
    view = memoryview(buffer)
    while size := tar.readinto(view):
        digest.update(view[:size])
    return digest.digest()


def _normal(name: str) -> str:
    """A member's path as the container sees it: relative, no `.` or `..` parts."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


class _ChunkReader(io.RawIOBase):
    """A file over the chunks of a streamed HTTP body, read once, front to back."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        out = memoryview(buffer).cast("B")
        size = min(len(out), len(self._pending))
        out[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
