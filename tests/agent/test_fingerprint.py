"""The file fingerprint on hand-made `docker save` streams: what a container sees is fingerprinted.

Layers apply in order (a later file replaces an earlier one, whiteouts and opaque directories
hide what lies beneath, a hard link is its target's file), both layouts Docker writes are read,
and every file of `FILE_SAMPLE_ALL_BYTES` or more is kept while the small ones are sampled.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator

import pytest

from cacheon.agent.fingerprint import FingerprintError, file_name, fingerprint_saved
from cacheon.protocol import FILE_SAMPLE_ALL_BYTES, FILE_SAMPLE_RATE

BIG = FILE_SAMPLE_ALL_BYTES


def _layer(*entries: tuple[str, bytes | str | None]) -> bytes:
    """A layer tar: (path, content) is a file, (path, None) a directory, (path, "->x") a hard
    link to x, (path, "~>x") a symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, content in entries:
            info = tarfile.TarInfo(path)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.LNKTYPE if content.startswith("->") else tarfile.SYMTYPE
                info.linkname = content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _save(layers: list[bytes], *, oci: bool) -> tuple[list[bytes], tuple[str, ...]]:
    """A `docker save` stream of an image of `layers` (legacy or OCI layout), in 1000-byte
    chunks as the engine streams it, and its diff ids."""
    diff_ids = tuple(f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers)
    names = [
        f"blobs/sha256/{d.removeprefix('sha256:')}" if oci else f"{i:064x}/layer.tar"
        for i, d in enumerate(diff_ids)
    ]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        members = [*zip(names, layers, strict=True), ("config.json", config)]
        manifest = ("manifest.json", json.dumps([{"Layers": names}]).encode())
        for name, data in [manifest, *members] if oci else [*members, manifest]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = out.getvalue()
    return [data[i : i + 1000] for i in range(0, len(data), 1000)], diff_ids


def _files(fingerprint_samples: tuple[tuple[str, int, bool], ...]) -> dict[str, tuple[int, bool]]:
    return {name: (size, own) for name, size, own in fingerprint_samples}


def _big(tag: bytes) -> bytes:
    return tag * (BIG // len(tag) + 1)


@pytest.mark.parametrize("oci", [False, True])
def test_a_container_view_is_fingerprinted(oci: bool) -> None:
    base = _layer(
        ("usr", None),
        ("usr/lib", None),
        ("usr/lib/engine.so", _big(b"base")),
        ("usr/lib/gone.so", _big(b"gone")),
        ("opt", None),
        ("opt/old/a.bin", _big(b"old")),
        ("etc/empty", b""),
    )
    top = _layer(
        ("usr/lib/engine.so", _big(b"mine")),  # replaces the base's
        ("usr/lib/.wh.gone.so", b""),  # deletes the base's
        ("opt/old/.wh..wh..opq", b""),  # hides the base's directory content
        ("opt/old/b.bin", _big(b"new")),
        ("srv/link.bin", "->usr/lib/engine.so"),  # a hard link is a file too
        ("srv/sym", "~>usr/lib/engine.so"),  # a symlink is not
    )
    chunks, diff_ids = _save([base, top], oci=oci)
    fingerprint = fingerprint_saved(chunks, diff_ids, frozenset(diff_ids[:1]))
    size = len(_big(b"mine"))
    mine = hashlib.sha256(_big(b"mine")).digest()
    assert fingerprint.files == 3
    assert _files(fingerprint.samples) == {
        file_name("usr/lib/engine.so", size, mine): (size, True),
        file_name("srv/link.bin", size, mine): (size, True),
        file_name("opt/old/b.bin", len(_big(b"new")), hashlib.sha256(_big(b"new")).digest()): (
            len(_big(b"new")),
            True,
        ),
    }
    assert fingerprint.bytes == sum(size for size, _ in _files(fingerprint.samples).values())


def test_files_of_base_layers_are_not_own_and_small_files_are_sampled() -> None:
    small = [(f"app/f{i:04d}.py", f"print({i})".encode()) for i in range(20 * FILE_SAMPLE_RATE)]
    chunks, diff_ids = _save([_layer(*small), _layer(("app/big.bin", _big(b"x")))], oci=False)
    fingerprint = fingerprint_saved(chunks, diff_ids, frozenset(diff_ids[:1]))
    assert fingerprint.files == len(small) + 1
    kept = [(size, own) for _, size, own in fingerprint.samples]
    assert (len(_big(b"x")), True) in kept  # a large file is always kept
    sampled_small = [own for size, own in kept if size < BIG]
    assert not any(sampled_small)  # the base's files are nobody's own
    assert 10 <= len(sampled_small) <= 32  # 1/64 of 1280, give or take the hash


def test_a_save_without_the_listed_layers_cannot_be_fingerprinted() -> None:
    chunks, diff_ids = _save([_layer(("a", b"1"))], oci=True)
    with pytest.raises(FingerprintError, match="layers"):
        fingerprint_saved(chunks, (*diff_ids, "sha256:" + "0" * 64), frozenset())
    broken: Iterator[bytes] = iter([b"not a tar at all" * 64])
    with pytest.raises(FingerprintError, match="not a readable tar"):
        fingerprint_saved(broken, diff_ids, frozenset())
