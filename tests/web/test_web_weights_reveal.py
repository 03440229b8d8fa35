"""The daemon's weights step on a commit-reveal devnet: a commit that reveals is recorded as
revealed; one the chain never reveals is logged with its reason, counted in /metrics, and set
again at the first block the rate limit allows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from cacheon.chain.devnet import Devnet, SubnetParams
from cacheon.chain.wallet import coldkey_address, dev_wallet, hotkey_address
from cacheon.validator.daemon import Daemon
from tests.web.web_season import NETUID, build_daemon, make_settings, serving

TEMPO = 10
RATE_LIMIT = 15
"""Longer than a tempo, so the set after a missed reveal must wait for it."""


def _daemon(tmp: Path) -> tuple[Daemon, Devnet]:
    wallets = tmp / "wallets"
    owner, validator = dev_wallet(wallets, "owner", 1), dev_wallet(wallets, "validator", 2)
    devnet = Devnet.create(tmp / "chain.db", block_time_s=0)
    params = SubnetParams(
        owner_hotkey=hotkey_address(owner),
        owner_coldkey=coldkey_address(owner),
        tempo=TEMPO,
        weights_rate_limit=RATE_LIMIT,
        commit_reveal=True,
    )
    devnet.add_subnet(NETUID, params)
    devnet.register(NETUID, hotkey_address(owner), coldkey_address(owner))
    devnet.register(
        NETUID, hotkey_address(validator), coldkey_address(validator), validator_permit=True
    )
    devnet.advance(1)
    return build_daemon(make_settings(tmp, devnet.path, wallets, port=0)), devnet


async def _pass(daemon: Daemon) -> str:
    return await daemon.weights.run(await daemon.parts.chain.read_state())


def _statuses(daemon: Daemon) -> list[str]:
    return [w.status for w in reversed(daemon.state.weights_log())]


def _to(devnet: Devnet, block: int) -> None:
    devnet.advance(block - devnet.head())


async def _metrics(daemon: Daemon) -> dict[str, float]:
    async with (
        serving(daemon) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/metrics") as response,
    ):
        text = await response.text()
    return {
        s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_revealed_commit_and_a_missed_one(tmp_path: Path) -> None:
    daemon, devnet = _daemon(tmp_path)
    devnet.fail_reveals(1, "test: the drand pulse never came")

    async def scenario() -> None:
        # nobody leads: everything to the owner's uid 0, committed in epoch 0
        assert await _pass(daemon) == "committed"
        committed_at = devnet.head()
        assert daemon.state.pending_reveal() is not None
        _to(devnet, TEMPO - 1)
        assert await _pass(daemon) == "not_due"  # the reveal epoch has not begun

        _to(devnet, TEMPO)
        with capture_logs() as logs:
            assert await _pass(daemon) == "rate_limited"  # due again, but inside the limit
        missed = [e for e in logs if e["event"].startswith("weights reveal missed")]
        assert len(missed) == 1
        assert "chain holds []" in missed[0]["reason"]
        assert missed[0]["log_level"] == "warning"
        assert daemon.state.last_successful_weights() is None

        _to(devnet, committed_at + RATE_LIMIT - 1)
        assert await _pass(daemon) == "rate_limited"
        _to(devnet, committed_at + RATE_LIMIT)
        assert await _pass(daemon) == "committed"  # the first block the limit allows
        again = daemon.state.pending_reveal()
        assert again is not None

        _to(devnet, (devnet.head() // TEMPO + 1) * TEMPO)
        with capture_logs() as logs:
            assert await _pass(daemon) == "not_due"
        assert [e["event"] for e in logs] == ["weights revealed"]
        assert daemon.state.pending_reveal() is None
        await daemon.parts.chain.close()

    asyncio.run(scenario())
    assert _statuses(daemon) == ["committed", "reveal_missed", "committed", "revealed"]
    assert devnet.weights(NETUID, devnet.head())[1] == [(0, 65535)]
    metrics = asyncio.run(_metrics(daemon))
    assert metrics["cacheon_weights_reveals_missed_total"] == 1
    assert metrics["cacheon_weights_status{revealed}"] == 1
    assert metrics["cacheon_weights_status{reveal_missed}"] == 0
    assert metrics["process_start_time_seconds"] > 0
    daemon.parts.db.close()


def test_a_pending_reveal_survives_a_restart(tmp_path: Path) -> None:
    """The commit to check is in the state, so a new daemon on the same state checks it."""
    daemon, devnet = _daemon(tmp_path)

    async def commit() -> None:
        assert await _pass(daemon) == "committed"
        await daemon.parts.chain.close()

    asyncio.run(commit())
    daemon.parts.db.close()
    _to(devnet, TEMPO)
    restarted = build_daemon(daemon.settings)

    async def check() -> None:
        assert await _pass(restarted) == "not_due"
        await restarted.parts.chain.close()

    asyncio.run(check())
    assert _statuses(restarted) == ["committed", "revealed"]
    restarted.parts.db.close()
