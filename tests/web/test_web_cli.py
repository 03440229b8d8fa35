"""`cacheon-validator status` and `weights show` against a running daemon and the devnet."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.web.web_season import NETUID, Season, running


async def cli(*args: str) -> tuple[int, str, str]:
    """The real entry point in a process of its own, while this loop serves the API."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheon.cli.validator", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def chain_flags(season: Season) -> list[str]:
    wallets = Path(season.settings.wallet.path)
    return [
        "--subtensor.network", season.settings.chain.network, "--netuid", str(NETUID),
        "--wallet.name", "validator", "--wallet.hotkey", "hk", "--wallet.path", str(wallets),
    ]  # fmt: skip


def test_status_draws_the_running_validator(season: Season) -> None:
    keys = season.hotkeys

    async def scenario() -> tuple[int, str, str]:
        async with running(season.daemon) as url:
            return await cli("status", "--url", url)

    code, out, err = asyncio.run(scenario())
    assert code == 0, err
    assert season.daemon.hotkey in out
    assert season.daemon.version in out
    leader_line = next(
        line for line in out.splitlines() if "leader" in line and keys["fast"] in line
    )
    assert "x1.30" in leader_line
    assert " .. " in leader_line
    for reason in ("crowned", "not_faster", "greedy_consistency", "copy_of", "pod_lost"):
        assert reason in out
    assert "set at block" in out
    assert "$0.00 of $50.00 today" in out


def test_status_says_when_the_api_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = asyncio.run(cli("status", "--url", f"http://127.0.0.1:{port}"))
    assert code == 1
    assert out == ""
    assert err.startswith(f"status: cannot read http://127.0.0.1:{port}/api/status")
    assert "is the validator running?" in err
    assert len(err.strip().splitlines()) == 1


def test_weights_show_puts_ours_beside_the_chain(season: Season) -> None:
    runner_uid = season.daemon.state.last_successful_weights()
    assert runner_uid is not None
    block = runner_uid.block

    async def scenario() -> tuple[int, str, str]:
        async with running(season.daemon) as url:
            return await cli("weights", "show", "--url", url, *chain_flags(season))

    code, out, err = asyncio.run(scenario())
    assert code == 0, err
    assert f"set at block {block}" in out
    assert "uid 2: 80.0%" in out
    # the chain stores u16 weights normalised to the largest: 0.8 -> 65535, 0.2 -> 16384
    assert "uid 2: 65535 (80.0%)" in out
    assert "16384 (20.0%)" in out
    # the devnet's rate limit is 100 blocks from our last update
    assert f"block {block + 100}" in out
    assert f"block {block + 360}" in out  # next due: the subnet's tempo


def test_weights_show_reads_the_chain_while_the_daemon_is_down(season: Season) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = asyncio.run(
        cli("weights", "show", "--url", f"http://127.0.0.1:{port}", *chain_flags(season))
    )
    assert code == 0, err
    assert "status API unavailable" in out
    assert "uid 2: 65535 (80.0%)" in out
