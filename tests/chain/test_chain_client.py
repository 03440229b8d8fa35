"""The chain client: one pinned-block state read, deadlines, reconnects, typed refusals."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import ImageRef, commitment_fields, parse_reference
from cacheon.chain.errors import ChainUnavailable, NotRegistered, QuotaExceeded
from cacheon.config import ChainSettings
from tests.chain.chain_toys import NETUID, Chain

IMAGE = parse_reference("docker.io/miner/server@sha256:" + "cd" * 32)
assert isinstance(IMAGE, ImageRef)
FIELDS = commitment_fields(IMAGE)
assert isinstance(FIELDS, tuple)


def test_read_state_at_one_block(chain: Chain) -> None:
    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            await client.commit(FIELDS, chain.miner.wallet, NETUID)
            state = await client.read_state()
        assert state.block == chain.devnet.head()
        assert state.block_hash == chain.devnet.block_hash(state.block)
        assert [n.hotkey for n in state.neurons] == [
            chain.owner.hotkey,
            chain.validator.hotkey,
            chain.miner.hotkey,
        ]
        assert state.burn_uid == 0
        assert state.uid_of(chain.validator.hotkey) == 1
        (commitment,) = state.commitments
        assert commitment.text == f"cacheon/1 {IMAGE.canonical}"
        assert (commitment.uid, commitment.block) == (2, state.block)
        assert state.hyperparameters.weights_rate_limit == 100
        assert not state.hyperparameters.commit_reveal

    asyncio.run(go())


def test_refusals_are_typed(chain: Chain, make_keys) -> None:
    stranger = make_keys("stranger", 11)
    chain.devnet.set_hyperparameter(NETUID, "max_space", 200)

    async def go() -> None:
        async with ChainClient(chain.settings()) as client:
            with pytest.raises(NotRegistered):
                await client.commit(FIELDS, stranger.wallet, NETUID)
            await client.commit(FIELDS, chain.miner.wallet, NETUID)
            with pytest.raises(QuotaExceeded):
                await client.commit(FIELDS, chain.miner.wallet, NETUID)

    asyncio.run(go())


def test_unreachable_endpoint_fails_within_the_deadline() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = ChainSettings(network=f"ws://127.0.0.1:{port}", call_timeout_s=2)

    async def go() -> None:
        async with ChainClient(settings) as client:
            await client.head()

    started = time.monotonic()
    with pytest.raises(ChainUnavailable, match="cannot reach the chain"):
        asyncio.run(go())
    assert time.monotonic() - started < 10


def test_a_silent_endpoint_times_out_and_the_client_reconnects(chain: Chain) -> None:
    """A server that accepts and never answers: the deadline fires, the next call reconnects."""

    async def go() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ChainClient(ChainSettings(network=f"ws://127.0.0.1:{port}", call_timeout_s=0.5))
        started = time.monotonic()
        with pytest.raises(ChainUnavailable, match="no answer within"):
            await client.head()
        assert time.monotonic() - started < 5
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
        client.network = chain.network
        assert await client.head() == chain.devnet.head()
        await client.close()

    asyncio.run(go())


def test_missing_devnet_is_unavailable(tmp_path) -> None:
    async def go() -> None:
        await ChainClient(ChainSettings(network=f"sim://{tmp_path}/none.db")).head()

    with pytest.raises(ChainUnavailable, match="no devnet here"):
        asyncio.run(go())
