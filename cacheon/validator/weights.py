"""When to set weights, and recording every attempt (DESIGN.md §4.7).

Weights are set once per interval (the tempo unless configured) or as soon as the standings
change, never before the state is loaded, never inside the rate limit, and never twice for one
decision: an attempt is keyed by the standings row it pays out, and a success for that row ends
the matter until the interval passes. On finney the validator refuses while the correctness
gate's thresholds are provisional (no calibration for its model and GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cacheon.arena import ArenaParams, weights
from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.wallet import Wallet, hotkey_address
from cacheon.chain.weights import InvalidWeights, next_allowed_block, set_weights
from cacheon.log import get_logger
from cacheon.protocol import GateThresholds
from cacheon.validator.state import SUCCESS, ValidatorState

log = get_logger("cacheon.validator.weights")


class Skip(StrEnum):
    NOT_DUE = "not_due"
    RATE_LIMITED = "rate_limited"
    UNCALIBRATED = "uncalibrated"
    NOT_REGISTERED = "not_registered"


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

    async def run(self, chain_state: ChainState) -> str:
        """Set weights if due; returns what happened (a WeightsStatus or a Skip value)."""
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
        level = "info" if result.status.value in SUCCESS else "warning"
        getattr(log, level)(
            "weights", status=result.status.value, detail=result.detail, vector=dict(vector)
        )
        return result.status.value
