"""Presigned uploads from the pod: the agent's only way to hand results to the validator.

The slots (one URL per object name) come in the job file and may be replaced while the job
runs by `cacheon-agent refresh_urls`, which writes `urls.json` beside it; every upload re-reads
that file, so a URL refreshed after a reattach is used without restarting the job. An expired
or refused URL is retried until fresh URLs arrive or the wait runs out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from pydantic import TypeAdapter, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from cacheon.protocol import UploadSlot

URLS_FILE = "urls.json"
PUT_TIMEOUT_S = 120.0
REFRESH_MARGIN_S = 30.0
"""A slot this close to expiry is not used; the agent waits for a refresh instead."""

_SLOTS = TypeAdapter(tuple[UploadSlot, ...])


class UploadError(Exception):
    """An object could not be uploaded before the deadline; the message says why."""


class _Retryable(Exception):
    """A failure that fresh URLs or a second try may cure."""


def parse_slots(data: bytes) -> tuple[UploadSlot, ...]:
    """Slots from JSON; raises ValueError with pydantic's explanation when malformed."""
    try:
        return _SLOTS.validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"upload slots: {exc}") from None


def write_refreshed_slots(job_dir: Path, slots: tuple[UploadSlot, ...]) -> None:
    """Atomically replace `urls.json` (mode 0600: the URLs are write capabilities)."""
    tmp = job_dir / f".{URLS_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_SLOTS.dump_json(slots))
    tmp.replace(job_dir / URLS_FILE)


class SlotBook:
    """The current URL of every slot: the job's own, overridden by the latest refresh."""

    def __init__(self, job_dir: Path, initial: tuple[UploadSlot, ...]) -> None:
        self._job_dir = job_dir
        self._initial = {slot.name: slot for slot in initial}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._initial)

    def current(self, name: str) -> UploadSlot | None:
        slots = dict(self._initial)
        try:
            refreshed = parse_slots((self._job_dir / URLS_FILE).read_bytes())
        except (OSError, ValueError):
            refreshed = ()
        slots.update((slot.name, slot) for slot in refreshed)
        return slots.get(name)


async def upload(
    client: httpx.AsyncClient, book: SlotBook, name: str, data: bytes, wait_s: float
) -> None:
    """PUT `data` to slot `name`, waiting up to `wait_s` for usable (fresh) URLs."""
    if name not in book.names:
        raise UploadError(f"{name}: the job has no upload slot of that name")
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_Retryable),
        stop=stop_after_delay(wait_s),
        wait=wait_exponential(multiplier=0.5, max=15),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                await _put_once(client, book, name, data)
    except _Retryable as exc:
        raise UploadError(f"{name}: {exc}") from None


async def _put_once(client: httpx.AsyncClient, book: SlotBook, name: str, data: bytes) -> None:
    slot = book.current(name)
    if slot is None:
        raise UploadError(f"{name}: no URL")
    if slot.expires_at - time.time() < REFRESH_MARGIN_S:
        raise _Retryable("its URL has expired; waiting for refresh_urls")
    try:
        response = await client.put(slot.url, content=data, timeout=PUT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise _Retryable(f"PUT failed: {type(exc).__name__}") from None
    if response.status_code in (200, 201, 204):
        return
    # 403: expired or refused signature (fresh URLs may cure it); 5xx and 429: try again
    if response.status_code in {403, 429} or response.status_code >= 500:
        raise _Retryable(f"PUT answered {response.status_code}")
    raise UploadError(f"{name}: PUT answered {response.status_code}: {response.text[:200]}")
