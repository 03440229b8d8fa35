"""The one S3 client: presigned upload slots for a round, reports in, public reports out.

The pod never holds an S3 credential. For each round the validator presigns PUT URLs for exactly
that round's object names (`report.json`, `trace-000.jsonl.gz`, ...) with an expiry, and reads the
results back with its own credentials. Any S3 works (AWS, R2, MinIO, SeaweedFS): endpoint, region
and path-style addressing come from config. boto3 is blocking: callers on the event loop use
`asyncio.to_thread`; botocore's own timeouts bound each call and tenacity retries transient
failures, so no call can hang the daemon.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from cacheon.config import S3Settings
from cacheon.log import get_logger
from cacheon.protocol import (
    REPORT_OBJECT,
    PublicReport,
    UploadSlot,
    trace_object,
)

if TYPE_CHECKING:  # botocore builds its clients at run time; boto3-stubs (dev) types them
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

ATTEMPTS = 4
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_T = TypeVar("_T")

log = get_logger(__name__)


class ObjectStoreError(Exception):
    """S3 could not be used (unreachable, refused, misconfigured); the message says which."""


class ObjectTooLarge(ObjectStoreError):
    """An object is larger than the caller accepts; it was not read."""


def _transient(exc: BaseException) -> bool:
    if isinstance(
        exc,
        EndpointConnectionError | ConnectionClosedError | ReadTimeoutError | ConnectTimeoutError,
    ):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return bool(status >= 500 or exc.response.get("Error", {}).get("Code") == "SlowDown")
    return False


def check_round_id(round_id: str) -> str:
    """A round id becomes part of object keys: letters, digits, `.`, `_`, `-` only."""
    if not _ROUND_ID.match(round_id):
        raise ValueError(f"round id {round_id!r} must match {_ROUND_ID.pattern}")
    return round_id


@dataclass
class ObjectStore:
    client: S3Client
    bucket: str
    prefix: str
    url_expiry_s: int

    @classmethod
    def from_settings(cls, s3: S3Settings) -> ObjectStore:
        if not s3.bucket or not s3.access_key_id or s3.secret_access_key is None:
            raise ObjectStoreError(
                "S3 is not configured: set s3.bucket, s3.access_key_id and "
                "CACHEON_S3__SECRET_ACCESS_KEY (and s3.endpoint_url for anything but AWS)"
            )
        client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=s3.region,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key.get_secret_value(),
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if s3.path_style else "auto"},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"max_attempts": 1, "mode": "standard"},  # tenacity retries instead
            ),
        )
        return cls(client, s3.bucket, s3.prefix.strip("/"), s3.url_expiry_s)

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        )
        try:
            return retrying(fn)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ObjectStoreError(
                f"S3 {what}: {error.get('Code', '?')}: {error.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"S3 {what}: {exc}") from None

    def round_prefix(self, round_id: str) -> str:
        return f"{self.prefix}/rounds/{check_round_id(round_id)}/"

    def round_key(self, round_id: str, name: str) -> str:
        return self.round_prefix(round_id) + name

    def presign_put(self, key: str, expiry_s: int) -> str:
        url: str = self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry_s
        )
        return url

    def presign_get(self, key: str, expiry_s: int | None = None) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=expiry_s or self.url_expiry_s,
        )
        return url

    def upload_slots(
        self, round_id: str, traces: int, expiry_s: int | None = None
    ) -> tuple[UploadSlot, ...]:
        """Presigned PUTs for this round's report and `traces` numbered trace objects, nothing
        else: a URL can write only the key it was signed for."""
        expiry = expiry_s or self.url_expiry_s
        expires_at = time.time() + expiry
        names = [REPORT_OBJECT, *(trace_object(i) for i in range(traces))]
        return tuple(
            UploadSlot(
                name=name,
                url=self.presign_put(self.round_key(round_id, name), expiry),
                expires_at=expires_at,
            )
            for name in names
        )

    def get(self, key: str, max_bytes: int) -> bytes | None:
        """The object's bytes, or None when it does not exist. Refuses objects over `max_bytes`."""

        def read() -> bytes | None:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            length = int(response.get("ContentLength", 0))
            if length > max_bytes:
                response["Body"].close()
                raise ObjectTooLarge(f"{key} is {length} bytes, more than {max_bytes}")
            data: bytes = response["Body"].read(max_bytes + 1)
            return data

        return self._call(f"get {key}", read)

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._call(
            f"put {key}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            ),
        )

    def publish_public_report(self, report: PublicReport) -> str:
        """Write the report under its block and as `latest.json`; returns the block's key."""
        body = report.model_dump_json().encode()
        key = f"{self.prefix}/public/{report.block:012d}.json"
        self.put(key, body)
        self.put(f"{self.prefix}/public/latest.json", body)
        return key

    def _delete(self, keys: list[str]) -> None:
        """One DeleteObjects call: at most 1000 keys, S3's limit."""
        objects: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in keys]
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def prune_rounds(self, keep: int) -> int:
        """Delete every object of all but the `keep` most recently written rounds; returns how
        many objects were deleted. Keeps the bucket bounded however long the daemon runs."""
        root = f"{self.prefix}/rounds/"
        newest: dict[str, float] = {}
        keys: defaultdict[str, list[str]] = defaultdict(list)

        def list_all() -> None:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root):
                for item in page.get("Contents", []):
                    round_id = item["Key"][len(root) :].split("/", 1)[0]
                    keys[round_id].append(item["Key"])
                    stamp = item["LastModified"].timestamp()
                    newest[round_id] = max(newest.get(round_id, 0.0), stamp)

        self._call("list rounds", list_all)
        ordered = sorted(newest, key=lambda r: newest[r], reverse=True)
        doomed = [key for round_id in ordered[keep:] for key in keys[round_id]]
        for start in range(0, len(doomed), 1000):
            self._call("delete old rounds", partial(self._delete, doomed[start : start + 1000]))
        if doomed:
            log.info("pruned old rounds", rounds=len(ordered) - keep, objects=len(doomed))
        return len(doomed)
