"""/metrics: what a Prometheus scrape of a validator with a season behind it reads."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cacheon.pods.base import Offer
from cacheon.sshtarget import SshTarget
from tests.web.web_season import Season, running, serving


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def test_metrics_of_a_running_validator(season: Season) -> None:
    async def scenario() -> tuple[str, str, float]:
        async with running(season.daemon) as url:
            kind, text = await scrape(url)
            return kind, text, season.daemon.loop_alive_at

    kind, text, alive_at = asyncio.run(scenario())
    assert kind.startswith("text/plain; version=")
    m = samples(text)
    assert m[("cacheon_loop_alive", ())] == 1
    assert m[("cacheon_chain_reachable", ())] == 1
    assert m[("cacheon_loop_last_success_timestamp_seconds", ())] <= alive_at
    assert m[("cacheon_block_lag_blocks", ())] == 0
    assert m[("cacheon_rounds", (("state", "scored"),))] == 2
    assert m[("cacheon_rounds", (("state", "void"),))] == 1
    assert m[("cacheon_rounds", (("state", "running"),))] == 0
    verdicts = {k[1]: v for k, v in m.items() if k[0] == "cacheon_verdicts_total"}
    assert verdicts[(("outcome", "FAIL"), ("reason", "greedy_consistency"))] == 1
    assert verdicts[(("outcome", "FAIL"), ("reason", "copy_of"))] == 1
    assert verdicts[(("outcome", "NO_DECISION"), ("reason", "pod_lost"))] == 2
    assert verdicts[(("outcome", "PASS"), ("reason", "crowned"))] == 1
    assert m[("cacheon_pending_challengers", ())] == 1
    assert m[("cacheon_pods_running", ())] == 0
    assert m[("cacheon_daily_budget_usd", ())] == 50
    assert m[("cacheon_weights_status", (("status", "set"),))] == 1
    assert m[("cacheon_weights_status", (("status", "rate_limited"),))] == 0
    assert m[("cacheon_weights_age_blocks", ())] == 0
    assert m[("cacheon_launch_noise_sigma", ())] == 0.02
    leader = {
        dict(k[1])["bound"]: v
        for k, v in m.items()
        if k[0] == "cacheon_speed_ratio" and dict(k[1])["place"] == "leader"
    }
    assert leader["low"] < leader["estimate"] < leader["high"]
    info = next(k[1] for k in m if k[0] == "cacheon_validator_info")
    assert dict(info)["evaluation_version"] == season.daemon.version
    # the daemon's own registry, never prometheus-client's global one
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("cacheon") for name in global_names)


def test_block_lag_pods_and_spend(season: Season) -> None:
    daemon = season.daemon
    ledger = daemon.parts.leases.ledger
    now = time.time()
    offer = Offer("static", "h1", "H200", 8, 30.0)
    lease = ledger.record("cacheon-test-pod", offer, now - 60, now + 86400)
    ledger.set_pod(lease.name, "pod-1", 30.0)
    ledger.set_ready(lease.name, SshTarget("127.0.0.1", 22, "root", "ssh-ed25519 AAAA"), now - 50)
    season.devnet.advance(7)

    async def scenario() -> str:
        daemon.loop_alive_at = time.time()
        async with serving(daemon) as url:
            return (await scrape(url))[1]

    m = samples(asyncio.run(scenario()))
    assert m[("cacheon_block_lag_blocks", ())] == 7
    assert m[("cacheon_weights_age_blocks", ())] == 7
    assert m[("cacheon_pods_running", ())] == 1
    spent = m[("cacheon_spend_today_usd", ())]
    assert 0 < spent == pytest.approx(daemon.parts.leases.spent_today(), rel=0.01)


def test_the_grafana_dashboard_charts_only_metrics_we_export(season: Season) -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy/grafana-dashboard.json").read_text())  # fmt: skip
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"cacheon_[a-z_]+", target["expr"])
    }

    async def scenario() -> str:
        async with running(season.daemon) as url:
            return (await scrape(url))[1]

    # a labelled family with nothing to report (no round in flight) is declared, not sampled
    exported = {family.name for family in text_string_to_metric_families(asyncio.run(scenario()))}
    assert charted
    assert charted <= exported | {f"{name}_total" for name in exported}
