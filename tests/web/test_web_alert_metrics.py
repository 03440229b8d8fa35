"""The alert rules in deploy/ watch metrics a validator really exports: every metric name they
mention is in a scrape of a validator with a season behind it (promtool, in `make lint`, checks
the rules themselves and fires each on synthetic series)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.web.web_season import Season, serving

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"
METRIC = re.compile(r"\b(?:cacheon|process)_[a-z_]+\b")


async def _exported(season: Season) -> set[str]:
    async with (
        serving(season.daemon) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/metrics") as response,
    ):
        text = await response.text()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_an_alert_reads_is_exported(season: Season) -> None:
    watched = set(METRIC.findall(RULES.read_text()))
    assert {"cacheon_weights_reveals_missed_total", "process_start_time_seconds"} <= watched
    missing = watched - asyncio.run(_exported(season))
    assert not missing, f"the alert rules read metrics the daemon does not export: {missing}"
