"""A tar archive read front to back from a stream that cannot seek, at the speed of the stream.

The file fingerprint reads every layer of an image from `docker save`: tars inside a tar, gigabytes
of them. The standard library's stream mode (`tarfile.open(mode="r|")`) reads through Python
buffers of 10 kB that it joins and slices for every header and chunk, which on a large image
costs more than hashing it. Here a member's data is read straight from a buffered reader in the
caller's chunk size; headers are still decoded by `tarfile.TarInfo.frombuf`, with the extended
headers a layer may carry (pax, and GNU long names) applied to the member they precede.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BLOCK = 512
ENCODING = "utf-8"
_ZERO = bytes(BLOCK)
_PAX = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
_GNU_LONG = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
_EXTENSION_LIMIT = 1 << 20
"""An extended header larger than this is not a name: the archive is refused."""


class TarStream:
    """The members of one tar archive, in order; read a member's data before the next."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        self._source = source
        self._left = 0
        """Data bytes of the current member not yet read."""
        self._padding = 0

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        pax: dict[str, str] = {}
        defaults: dict[str, str] = {}
        while True:
            self._skip_rest()
            block = self._source.read(BLOCK)
            if len(block) < BLOCK or block == _ZERO:
                if block and block != _ZERO:
                    raise tarfile.ReadError("truncated header")
                return  # the end-of-archive marker (or a stream that just ends)
            info = tarfile.TarInfo.frombuf(block, ENCODING, "surrogateescape")
            self._start(info.size)
            if info.type in _PAX or info.type in _GNU_LONG:
                data = self._extension()
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    pax["path"] = _text(data.split(b"\0", 1)[0])
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    pax["linkpath"] = _text(data.split(b"\0", 1)[0])
                else:
                    (defaults if info.type == tarfile.XGLTYPE else pax).update(_records(data))
                continue
            fields = {**defaults, **pax}
            pax = {}
            if "path" in fields:
                info.name = fields["path"]
            if "linkpath" in fields:
                info.linkname = fields["linkpath"]
            if "size" in fields and info.isreg():
                info.size = int(fields["size"])
                self._start(info.size)
            yield info

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read the current member's data into `buffer`; 0 at its end."""
        view = memoryview(buffer).cast("B")
        if self._left == 0:
            return 0
        size = self._source.readinto(view[: min(len(view), self._left)])
        if not size:
            raise tarfile.ReadError("the archive ends inside a member")
        self._left -= size
        return size

    def member(self) -> io.BufferedReader:
        """The current member's data as a file, buffered in 1 MB reads."""
        return io.BufferedReader(_Member(self), 1 << 20)

    def _start(self, size: int) -> None:
        self._left = size
        self._padding = -size % BLOCK

    def _skip_rest(self) -> None:
        rest = self._left + self._padding
        while rest:
            skipped = len(self._source.read(min(rest, 1 << 20)))
            if not skipped:
                raise tarfile.ReadError("the archive ends inside a member")
            rest -= skipped
        self._left = self._padding = 0

    def _extension(self) -> bytes:
        if self._left > _EXTENSION_LIMIT:
            raise tarfile.ReadError(f"an extended header of {self._left} bytes")
        data = self._source.read(self._left)
        if len(data) < self._left:
            raise tarfile.ReadError("the archive ends inside an extended header")
        self._left = 0
        return data


class _Member(io.RawIOBase):
    def __init__(self, stream: TarStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._stream.readinto(buffer)


def _records(data: bytes) -> dict[str, str]:
    """The `length key=value\\n` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise tarfile.ReadError("a malformed pax header") from None
        if length <= 0:
            raise tarfile.ReadError("a malformed pax header")
        record = data[space + 1 : pos + length].rstrip(b"\n")
        key, _, value = record.partition(b"=")
        out[_text(key)] = _text(value)
        pos += length
    return out


def _text(raw: bytes) -> str:
    return raw.decode(ENCODING, "surrogateescape")
