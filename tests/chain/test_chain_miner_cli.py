"""`cacheon-miner` in its own process against a devnet file that the test reads as a validator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import ImageRef, parse_commitment
from cacheon.cli.validator import main as validator_main
from cacheon.testing.miner_cli import run_miner
from tests.chain.chain_toys import NETUID, Chain, assert_one_line_error

IMAGE = "docker.io/miner/server@sha256:" + "12" * 32


def test_commit_in_one_process_read_in_another(chain: Chain) -> None:
    proc = run_miner("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags())
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
    status = run_miner("status", *chain.flags(), *chain.miner.flags())
    assert status.returncode == 0, status.stderr
    assert IMAGE in status.stdout
    assert "earliest" in status.stdout


def test_unregistered_hotkey(chain: Chain, make_keys) -> None:
    stranger = make_keys("stranger", 21)
    assert_one_line_error(
        run_miner("commit", IMAGE, "--yes", *chain.flags(), *stranger.flags()), "not registered"
    )


def test_quota_exceeded(chain: Chain) -> None:
    chain.devnet.set_hyperparameter(NETUID, "max_space", 150)
    args = ("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags())
    assert run_miner(*args).returncode == 0
    assert_one_line_error(run_miner(*args), "quota")


def test_malformed_reference(chain: Chain) -> None:
    proc = run_miner("commit", "docker.io/miner/server:latest", "--yes", *chain.flags())
    assert_one_line_error(proc, "malformed reference")
    assert proc.returncode == 2


def test_chain_unreachable(chain: Chain) -> None:
    proc = run_miner(
        "commit", IMAGE, "--yes", "--subtensor.network", "ws://127.0.0.1:9", *chain.miner.flags()
    )
    assert_one_line_error(proc, "cannot reach the chain")


def test_copy_is_reported_by_status(chain: Chain) -> None:
    assert (
        run_miner("commit", IMAGE, "--yes", *chain.flags(), *chain.validator.flags()).returncode
        == 0
    )
    chain.devnet.advance(1)
    assert run_miner("commit", IMAGE, "--yes", *chain.flags(), *chain.miner.flags()).returncode == 0
    status = run_miner("status", *chain.flags(), *chain.miner.flags())
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
