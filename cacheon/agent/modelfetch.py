"""Make the pinned model present on the pod: download, verify every file, never fetch twice.

Weights are large (the 72B model is ~145 GB) and a rented pod's disk may be a provider volume
that outlives the rental, so a file is fetched only when the cache has no verified copy of it.
A verified copy is recorded with its size and mtime in `.cacheon-verified.json`; a file that still
matches its record is trusted without rehashing. A download whose sha256 differs from the pinned
manifest is deleted and refused, naming the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cacheon.protocol import FetchPlan, ModelFile, Phase, ProgressEvent

RECORD_FILE = ".cacheon-verified.json"
PARALLEL_FILES = 4
CHUNK_BYTES = 4 << 20
ATTEMPTS = 4
PROGRESS_EVERY_S = 1.0
TIMEOUT = httpx.Timeout(connect=30.0, read=120.0, write=60.0, pool=60.0)


class FetchError(Exception):
    """A model file could not be made present; the message names the file."""


class _Transient(Exception):
    """A network failure worth another attempt."""


@dataclass(frozen=True)
class FetchResult:
    fetched: int
    cached: int
    bytes_fetched: int
    seconds: float


class _Progress:
    """Counts bytes and files and emits a ProgressEvent at most once a second."""

    def __init__(self, plan: FetchPlan, emit: Callable[[ProgressEvent], None]) -> None:
        self._emit = emit
        self._total_files = len(plan.files)
        self._total_bytes = sum(f.size for f in plan.files)
        self.files = 0
        self.bytes = 0
        self.fetched_bytes = 0
        self._started = time.monotonic()
        self._last = 0.0

    def add(self, count: int, *, fetched: bool) -> None:
        self.bytes += count
        if fetched:
            self.fetched_bytes += count
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self.report("downloading")

    def file_done(self, path: str, how: str) -> None:
        self.files += 1
        self.report(f"{path} {how}")

    def report(self, message: str) -> None:
        self._last = time.monotonic()
        elapsed = self._last - self._started
        rate = self.fetched_bytes / elapsed if elapsed > 0 else 0.0
        self._emit(
            ProgressEvent(
                ts=time.time(),
                phase=Phase.PREPARE,
                done=self.files,
                total=self._total_files,
                bytes_done=self.bytes,
                bytes_total=self._total_bytes,
                elapsed_s=round(elapsed, 3),
                message=f"model: {message} ({rate / 1e6:.1f} MB/s)",
            )
        )


class _Record:
    """The verified-files record of one cache directory."""

    def __init__(self, dest: Path) -> None:
        self._path = dest / RECORD_FILE
        try:
            self._data: dict[str, dict[str, object]] = json.loads(self._path.read_text())
        except (OSError, ValueError):
            self._data = {}

    def verified(self, dest: Path, file: ModelFile) -> bool:
        entry = self._data.get(file.path)
        if entry is None or entry.get("sha256") != file.sha256:
            return False
        try:
            stat = (dest / file.path).stat()
        except OSError:
            return False
        return stat.st_size == file.size and entry.get("mtime_ns") == stat.st_mtime_ns

    def add(self, dest: Path, file: ModelFile) -> None:
        stat = (dest / file.path).stat()
        self._data[file.path] = {
            "sha256": file.sha256,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
        tmp = self._path.with_name(f"{RECORD_FILE}.tmp")
        tmp.write_text(json.dumps(self._data, sort_keys=True, indent=1))
        tmp.replace(self._path)


def _missing_files(plan: FetchPlan, progress: _Progress) -> tuple[Path, _Record, list[ModelFile]]:
    dest = Path(plan.dest)
    dest.mkdir(parents=True, exist_ok=True)
    record = _Record(dest)
    todo = []
    for file in plan.files:
        if record.verified(dest, file):
            progress.add(file.size, fetched=False)
            progress.file_done(file.path, "cached")
        else:
            todo.append(file)
    return dest, record, todo


async def fetch_model(plan: FetchPlan, emit: Callable[[ProgressEvent], None]) -> FetchResult:
    """Make every file of `plan` present and verified under `plan.dest`."""
    started = time.monotonic()
    progress = _Progress(plan, emit)
    dest, record, todo = _missing_files(plan, progress)
    gate = asyncio.Semaphore(PARALLEL_FILES)
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client:

        async def one(file: ModelFile) -> None:
            async with gate:
                await _fetch_with_retries(client, dest, file, progress)
            record.add(dest, file)
            progress.file_done(file.path, "verified")

        try:
            async with asyncio.TaskGroup() as group:
                for file in todo:
                    group.create_task(one(file))
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
    progress.report("all files verified")
    return FetchResult(
        fetched=len(todo),
        cached=len(plan.files) - len(todo),
        bytes_fetched=progress.fetched_bytes,
        seconds=time.monotonic() - started,
    )


async def _fetch_with_retries(
    client: httpx.AsyncClient, dest: Path, file: ModelFile, progress: _Progress
) -> None:
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=1, max=30),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await _fetch_once(client, dest, file, progress)
    except _Transient as exc:
        raise FetchError(f"{file.path}: {exc} after {ATTEMPTS} attempts") from None


async def _fetch_once(
    client: httpx.AsyncClient, dest: Path, file: ModelFile, progress: _Progress
) -> None:
    target = dest / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        async with client.stream("GET", file.url) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise _Transient(f"GET answered {response.status_code}")
            if response.status_code != 200:
                raise FetchError(f"{file.path}: GET answered {response.status_code}")
            with partial.open("wb") as out:
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    progress.add(len(chunk), fetched=True)
                    if size > file.size:
                        break
    except httpx.HTTPError as exc:
        progress.add(-size, fetched=True)
        partial.unlink(missing_ok=True)
        raise _Transient(f"download failed: {type(exc).__name__}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if size != file.size or got != file.sha256:
        partial.unlink(missing_ok=True)
        raise FetchError(
            f"{file.path}: refused, sha256 {got} ({size} bytes) does not match the pinned "
            f"manifest's {file.sha256} ({file.size} bytes)"
        )
    os.replace(partial, target)
