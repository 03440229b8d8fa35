"""The daemon publishes the leaderboard page beside each public report, on a real S3."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from pydantic import SecretStr

from cacheon.config import S3Settings
from cacheon.protocol import PublicReport
from cacheon.store.objects import ObjectStore
from cacheon.testing.services import SeaweedS3
from cacheon.validator.leaderboard import PAGE_CONTENT_TYPE
from tests.web.web_season import build_season


def test_the_page_is_published_beside_the_report(s3: SeaweedS3, tmp_path: Path) -> None:
    bucket = f"cacheon-web-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    store = ObjectStore.from_settings(
        S3Settings(
            endpoint_url=s3.endpoint_url,
            bucket=bucket,
            access_key_id=s3.access_key,
            secret_access_key=SecretStr(s3.secret_key),
            path_style=True,
            prefix="pub",
        )
    )

    async def scenario() -> tuple[int, str]:
        season = await build_season(tmp_path, store=store, port=0)
        daemon = season.daemon
        try:
            chain = await daemon.parts.chain.read_state()
            await daemon._publish(chain, daemon.state.round("r3"))  # the daemon's own step
            await daemon.parts.chain.close()
            return chain.block, season.hotkeys["fast"]
        finally:
            daemon.parts.db.close()

    block, leader = asyncio.run(scenario())
    report = store.get(f"pub/public/{block:012d}.json", 10_000_000)
    assert report is not None
    assert PublicReport.model_validate_json(report).leader is not None
    for key in (f"pub/public/{block:012d}.html", "pub/public/index.html"):
        head = s3.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == PAGE_CONTENT_TYPE
        page = store.get(key, 10_000_000)
        assert page is not None
        html = page.decode()
        assert html.startswith("<!doctype html>")
        assert f'data-hotkey="{leader}"' in html
        assert "http://" not in html
        assert "https://" not in html  # self-contained: nothing to fetch
