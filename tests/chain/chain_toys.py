"""Helpers shared by the chain tests: the devnet subnet and its wallets as the `chain` fixture
builds them, and the one shape a `cacheon-miner` failure must have."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import bittensor as bt

from cacheon.chain.devnet import Devnet
from cacheon.chain.wallet import hotkey_address
from cacheon.config import ChainSettings

NETUID = 14


@dataclass(frozen=True)
class Keys:
    wallet: bt.Wallet
    name: str
    path: Path

    @property
    def hotkey(self) -> str:
        return hotkey_address(self.wallet)

    @property
    def coldkey(self) -> str:
        return str(self.wallet.coldkeypub.ss58_address)

    def flags(self) -> list[str]:
        return [
            "--wallet.name",
            self.name,
            "--wallet.hotkey",
            "hk",
            "--wallet.path",
            str(self.path),
        ]


@dataclass(frozen=True)
class Chain:
    devnet: Devnet
    owner: Keys
    validator: Keys
    miner: Keys

    @property
    def network(self) -> str:
        return f"sim://{self.devnet.path}"

    def settings(self, **overrides: object) -> ChainSettings:
        return ChainSettings(network=self.network, netuid=NETUID, call_timeout_s=10, **overrides)

    def flags(self) -> list[str]:
        return ["--subtensor.network", self.network, "--netuid", str(NETUID)]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], says: str) -> None:
    """A miner's mistake is one `error:` line, never a traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert says in lines[0], lines[0]
