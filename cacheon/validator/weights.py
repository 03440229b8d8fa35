"""When to set weights, and recording every attempt (DESIGN.md §4.7).

Weights are set once per interval (the tempo unless configured) or as soon as the standings
change, never before the state is loaded, never inside the rate limit, and never twice for one
decision: an attempt is keyed by the standings row it pays out, and a success for that row ends
the matter until the interval passes. On finney the validator refuses while the correctness
gate's thresholds are provisional (no calibration for its model and GPU).

With commit-reveal a commit is kept (in the state, so a restart keeps it too) until a later pass
finds its reveal epoch come: the row the chain then holds is compared with the committed one.
A missed reveal is logged with its reason and recorded; it undoes the commit, so the weights are
due again and are set at the next block the rate limit allows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum

from cacheon.arena import ArenaParams, weights
from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.wallet import Wallet, hotkey_address
from cacheon.chain.weights import (
    Commit,
    InvalidWeights,
    WeightsStatus,
    check_reveal,
    next_allowed_block,
    set_weights,
)
from cacheon.log import get_logger
from cacheon.protocol import Block, GateThresholds, Uid
from cacheon.validator.state import SUCCESS, ValidatorState
from cacheon.validator.watch import RoundWatcher, Step

log = get_logger("cacheon.validator.weights")


class Skip(StrEnum):
    NOT_DUE = "not_due"
    RATE_LIMITED = "rate_limited"
    UNCALIBRATED = "uncalibrated"
    NOT_REGISTERED = "not_registered"


@dataclass(frozen=True)
class PendingReveal:
    """A commit of ours awaiting its reveal check, with the log row it will be recorded as."""

    standings_id: int | None
    vector: dict[Uid, float]
    commit: Commit

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PendingReveal:
        data = json.loads(text)
        c = data["commit"]
        commit = Commit(
            block=Block(c["block"]),
            reveal_round=int(c["reveal_round"]),
            reveal_epoch=int(c["reveal_epoch"]),
            expected_u16=tuple((int(uid), int(w)) for uid, w in c["expected_u16"]),
        )
        vector = {Uid(int(uid)): float(w) for uid, w in data["vector"].items()}
        return cls(data["standings_id"], vector, commit)


@dataclass(frozen=True)
class WeightsStep:
    chain: ChainClient
    wallet: Wallet
    state: ValidatorState
    params: ArenaParams
    gate: GateThresholds
    network: str
    interval_blocks: int | None
    version_key: int = 0
    watcher: RoundWatcher | None = None

    async def run(self, chain_state: ChainState) -> str:
        """Set weights if due; returns what happened (a WeightsStatus or a Skip value)."""
        await self._check_reveal(chain_state)
        standings_id, standings = self.state.standings()
        last = self.state.last_successful_weights()
        interval = self.interval_blocks or chain_state.hyperparameters.tempo
        due = (
            last is None
            or last.standings_id != standings_id
            or chain_state.block - last.block >= interval
        )
        if not due:
            return Skip.NOT_DUE
        if self.network == "finney" and self.gate.provisional:
            log.error(
                "refusing to set weights on finney: the gate thresholds are provisional;"
                " run `cacheon-agent calibrate` on the production model and GPU"
            )
            return Skip.UNCALIBRATED
        hotkey = hotkey_address(self.wallet)
        uid = chain_state.uid_of(hotkey)
        if uid is None:
            log.error("our hotkey is not registered on the subnet", hotkey=hotkey)
            return Skip.NOT_REGISTERED
        opens = next_allowed_block(chain_state, uid)
        if opens is not None:
            log.info("weights due but rate limited", opens_at=opens)
            return Skip.RATE_LIMITED
        metagraph = {n.hotkey: n.uid for n in chain_state.neurons}
        vector = weights(standings, metagraph, chain_state.owner_hotkey, self.params.leader_share)
        try:
            result = await set_weights(
                self.chain, self.wallet, vector, chain_state, self.version_key
            )
        except InvalidWeights as exc:
            log.error("weights vector refused before submission", reason=str(exc))
            self.state.record_weights(standings_id, chain_state.block, vector, "invalid", str(exc))
            return "invalid"
        self.state.record_weights(
            standings_id, chain_state.block, vector, result.status.value, result.detail
        )
        if result.commit is not None:
            self.state.set_pending_reveal(
                PendingReveal(standings_id, dict(vector), result.commit).to_json()
            )
        level = "info" if result.status.value in SUCCESS else "warning"
        getattr(log, level)(
            "weights", status=result.status.value, detail=result.detail, vector=dict(vector)
        )
        if self.watcher is not None:
            shares = ", ".join(f"uid {uid} {share:.3f}" for uid, share in sorted(vector.items()))
            burn = " (burn: no leader yet)" if standings.leader is None else ""
            self.watcher.step(
                Step.WEIGHTS, f"{result.status} at block {chain_state.block}: {shares}{burn}"
            )
        return result.status.value

    async def _check_reveal(self, chain_state: ChainState) -> None:
        """Record whether our pending commit was revealed, once its reveal epoch has come."""
        stored = self.state.pending_reveal()
        if stored is None:
            return
        pending = PendingReveal.from_json(stored)
        commit = pending.commit
        result = await check_reveal(self.chain, self.wallet, commit, chain_state.netuid)
        if result is None:
            return
        self.state.record_weights(
            pending.standings_id, chain_state.block, pending.vector, result.status.value,
            result.detail,
        )  # fmt: skip
        self.state.set_pending_reveal(None)
        fields = {
            "commit_block": commit.block,
            "reveal_round": commit.reveal_round,
            "reveal_epoch": commit.reveal_epoch,
        }
        if result.status is WeightsStatus.REVEALED:
            log.info("weights revealed", **fields)
        else:
            log.warning("weights reveal missed; setting them again", reason=result.detail, **fields)
