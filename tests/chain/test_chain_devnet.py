"""The real SDK against the devnet: every read and write the chain layer relies on, and its rules."""

from __future__ import annotations

import asyncio

import bittensor as bt
import pytest

from cacheon.chain.devnet_substrate import DevnetSubstrate
from tests.chain.chain_toys import NETUID, Chain

DATA = b"cacheon/1 docker.io/miner/server@sha256:" + b"ab" * 32


def _commit(data: bytes | list[bytes]) -> object:
    parts = data if isinstance(data, list) else [data]
    info = {"fields": [{f"Raw{len(p)}": p} for p in parts]}
    return bt.calls.Commitments.set_commitment(netuid=NETUID, info=info)


async def _client(chain: Chain) -> bt.Client:
    return await bt.Client("local", substrate=DevnetSubstrate(chain.devnet)).connect()


def test_commit_and_read_back_through_the_sdk(chain: Chain) -> None:
    async def go() -> None:
        client = await _client(chain)
        result = await client.submit_call(_commit(DATA), chain.miner.wallet, signer="hotkey")
        assert result.success, result.message
        found = await client.subnets.commitments(NETUID)
        mine = found[chain.miner.hotkey]
        assert (mine.value, mine.uid, mine.block) == (DATA.decode(), 2, chain.devnet.head())
        graph = await (await client.at()).subnets.metagraph(NETUID)
        assert graph.owner_hotkey == chain.owner.hotkey
        assert [n.validator_permit for n in graph] == [False, True, False]
        assert graph.commitments[2].value == DATA.decode()

    asyncio.run(go())


def test_only_registered_hotkeys_commit_and_the_coldkey_is_refused(chain: Chain, make_keys) -> None:
    stranger = make_keys("stranger", 9)

    async def go() -> None:
        client = await _client(chain)
        refused = await client.submit_call(_commit(DATA), stranger.wallet, signer="hotkey")
        assert refused.error is not None
        assert refused.error.name == "AccountNotAllowedCommit"
        coldkey = await client.submit_call(_commit(DATA), chain.miner.wallet)
        assert coldkey.error is not None
        assert coldkey.error.name == "AccountNotAllowedCommit"

    asyncio.run(go())


def test_field_limits_and_quota(chain: Chain) -> None:
    async def go() -> None:
        client = await _client(chain)
        four = await client.submit_call(_commit([b"a"] * 4), chain.miner.wallet, signer="hotkey")
        assert four.error is not None
        assert four.error.name == "TooManyFieldsInCommitmentInfo"
        too_long = bt.calls.Commitments.set_commitment(
            netuid=NETUID, info={"fields": [{"Raw129": b"a" * 129}]}
        )
        with pytest.raises(bt.ChainError, match="exactly"):
            await client.submit_call(too_long, chain.miner.wallet, signer="hotkey")
        chain.devnet.set_hyperparameter(NETUID, "max_space", 250)
        for _ in range(2):
            ok = await client.submit_call(_commit(DATA), chain.miner.wallet, signer="hotkey")
            assert ok.success
        over = await client.submit_call(_commit(DATA), chain.miner.wallet, signer="hotkey")
        assert over.error is not None
        assert over.error.name == "SpaceLimitExceeded"
        chain.devnet.advance(360)
        again = await client.submit_call(_commit(DATA), chain.miner.wallet, signer="hotkey")
        assert again.success

    asyncio.run(go())


def test_weight_rules(chain: Chain) -> None:
    async def go() -> None:
        client = await _client(chain)
        weights = bt.SetWeights(netuid=NETUID, weights={2: 1.0})
        no_permit = await client.execute(weights, chain.miner.wallet)
        assert no_permit.error is not None
        assert no_permit.error.name == "NeuronNoValidatorPermit"
        chain.devnet.set_hyperparameter(NETUID, "weights_version_key", 7)
        old = await client.execute(weights, chain.validator.wallet)
        assert old.error is not None
        assert old.error.name == "IncorrectWeightVersionKey"
        ok = await client.execute(
            bt.SetWeights(netuid=NETUID, weights={2: 1.0}, version_key=7), chain.validator.wallet
        )
        assert ok.success
        assert (await client.weights.weights(NETUID)) == {1: {2: 1.0}}
        with pytest.raises(bt.ChainError, match="rate limit"):
            await client.execute(
                bt.SetWeights(netuid=NETUID, weights={2: 1.0}, version_key=7),
                chain.validator.wallet,
            )

    asyncio.run(go())


def test_reads_are_pinned_to_their_block(chain: Chain) -> None:
    async def go() -> None:
        client = await _client(chain)
        before = chain.devnet.head()
        chain.devnet.advance(1)
        assert (
            await client.submit_call(_commit(DATA), chain.miner.wallet, signer="hotkey")
        ).success
        assert not await (await client.at(before)).subnets.commitments(NETUID)
        assert await (await client.at()).subnets.commitments(NETUID)

    asyncio.run(go())


def test_several_processes_share_one_chain(chain: Chain) -> None:
    from cacheon.chain.devnet import Devnet

    other = Devnet(chain.devnet.path)
    other.advance(5)
    assert chain.devnet.head() == other.head()
