"""Chain-layer fixtures: throwaway wallets and a devnet file with a subnet on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import bittensor as bt
import pytest

from cacheon.chain.devnet import Devnet, SubnetParams
from tests.chain.chain_toys import NETUID, Chain, Keys


@pytest.fixture
def make_keys(tmp_path: Path) -> Callable[[str, int], Keys]:
    """A wallet with deterministic, unencrypted keys (seeded so tests never wait on entropy)."""
    path = tmp_path / "wallets"

    def make(name: str, seed: int) -> Keys:
        wallet = bt.Wallet(name=name, hotkey="hk", path=str(path))
        wallet.regenerate_coldkey(
            seed=f"0x{seed:064x}", use_password=False, overwrite=True, suppress=True
        )
        wallet.regenerate_hotkey(
            seed=f"0x{seed + 1000:064x}", use_password=False, overwrite=True, suppress=True
        )
        return Keys(wallet, name, path)

    return make


@pytest.fixture
def chain(tmp_path: Path, make_keys: Callable[[str, int], Keys]) -> Chain:
    """Block time 0 (blocks move only on demand); owner uid 0, validator uid 1, miner uid 2."""
    owner, validator, miner = make_keys("owner", 1), make_keys("val", 2), make_keys("miner", 3)
    devnet = Devnet.create(tmp_path / "chain.db", block_time_s=0)
    devnet.add_subnet(NETUID, SubnetParams(owner_hotkey=owner.hotkey, owner_coldkey=owner.coldkey))
    devnet.register(NETUID, owner.hotkey, owner.coldkey)
    devnet.register(NETUID, validator.hotkey, validator.coldkey, validator_permit=True)
    devnet.register(NETUID, miner.hotkey, miner.coldkey)
    devnet.advance(1)
    return Chain(devnet, owner, validator, miner)
