"""Weights: §4.7 planning (pure), then plain and commit-reveal submission with readback."""

from __future__ import annotations

import asyncio

import pytest

from cacheon.chain.client import ChainClient, ChainState, Hyperparameters, Neuron
from cacheon.chain.weights import (
    InvalidWeights,
    WeightsStatus,
    next_allowed_block,
    plan_weights,
    set_weights,
)
from cacheon.protocol import Block, Hotkey, Uid
from tests.chain.chain_toys import NETUID, Chain


def _state(
    n: int = 5,
    *,
    min_weights: int = 1,
    max_limit: int = 65535,
    version: int = 0,
    last_update: int = 0,
    owner: int | None = 3,
) -> ChainState:
    neurons = tuple(
        Neuron(Uid(i), Hotkey(f"hk{i}"), f"ck{i}", i == 1, Block(last_update if i == 1 else 0))
        for i in range(n)
    )
    return ChainState(
        netuid=NETUID,
        block=Block(1000),
        block_hash="0x",
        neurons=neurons,
        owner_hotkey=Hotkey(f"hk{owner}" if owner is not None else "nobody"),
        commitments=(),
        hyperparameters=Hyperparameters(360, version, 100, False, min_weights, max_limit),
    )


def test_leader_and_runner_up() -> None:
    plan = plan_weights({Uid(2): 0.8, Uid(4): 0.2}, _state(), configured_version_key=3)
    assert plan.expected_u16 == ((2, 65535), (4, 16384))
    assert (plan.padded, plan.clipped, plan.version_key) == ((), False, 3)


def test_version_key_is_the_larger_of_configured_and_chain() -> None:
    assert plan_weights({Uid(2): 1.0}, _state(version=9), 3).version_key == 9


def test_short_vector_is_padded_with_burn_uid_then_lowest_uids() -> None:
    plan = plan_weights({Uid(2): 1.0}, _state(min_weights=4), 0)
    assert plan.padded == (3, 0, 1)
    assert plan.expected_u16 == ((0, 1), (1, 1), (2, 65535), (3, 1))


def test_burn_uid_is_zero_without_an_owner_uid() -> None:
    assert _state(owner=None).burn_uid == 0
    assert plan_weights({Uid(2): 1.0}, _state(min_weights=2, owner=None), 0).padded == (0,)


def test_clipping_is_reported() -> None:
    plan = plan_weights({Uid(2): 0.8, Uid(4): 0.2}, _state(max_limit=39321), 0)
    assert plan.clipped
    assert plan.expected_u16[0][1] == 65535
    assert plan.expected_u16[1][1] > 16384


@pytest.mark.parametrize("weights", [{}, {Uid(1): 0.0}, {Uid(1): -1.0}, {Uid(99): 1.0}])
def test_never_an_empty_zero_or_unknown_vector(weights: dict[Uid, float]) -> None:
    with pytest.raises(InvalidWeights):
        plan_weights(weights, _state(), 0)


def test_rate_limit_window() -> None:
    assert next_allowed_block(_state(last_update=950), Uid(1)) == 1050
    assert next_allowed_block(_state(last_update=900), Uid(1)) is None
    assert next_allowed_block(_state(), Uid(1)) is None


def test_plain_weights_are_set_and_read_back(chain: Chain) -> None:
    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
            result = await set_weights(client, chain.validator.wallet, {Uid(2): 1.0}, state)
            assert result.status is WeightsStatus.SET, result.detail
            assert await client.weights_row(Uid(1)) == [(2, 65535)]
            again = await set_weights(
                client, chain.validator.wallet, {Uid(2): 1.0}, await client.read_state()
            )
            assert again.status is WeightsStatus.RATE_LIMITED
            assert again.retry_at_block == state.block + 100

    asyncio.run(go())


def test_rate_limit_enforced_by_the_chain_when_state_is_stale(chain: Chain) -> None:
    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
            first = await set_weights(client, chain.validator.wallet, {Uid(2): 1.0}, state)
            assert first.status is WeightsStatus.SET
            stale = await set_weights(client, chain.validator.wallet, {Uid(2): 1.0}, state)
            assert stale.status is WeightsStatus.RATE_LIMITED
            assert stale.retry_at_block == state.block + 100

    asyncio.run(go())


def test_commit_reveal_weights_are_committed(chain: Chain) -> None:
    chain.devnet.set_hyperparameter(NETUID, "commit_reveal", 1)

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
            result = await set_weights(
                client, chain.validator.wallet, {Uid(2): 0.8, Uid(0): 0.2}, state
            )
            assert result.status is WeightsStatus.COMMITTED, result.detail
            assert await client.pending_weight_commits(chain.validator.hotkey)
            assert await client.weights_row(Uid(1)) == []

    asyncio.run(go())


def test_no_permit_is_rejected(chain: Chain) -> None:
    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            state = await client.read_state()
            result = await set_weights(client, chain.miner.wallet, {Uid(2): 1.0}, state)
            assert result.status is WeightsStatus.REJECTED
            assert "validator permit" in result.detail

    asyncio.run(go())
