"""/healthz: 200 only while the loop is alive and the chain answers; the server's lifecycle."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from cacheon.validator.health import LOOP_GRACE_S
from cacheon.validator.rounds import plan_round
from tests.web.web_season import Season, build_daemon, make_settings, running, serving


async def healthz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as response:
        return response.status, await response.json()


def test_healthy_while_the_loop_runs_on_a_reachable_chain(season: Season) -> None:
    async def scenario() -> None:
        async with running(season.daemon) as url:
            status, body = await healthz(url)
            assert (status, body["ok"], body["problems"]) == (200, True, [])
            assert body["head"] == season.devnet.head()

    asyncio.run(scenario())


def test_unhealthy_until_the_first_pass_after_a_stall_and_while_stopping(season: Season) -> None:
    daemon = season.daemon
    stale = daemon.settings.validator.poll_interval_s + LOOP_GRACE_S + 5

    async def scenario() -> None:
        async with serving(daemon) as url:
            status, body = await healthz(url)
            assert (status, body["loop_alive"], body["chain_reachable"]) == (503, False, True)
            assert body["problems"] == ["the loop has not completed a pass yet"]

            daemon.loop_alive_at = time.time()
            assert (await healthz(url))[0] == 200

            daemon.loop_alive_at = time.time() - stale
            status, body = await healthz(url)
            assert status == 503
            assert "completed no pass for" in body["problems"][0]

            # a round takes hours without completing a pass: that is not a stall
            chain = await daemon.parts.chain.read_state()
            record = daemon.state.submissions(current_only=True)[0]
            plan = plan_round(
                round_id="r-long", block=chain.block, block_hash=chain.block_hash,
                secret=b"s", settings=daemon.settings, workload=daemon.workload,
                gate=daemon.gate, leader=None, leader_image=None, challengers=[record],
            )  # fmt: skip
            daemon.state.begin_round(plan.record, [])
            assert (await healthz(url))[0] == 200

            daemon.stop()
            status, body = await healthz(url)
            assert (status, body["problems"]) == (503, ["the validator is stopping"])

    asyncio.run(scenario())


def test_unhealthy_when_the_chain_cannot_be_reached(tmp_path: Path, season: Season) -> None:
    wallets = Path(season.settings.wallet.path)
    settings = make_settings(tmp_path / "other", tmp_path / "no-such-chain.db", wallets, port=0)
    daemon = build_daemon(settings)

    async def scenario() -> None:
        daemon.loop_alive_at = time.time()
        async with serving(daemon) as url:
            status, body = await healthz(url)
            assert (status, body["loop_alive"], body["chain_reachable"]) == (503, True, False)
            assert body["head"] is None
            assert "cannot" in body["problems"][0]

    try:
        asyncio.run(scenario())
    finally:
        daemon.parts.db.close()


def test_a_busy_port_leaves_the_validator_running_without_the_server(season: Season) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = season.daemon
        daemon.settings = daemon.settings.model_copy(
            update={"web": daemon.settings.web.model_copy(update={"port": port})}
        )

        async def scenario() -> None:
            task = asyncio.create_task(daemon.run())
            while not daemon.loop_alive_at:
                assert not task.done()
                await asyncio.sleep(0.05)
            assert daemon.web.url is None
            daemon.stop()
            assert await task == 0

        with capture_logs() as logs:
            asyncio.run(scenario())
    refused = [e for e in logs if e["event"].startswith("status server not started")]
    assert refused
    assert refused[0]["port"] == port


def test_the_server_stops_with_the_daemon(season: Season) -> None:
    async def scenario() -> str:
        async with running(season.daemon) as url:
            assert (await healthz(url))[0] == 200
        assert season.daemon.web.url is None
        return url

    url = asyncio.run(scenario())

    async def after() -> None:
        async with aiohttp.ClientSession() as http:
            try:
                await http.get(url + "/healthz")
            except aiohttp.ClientConnectionError:
                return
            raise AssertionError("the status server still answers after the daemon stopped")

    asyncio.run(after())
