"""From the arena's weight split to weights on chain, and proof that they landed (DESIGN.md §4.7).

The SDK's `SetWeights` conforms and submits, but it cannot know our rules: never an empty or
all-zero vector, pad a short vector with the burn uid and then the lowest uids, report clipping by
`MaxWeightsLimit`, version key = max(configured, chain), and do not even try inside the rate
limit. Success is not the SDK's word alone: the row the chain stores (or, with commit-reveal, the
pending commit) is read back and compared with the u16 vector the SDK sent, which is recomputed
here with the SDK's own `clip_to_max_weight` and `normalize`. A commit is not yet weights: once
its reveal epoch has come, `check_reveal` reads our row back and compares it with what was
committed, so a reveal the chain never made is found and can be set again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import bittensor as bt
from bittensor.intents import normalize
from bittensor.intents.weights import clip_to_max_weight

from cacheon.chain.client import ChainClient, ChainState, WeightCommit
from cacheon.chain.errors import ChainRejected, ChainUnavailable, RateLimited
from cacheon.chain.wallet import Wallet, hotkey_address
from cacheon.log import get_logger
from cacheon.protocol import Block, Uid

U16_MAX = 65535
log = get_logger("cacheon.chain.weights")


class WeightsStatus(StrEnum):
    SET = "set"
    """The chain stores exactly the row we sent."""
    COMMITTED = "committed"
    """Commit-reveal: our timelocked commit is on chain; the chain reveals it later."""
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    MISMATCH = "mismatch"
    """The SDK reported success but the readback differs from what was sent."""
    UNAVAILABLE = "unavailable"
    REVEALED = "revealed"
    """Commit-reveal: after the reveal, the chain stores exactly the row we committed."""
    REVEAL_MISSED = "reveal_missed"
    """Commit-reveal: the reveal epoch came and went without our committed row on chain."""


class InvalidWeights(ValueError):
    """The vector breaks §4.7 (empty, all zero, negative, unknown uid); nothing is submitted."""


@dataclass(frozen=True)
class WeightVector:
    """What will be submitted and what the chain should then hold."""

    weights: Mapping[Uid, float]
    version_key: int
    padded: tuple[Uid, ...]
    """Uids added at the smallest weight to reach `MinAllowedWeights`."""
    expected_u16: tuple[tuple[int, int], ...]
    """(uid, u16) pairs after the SDK's clip and quantisation, sorted by uid."""
    clipped: bool
    """`MaxWeightsLimit` changed the proportions."""


@dataclass(frozen=True)
class Commit:
    """A timelocked commit of ours, and what its reveal must put on chain."""

    block: Block
    reveal_round: int
    reveal_epoch: int
    """The subnet epoch the chain reveals it in (commit epoch + `RevealPeriodEpochs`)."""
    expected_u16: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class WeightsResult:
    status: WeightsStatus
    detail: str
    block: Block | None = None
    retry_at_block: Block | None = None
    vector: WeightVector | None = None
    commit: Commit | None = None
    """With COMMITTED: the commit whose reveal `check_reveal` will check."""


def plan_weights(
    weights: Mapping[Uid, float], state: ChainState, configured_version_key: int
) -> WeightVector:
    """Check, pad and quantise a weight vector the way the chain will see it."""
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise InvalidWeights("weights must be finite and non-negative")
    positive = {uid: w for uid, w in weights.items() if w > 0}
    if not positive:
        raise InvalidWeights("refusing an empty or all-zero weight vector")
    known = {n.uid for n in state.neurons}
    unknown = sorted(set(positive) - known)
    if unknown:
        raise InvalidWeights(f"uids {unknown} are not registered on netuid {state.netuid}")

    hyper = state.hyperparameters
    needed = min(hyper.min_allowed_weights, len(known))
    smallest = max(positive.values()) / U16_MAX
    padded: list[Uid] = []
    for uid in [state.burn_uid, *sorted(known)]:
        if len(positive) + len(padded) >= needed:
            break
        if uid not in positive and uid not in padded:
            padded.append(uid)
    full = {**positive, **dict.fromkeys(padded, smallest)}

    uids = sorted(full)
    floats = [full[u] for u in uids]
    if len(uids) > 1 and hyper.max_weights_limit < U16_MAX:
        floats = clip_to_max_weight(floats, hyper.max_weights_limit / U16_MAX)
    sent_uids, sent_u16 = normalize(uids, floats)
    _, unclipped_u16 = normalize(uids, [full[u] for u in uids])
    return WeightVector(
        weights=full,
        version_key=max(configured_version_key, hyper.weights_version_key),
        padded=tuple(padded),
        expected_u16=tuple(zip(sent_uids, sent_u16, strict=True)),
        clipped=any(abs(a - b) > 1 for a, b in zip(sent_u16, unclipped_u16, strict=True)),
    )


def next_allowed_block(state: ChainState, uid: Uid) -> Block | None:
    """The first block the rate limit lets `uid` set weights again, if that is in the future."""
    since = state.blocks_since_update(uid)
    limit = state.hyperparameters.weights_rate_limit
    if since is None or not limit or since >= limit:
        return None
    return Block(state.block + limit - since)


async def set_weights(
    client: ChainClient,
    wallet: Wallet,
    weights: Mapping[Uid, float],
    state: ChainState,
    configured_version_key: int = 0,
) -> WeightsResult:
    """Submit weights (plain or commit-reveal, as the subnet runs) and verify them on chain.

    Raises `InvalidWeights` for a vector that must never be sent; every chain outcome is a result.
    """
    hotkey = hotkey_address(wallet)
    uid = state.uid_of(hotkey)
    if uid is None:
        return WeightsResult(
            WeightsStatus.REJECTED, f"hotkey {hotkey} is not registered on netuid {state.netuid}"
        )
    retry_at = next_allowed_block(state, uid)
    if retry_at is not None:
        return WeightsResult(
            WeightsStatus.RATE_LIMITED,
            f"the weights rate limit opens at block {retry_at}",
            retry_at_block=retry_at,
        )
    vector = plan_weights(weights, state, configured_version_key)
    if vector.clipped:
        log.warning(
            "weights clipped by MaxWeightsLimit",
            limit=state.hyperparameters.max_weights_limit,
            sent=vector.expected_u16,
        )
    intent = bt.SetWeights(
        netuid=state.netuid, weights=dict(vector.weights), version_key=vector.version_key
    )
    try:
        receipt = await client.execute(intent, wallet)
    except RateLimited as exc:
        at = Block(state.block + exc.retry_in_blocks) if exc.retry_in_blocks else None
        return WeightsResult(WeightsStatus.RATE_LIMITED, str(exc), retry_at_block=at, vector=vector)
    except ChainRejected as exc:
        return WeightsResult(WeightsStatus.REJECTED, str(exc), vector=vector)
    except ChainUnavailable as exc:
        return WeightsResult(WeightsStatus.UNAVAILABLE, str(exc), vector=vector)

    try:
        if state.hyperparameters.commit_reveal:
            reveal_round = receipt.data.get("reveal_round")
            pending = await client.weight_commits(hotkey, state.netuid)
            ours = next((c for c in pending if c.reveal_round == reveal_round), None)
            if ours is not None:
                commit = await _commit(client, ours, vector, state)
                client.lodge_reveal(
                    hotkey, state.netuid, ours.reveal_round, vector.expected_u16, vector.version_key
                )
                return WeightsResult(
                    WeightsStatus.COMMITTED,
                    f"timelocked commit on chain, reveals at drand round {reveal_round}"
                    f" (epoch {commit.reveal_epoch})",
                    block=receipt.block,
                    vector=vector,
                    commit=commit,
                )
            detail = f"no pending commit for round {reveal_round} after inclusion"
        else:
            row = tuple(sorted(await client.weights_row(uid, state.netuid)))
            if row == vector.expected_u16:
                return WeightsResult(
                    WeightsStatus.SET, "weights set", block=receipt.block, vector=vector
                )
            detail = f"chain holds {list(row)}, sent {list(vector.expected_u16)}"
    except ChainUnavailable as exc:
        return WeightsResult(WeightsStatus.UNAVAILABLE, f"readback failed: {exc}", vector=vector)
    return WeightsResult(WeightsStatus.MISMATCH, detail, block=receipt.block, vector=vector)


async def _commit(
    client: ChainClient, ours: WeightCommit, vector: WeightVector, state: ChainState
) -> Commit:
    clock = await client.reveal_clock(state.netuid)
    return Commit(
        block=ours.block,
        reveal_round=ours.reveal_round,
        reveal_epoch=ours.epoch + clock.reveal_period_epochs,
        expected_u16=vector.expected_u16,
    )


async def check_reveal(
    client: ChainClient, wallet: Wallet, commit: Commit, netuid: int
) -> WeightsResult | None:
    """REVEALED or REVEAL_MISSED (its detail is the reason) once the commit's reveal epoch has
    come; None while it is not yet due. The chain drops a commit from its pending map when it
    reveals it (or fails to); one still pending an epoch after its reveal epoch is missed too."""
    hotkey = hotkey_address(wallet)
    clock = await client.reveal_clock(netuid)
    if clock.epoch < commit.reveal_epoch:
        return None
    pending = await client.weight_commits(hotkey, netuid)
    if any((c.block, c.reveal_round) == (commit.block, commit.reveal_round) for c in pending):
        if clock.epoch == commit.reveal_epoch:
            return None
        return WeightsResult(
            WeightsStatus.REVEAL_MISSED,
            f"commit of block {commit.block} still pending in epoch {clock.epoch},"
            f" after its reveal epoch {commit.reveal_epoch}",
            block=commit.block,
        )
    uid = await client.uid_of(hotkey, netuid)
    row = () if uid is None else tuple(sorted(await client.weights_row(uid, netuid)))
    if row == commit.expected_u16:
        return WeightsResult(
            WeightsStatus.REVEALED,
            f"commit of block {commit.block} revealed in epoch {commit.reveal_epoch}",
            block=commit.block,
        )
    return WeightsResult(
        WeightsStatus.REVEAL_MISSED,
        f"commit of block {commit.block} left the pending commits in epoch"
        f" {commit.reveal_epoch}, but the chain holds {list(row)}, committed"
        f" {list(commit.expected_u16)}",
        block=commit.block,
    )
