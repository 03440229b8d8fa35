"""`cacheon-miner` in its own process against a devnet file that the test reads as a validator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NETUID, Chain

from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import ImageRef, parse_commitment
from cacheon.cli.validator import main as validator_main

IMAGE = "docker.io/miner/server@sha256:" + "12" * 32


def _miner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cacheon.cli.miner", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0]


def test_commit_in_one_process_read_in_another(chain: Chain) -> None:
    proc = _miner("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags())
    assert proc.returncode == 0, proc.stderr
    assert "committed in block" in proc.stdout

    async def read() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
        (commitment,) = state.commitments
        assert commitment.hotkey == chain.miner.hotkey
        parsed = parse_commitment(commitment.text)
        assert isinstance(parsed, ImageRef)
        assert parsed.canonical == IMAGE

    asyncio.run(read())
    status = _miner("status", *chain.flags(), *chain.miner.flags())
    assert status.returncode == 0, status.stderr
    assert IMAGE in status.stdout
    assert "earliest" in status.stdout


def test_unregistered_hotkey(chain: Chain, make_keys) -> None:
    stranger = make_keys("stranger", 21)
    _one_line_error(
        _miner("commit", IMAGE, "--yes", *chain.flags(), *stranger.flags()), "not registered"
    )


def test_quota_exceeded(chain: Chain) -> None:
    chain.devnet.set_hyperparameter(NETUID, "max_space", 150)
    args = ("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags())
    assert _miner(*args).returncode == 0
    _one_line_error(_miner(*args), "quota")


def test_malformed_reference(chain: Chain) -> None:
    proc = _miner("commit", "docker.io/miner/server:latest", "--yes", *chain.flags())
    _one_line_error(proc, "malformed reference")
    assert proc.returncode == 2


def test_chain_unreachable(chain: Chain) -> None:
    proc = _miner(
        "commit", IMAGE, "--yes", "--subtensor.network", "ws://127.0.0.1:9", *chain.miner.flags()
    )
    _one_line_error(proc, "cannot reach the chain")


def test_copy_is_reported_by_status(chain: Chain) -> None:
    assert (
        _miner("commit", IMAGE, "--yes", *chain.flags(), *chain.validator.flags()).returncode == 0
    )
    chain.devnet.advance(1)
    assert _miner("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags()).returncode == 0
    status = _miner("status", *chain.flags(), *chain.miner.flags())
    assert "first seen by another hotkey" in status.stdout


def test_devnet_commands(tmp_path: Path, make_keys, capsys: pytest.CaptureFixture[str]) -> None:
    keys = make_keys("v", 31)
    net = ["--subtensor.network", f"sim://{tmp_path}/d.db", "--netuid", "3"]
    assert validator_main(["devnet", "init", *net, "--block-time", "0", "--commit-reveal"]) == 0
    assert validator_main(["devnet", "register", *net, *keys.flags(), "--validator"]) == 0
    assert validator_main(["devnet", "advance", *net, "5"]) == 0
    assert validator_main(["devnet", "show", *net]) == 0
    out = capsys.readouterr().out
    assert "as uid 1" in out
    assert "block 6" in out
    assert '"commit_reveal": true' in out
    assert validator_main(["devnet", "init", *net]) == 1
    assert validator_main(["devnet", "show", "--subtensor.network", "finney"]) == 2
