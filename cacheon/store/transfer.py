"""Where a state snapshot goes and comes from: a local file or an `s3://bucket/key` object.

Operators keep snapshots off the machine (a lost disk is the case they are for), so export and
import accept an S3 location next to a path. The object goes through the project's one S3 client
with the configured endpoint and credentials; only the bucket and key come from the location.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cacheon.config import S3Settings
from cacheon.store import backup
from cacheon.store.objects import ObjectStore, ObjectStoreError

SCHEME = "s3://"
MAX_SNAPSHOT_BYTES = 4 << 30
"""A state database is megabytes; anything near this is not one of ours."""
CONTENT_TYPE = "application/vnd.sqlite3"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


Location = Path | S3Location


def parse_location(text: str) -> Location:
    """A path, or `s3://bucket/key`; raises ValueError naming what is missing."""
    if not text.startswith(SCHEME):
        return Path(text).expanduser()
    bucket, _, key = text[len(SCHEME) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{text}: an S3 location is s3://<bucket>/<key>, key included")
    return S3Location(bucket, key)


def default_export(state_dir: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return state_dir / "backups" / f"state-{stamp}.db"


def export_state(db_path: Path, to: Location, s3: S3Settings) -> backup.StateInfo:
    """Snapshot the live database at `db_path` to a file or an S3 object."""
    if isinstance(to, Path):
        return backup.snapshot(db_path, to)
    store = _store(s3, to)
    with tempfile.TemporaryDirectory(prefix="cacheon-export-") as tmp:
        info = backup.snapshot(db_path, Path(tmp) / "state.db")
        store.put(to.key, info.path.read_bytes(), CONTENT_TYPE)
    return info


def import_state(source: Location, db_path: Path, s3: S3Settings) -> Path | None:
    """Restore `db_path` from a file or an S3 object; returns where the old database was kept."""
    if isinstance(source, Path):
        return backup.restore(source, db_path)
    store = _store(s3, source)
    data = store.get(source.key, MAX_SNAPSHOT_BYTES)
    if data is None:
        raise ObjectStoreError(f"{source}: no such object")
    with tempfile.TemporaryDirectory(prefix="cacheon-import-") as tmp:
        staged = Path(tmp) / "state.db"
        staged.write_bytes(data)
        return backup.restore(staged, db_path, shown=str(source))


def _store(s3: S3Settings, location: S3Location) -> ObjectStore:
    return ObjectStore.from_settings(s3.model_copy(update={"bucket": location.bucket}))
