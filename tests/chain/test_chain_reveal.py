"""Commit-reveal on the devnet: a commit becomes the chain's weights at its reveal block, or
never when the devnet is told to fail it; `check_reveal` tells the two apart."""

from __future__ import annotations

import asyncio

from cacheon.chain.client import ChainClient
from cacheon.chain.weights import Commit, WeightsStatus, check_reveal, set_weights
from cacheon.protocol import Uid
from tests.chain.chain_toys import NETUID, Chain

TEMPO = 10


def _commit_reveal(chain: Chain) -> None:
    chain.devnet.set_hyperparameter(NETUID, "commit_reveal", 1)
    chain.devnet.set_hyperparameter(NETUID, "tempo", TEMPO)


async def _commit(client: ChainClient, chain: Chain) -> Commit:
    state = await client.read_state()
    result = await set_weights(client, chain.validator.wallet, {Uid(2): 0.8, Uid(0): 0.2}, state)
    assert result.status is WeightsStatus.COMMITTED, result.detail
    assert result.commit is not None
    assert result.commit.reveal_epoch == state.block // TEMPO + 1
    return result.commit


def test_a_commit_becomes_the_weights_at_its_reveal_block(chain: Chain) -> None:
    _commit_reveal(chain)

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            commit = await _commit(client, chain)
            reveal_block = commit.reveal_epoch * TEMPO
            chain.devnet.advance(reveal_block - 1 - chain.devnet.head())
            assert await client.weights_row(Uid(1)) == []
            assert await client.pending_weight_commits(chain.validator.hotkey)
            assert await check_reveal(client, chain.validator.wallet, commit, NETUID) is None

            chain.devnet.advance(1)
            assert sorted(await client.weights_row(Uid(1))) == [(0, 16384), (2, 65535)]
            assert await client.pending_weight_commits(chain.validator.hotkey) == []
            result = await check_reveal(client, chain.validator.wallet, commit, NETUID)
            assert result is not None
            assert result.status is WeightsStatus.REVEALED, result.detail

    asyncio.run(go())


def test_a_failed_reveal_never_becomes_weights(chain: Chain) -> None:
    _commit_reveal(chain)
    chain.devnet.fail_reveals(1, "test: no drand pulse")

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            commit = await _commit(client, chain)
            chain.devnet.advance(commit.reveal_epoch * TEMPO - chain.devnet.head())
            assert await client.pending_weight_commits(chain.validator.hotkey) == []
            assert await client.weights_row(Uid(1)) == []
            result = await check_reveal(client, chain.validator.wallet, commit, NETUID)
            assert result is not None
            assert result.status is WeightsStatus.REVEAL_MISSED
            assert "chain holds []" in result.detail

            # the switch counted down: the next commit reveals
            chain.devnet.advance(100)
            again = await _commit(client, chain)
            chain.devnet.advance(again.reveal_epoch * TEMPO - chain.devnet.head())
            assert sorted(await client.weights_row(Uid(1))) == [(0, 16384), (2, 65535)]

    asyncio.run(go())


def test_a_reveal_the_chain_would_refuse_is_never_applied(chain: Chain) -> None:
    """The lodged row is checked by the chain's rules: a version key raised after the commit
    makes its reveal fail, as the chain drops a reveal it cannot apply."""
    _commit_reveal(chain)

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
            chain.devnet.set_hyperparameter(NETUID, "weights_version_key", 5)
            result = await set_weights(client, chain.validator.wallet, {Uid(2): 1.0}, state)
            assert result.status is WeightsStatus.COMMITTED, result.detail
            assert result.commit is not None
            chain.devnet.advance(result.commit.reveal_epoch * TEMPO - chain.devnet.head())
            assert await client.weights_row(Uid(1)) == []

    asyncio.run(go())


def test_a_commit_still_pending_after_its_reveal_epoch_is_missed(chain: Chain) -> None:
    """A chain that never processes the commit (it stays pending) is a missed reveal once the
    epoch after its reveal epoch has begun; during the reveal epoch it may still come."""
    _commit_reveal(chain)

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            chain.devnet.advance(2 * TEMPO + 5 - chain.devnet.head())  # epoch 2
            commit = await _commit(client, chain)
            now = Commit(commit.block, commit.reveal_round, 2, commit.expected_u16)
            assert await check_reveal(client, chain.validator.wallet, now, NETUID) is None
            past = Commit(commit.block, commit.reveal_round, 1, commit.expected_u16)
            result = await check_reveal(client, chain.validator.wallet, past, NETUID)
            assert result is not None
            assert result.status is WeightsStatus.REVEAL_MISSED
            assert "still pending in epoch 2" in result.detail

    asyncio.run(go())
