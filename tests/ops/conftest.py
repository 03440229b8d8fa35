"""Operations fixtures: one S3 bucket for the module's snapshots and probes, and settings in
the environment the way systemd's EnvironmentFile gives them to the CLI."""

from __future__ import annotations

import uuid

import pytest

from cacheon.testing.services import SeaweedS3


@pytest.fixture(scope="session")
def ops_bucket(s3: SeaweedS3) -> str:
    bucket = f"cacheon-ops-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_env(s3: SeaweedS3, ops_bucket: str, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The `[s3]` settings of a deployment, as CACHEON_* variables."""
    for name, value in {
        "ENDPOINT_URL": s3.endpoint_url,
        "BUCKET": ops_bucket,
        "ACCESS_KEY_ID": s3.access_key,
        "SECRET_ACCESS_KEY": s3.secret_key,
        "PATH_STYLE": "true",
        "PREFIX": "ops",
    }.items():
        monkeypatch.setenv(f"CACHEON_S3__{name}", value)
    return s3
