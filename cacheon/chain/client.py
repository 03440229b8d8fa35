"""The one long-lived chain client of a process (bittensor 11.x, async API).

Every call runs under a deadline (`chain.call_timeout_s`) on the SDK's async API, so a hung
websocket cannot stall the validator loop: the timeout cancels real awaitables, never a blocking
call in a thread. A call that times out or loses its connection drops the SDK client; the next
call reconnects (through the SDK's fallback endpoints). Reads are retried a few times; writes are
not, because their outcome is then unknown and the caller must read the chain to find it.

A `sim://<path>` network puts the devnet behind the SDK's `substrate=` seam; everything above the
seam (composition, preflight, decoding) is the real SDK either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import bittensor as bt
from bittensor import ErrorCode
from bittensor.intents import Intent
from bittensor.result import BittensorError, ChainError, ExtrinsicResult
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from cacheon.chain.devnet import Devnet, DevnetError, db_path
from cacheon.chain.devnet_substrate import DevnetSubstrate
from cacheon.chain.errors import (
    ChainFailure,
    ChainRejected,
    ChainUnavailable,
    NotRegistered,
    QuotaExceeded,
    RateLimited,
)
from cacheon.config import ChainSettings
from cacheon.log import get_logger
from cacheon.protocol import Block, Hotkey, Uid

T = TypeVar("T")
log = get_logger("cacheon.chain")

READ_ATTEMPTS = 3
WRITE_TIMEOUT_FACTOR = 3
"""A write waits for inclusion, a block or two on finney, so it gets several read deadlines."""

_UNAVAILABLE = (TimeoutError, OSError, bt.RpcConnectionError, bt.ConnectionNotReady)
_NOT_REGISTERED = frozenset(
    {"AccountNotAllowedCommit", "HotKeyNotRegisteredInSubNet", "NotRegistered"}
)
_RETRY_IN = re.compile(r"Retry in ~(\d+) blocks")


@dataclass(frozen=True)
class Neuron:
    uid: Uid
    hotkey: Hotkey
    coldkey: str
    validator_permit: bool
    last_update: Block


@dataclass(frozen=True)
class ChainCommitment:
    """A hotkey's commitment as the chain holds it; `text` is its Raw fields, concatenated."""

    hotkey: Hotkey
    uid: Uid | None
    block: Block
    text: str | None


@dataclass(frozen=True)
class Hyperparameters:
    tempo: int
    weights_version_key: int
    weights_rate_limit: int
    commit_reveal: bool
    min_allowed_weights: int
    max_weights_limit: int


@dataclass(frozen=True)
class ChainState:
    """Everything one poll needs, read at one pinned block."""

    netuid: int
    block: Block
    block_hash: str
    neurons: tuple[Neuron, ...]
    owner_hotkey: Hotkey
    commitments: tuple[ChainCommitment, ...]
    hyperparameters: Hyperparameters

    def uid_of(self, hotkey: str) -> Uid | None:
        return next((n.uid for n in self.neurons if n.hotkey == hotkey), None)

    @property
    def burn_uid(self) -> Uid:
        """The subnet owner's uid, where emission goes when nobody leads (§4.7); else uid 0."""
        owner = self.uid_of(self.owner_hotkey)
        return owner if owner is not None else Uid(0)

    def blocks_since_update(self, uid: Uid) -> int | None:
        """Blocks since `uid` last set (or committed) weights; None if it never has."""
        neuron = next((n for n in self.neurons if n.uid == uid), None)
        if neuron is None or neuron.last_update == 0:
            return None
        return self.block - neuron.last_update


@dataclass(frozen=True)
class WeightCommit:
    """A timelocked weights commit the chain still holds: not yet at its reveal."""

    epoch: int
    """The subnet epoch it was committed in; it reveals `RevealPeriodEpochs` later."""
    block: Block
    reveal_round: int
    """The drand round whose pulse decrypts it."""


@dataclass(frozen=True)
class RevealClock:
    """Where the subnet is in the epochs that commit-reveal counts."""

    epoch: int
    reveal_period_epochs: int


@dataclass(frozen=True)
class Receipt:
    """Where an accepted extrinsic landed."""

    block: Block
    extrinsic_id: str
    data: dict[str, Any]


class ChainClient:
    """One connection to the chain with deadlines, reconnects and typed results."""

    def __init__(self, settings: ChainSettings) -> None:
        self.settings = settings
        self.network = settings.chain_endpoint or settings.network
        self._client: bt.Client | None = None
        self._devnet: Devnet | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ChainClient:
        await self._connected()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.call_timeout_s):
                    await client.close()

    def _new_client(self) -> bt.Client:
        path = db_path(self.network)
        if path is not None:
            try:
                self._devnet = Devnet(path)
            except DevnetError as exc:
                raise ChainUnavailable(f"cannot open the devnet: {exc}") from None
            return bt.Client("local", substrate=DevnetSubstrate(self._devnet))
        try:
            return bt.Client(
                self.network, fallback_endpoints=list(self.settings.fallback_endpoints) or None
            )
        except ValueError as exc:
            raise ChainFailure(f"chain.network: {exc}") from None

    async def _connected(self) -> bt.Client:
        async with self._lock:
            if self._client is None:
                client = self._new_client()
                try:
                    async with asyncio.timeout(self.settings.call_timeout_s):
                        await client.connect()
                except _UNAVAILABLE as exc:
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise self._unavailable(exc) from None
                self._client = client
                log.info("chain connected", network=_display(self.network))
            return self._client

    def _unavailable(self, exc: BaseException) -> ChainUnavailable:
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.settings.call_timeout_s:g}s"
        return ChainUnavailable(f"cannot reach the chain at {_display(self.network)}: {reason}")

    async def _once(self, op: Callable[[bt.Client], Awaitable[T]], deadline_s: float) -> T:
        client = await self._connected()
        try:
            async with asyncio.timeout(deadline_s):
                return await op(client)
        except _UNAVAILABLE as exc:
            await self.close()
            raise self._unavailable(exc) from None

    async def read(self, op: Callable[[bt.Client], Awaitable[T]]) -> T:
        """Run a read with a deadline, reconnecting and retrying when the chain is unreachable."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(READ_ATTEMPTS),
            wait=wait_fixed(0.5),
            retry=retry_if_exception_type(ChainUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    return await self._once(op, self.settings.call_timeout_s)
                except (ChainError, BittensorError) as exc:
                    raise ChainFailure(f"chain read failed: {exc}") from None
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def write(self, op: Callable[[bt.Client], Awaitable[ExtrinsicResult]]) -> Receipt:
        """Submit once with a deadline; a refusal raises the matching `ChainRejected`."""
        try:
            result = await self._once(op, self.settings.call_timeout_s * WRITE_TIMEOUT_FACTOR)
        except ChainUnavailable as exc:
            raise ChainUnavailable(f"{exc}; the outcome is unknown, read the chain") from None
        except ChainError as exc:
            raise _rejected(exc.message, exc.name, exc.code) from None
        except BittensorError as exc:
            raise ChainRejected(str(exc)) from None
        if not result.success:
            error = result.error
            raise _rejected(
                result.message, error.name if error else None, error.code if error else None
            )
        block, _, _ = (result.extrinsic_id or "").partition("-")
        return Receipt(
            block=Block(int(block) if block.isdigit() else 0),
            extrinsic_id=result.extrinsic_id or "",
            data=dict(result.data),
        )

    # Reads ------------------------------------------------------------------------------------

    async def head(self) -> Block:
        return Block(await self.read(lambda c: c.block()))

    async def read_state(self, netuid: int | None = None) -> ChainState:
        """Metagraph, commitments and hyperparameters of the netuid, all at one block."""
        net = self.settings.netuid if netuid is None else netuid
        return await self.read(lambda c: _read_state(c, net))

    async def commitments(self, netuid: int | None = None) -> list[ChainCommitment]:
        net = self.settings.netuid if netuid is None else netuid
        return await self.read(lambda c: _commitments(c, net))

    async def uid_of(self, hotkey: str, netuid: int | None = None) -> Uid | None:
        net = self.settings.netuid if netuid is None else netuid

        async def op(client: bt.Client) -> Uid | None:
            uid = await client.query(_item(bt.storage.SubtensorModule.Uids), [net, hotkey])
            return None if uid is None else Uid(int(uid))

        return await self.read(op)

    async def weights_row(self, uid: Uid, netuid: int | None = None) -> list[tuple[int, int]]:
        """Our row of the weight matrix as the chain stores it: (dest uid, u16) pairs."""
        net = self.settings.netuid if netuid is None else netuid

        async def op(client: bt.Client) -> list[tuple[int, int]]:
            row = await client.query(_item(bt.storage.SubtensorModule.Weights), [net, uid])
            return [(int(d), int(v)) for d, v in row or []]

        return await self.read(op)

    async def pending_weight_commits(self, hotkey: str, netuid: int | None = None) -> list[int]:
        """Reveal rounds of this hotkey's timelocked weight commits not yet revealed."""
        return [c.reveal_round for c in await self.weight_commits(hotkey, netuid)]

    async def weight_commits(self, hotkey: str, netuid: int | None = None) -> list[WeightCommit]:
        """This hotkey's timelocked weight commits the chain has not yet revealed."""
        net = self.settings.netuid if netuid is None else netuid

        async def op(client: bt.Client) -> list[WeightCommit]:
            grouped = await client.weights.timelocked_weight_commits(net)
            return [
                WeightCommit(int(epoch), Block(entry["commit_block"]), int(entry["reveal_round"]))
                for epoch, entries in grouped.items()
                for entry in entries
                if entry["hotkey"] == hotkey
            ]

        return await self.read(op)

    async def reveal_clock(self, netuid: int | None = None) -> RevealClock:
        net = self.settings.netuid if netuid is None else netuid
        st = bt.storage.SubtensorModule

        async def op(client: bt.Client) -> RevealClock:
            snap = await client.at(await client.block())
            epoch, period = await asyncio.gather(
                snap.query(st.SubnetEpochIndex, [net]), snap.query(st.RevealPeriodEpochs, [net])
            )
            return RevealClock(int(epoch or 0), int(period or 0))

        return await self.read(op)

    def lodge_reveal(
        self,
        hotkey: str,
        netuid: int,
        reveal_round: int,
        row: Sequence[tuple[int, int]],
        version_key: int,
    ) -> None:
        """On a devnet, hand it what our commit for `reveal_round` decrypts to: the devnet
        cannot reach drand, so it reveals what the committer lodges (`chain.devnet`). A real
        chain decrypts the commit itself at the drand round, so elsewhere this does nothing."""
        if self._devnet is None:
            return
        try:
            self._devnet.lodge_reveal(netuid, hotkey, reveal_round, row, version_key)
        except DevnetError as exc:
            raise ChainFailure(f"the devnet refused the reveal: {exc}") from None

    # Writes -----------------------------------------------------------------------------------

    async def commit(self, fields: Sequence[bytes], wallet: bt.Wallet, netuid: int) -> Receipt:
        """Commit Raw fields signed by the wallet's hotkey (the chain refuses the coldkey)."""
        info = {"fields": [{f"Raw{len(field)}": bytes(field)} for field in fields]}
        call = bt.calls.Commitments.set_commitment(netuid=netuid, info=info)
        return await self.write(
            lambda c: c.submit_call(
                call, wallet, signer="hotkey", wait_for_inclusion=True, wait_for_finalization=False
            )
        )

    async def execute(self, intent: Intent, wallet: bt.Wallet) -> Receipt:
        return await self.write(
            lambda c: c.execute(
                intent, wallet, wait_for_inclusion=True, wait_for_finalization=False
            )
        )


async def _read_state(client: bt.Client, netuid: int) -> ChainState:
    block = await client.block()
    snap = await client.at(block)
    st = bt.storage.SubtensorModule
    graph, commitments, block_hash, *hyper = await asyncio.gather(
        snap.subnets.metagraph(netuid, commitments=False),
        _commitments(snap, netuid),
        snap.query(bt.storage.System.BlockHash, [block]),
        snap.query(st.Tempo, [netuid]),
        snap.query(st.WeightsVersionKey, [netuid]),
        snap.query(st.WeightsSetRateLimit, [netuid]),
        snap.query(st.CommitRevealWeightsEnabled, [netuid]),
        snap.query(st.MinAllowedWeights, [netuid]),
        snap.query(st.MaxWeightsLimit, [netuid]),
    )
    if graph is None:
        raise ChainFailure(f"netuid {netuid} does not exist on {client.network}")
    tempo, version_key, rate_limit, commit_reveal, min_weights, max_limit = hyper
    return ChainState(
        netuid=netuid,
        block=Block(block),
        block_hash=str(block_hash),
        neurons=tuple(
            Neuron(
                uid=Uid(n.uid),
                hotkey=Hotkey(n.hotkey),
                coldkey=n.coldkey,
                validator_permit=n.validator_permit,
                last_update=Block(n.last_update),
            )
            for n in graph.neurons
        ),
        owner_hotkey=Hotkey(graph.owner_hotkey),
        commitments=tuple(commitments),
        hyperparameters=Hyperparameters(
            tempo=int(tempo or 0),
            weights_version_key=int(version_key or 0),
            weights_rate_limit=int(rate_limit or 0),
            commit_reveal=bool(commit_reveal),
            min_allowed_weights=int(min_weights or 0),
            max_weights_limit=int(max_limit) if max_limit is not None else 65535,
        ),
    )


async def _commitments(view: Any, netuid: int) -> list[ChainCommitment]:
    found = await view.subnets.commitments(netuid)
    return [
        ChainCommitment(
            hotkey=Hotkey(c.hotkey),
            uid=None if c.uid is None else Uid(c.uid),
            block=Block(c.block),
            text=c.value,
        )
        for c in found.values()
    ]


def _rejected(message: str, name: str | None, code: ErrorCode | None) -> ChainRejected:
    text = (message or name or "rejected").strip().splitlines()[0]
    if name in _NOT_REGISTERED or code == ErrorCode.NOT_REGISTERED:
        return NotRegistered(text, name)
    if name == "SpaceLimitExceeded":
        return QuotaExceeded(text, name)
    if name == "SettingWeightsTooFast" or code == ErrorCode.RATE_LIMITED:
        match = _RETRY_IN.search(text)
        return RateLimited(text, int(match.group(1)) if match else None)
    return ChainRejected(text, name)


def _item(descriptor: Any) -> tuple[str, str]:
    """A generated storage descriptor as the (pallet, item) pair `Client.query` is typed for."""
    return (descriptor.container, descriptor.name)


def _display(network: str) -> str:
    """The network as it may be logged: no credentials that a ws URL could embed."""
    return re.sub(r"//[^/@]*@", "//", network)
