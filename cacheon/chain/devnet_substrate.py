"""The devnet behind the SDK's `substrate=` seam (`bittensor._substrate.Substrate`).

Reads answer in the decoded shapes the SDK's own transport produces (so the SDK's metagraph,
commitment and intent code runs unchanged); writes check the signer's signature, then dispatch
into `Devnet.apply` and come back as the `ExtrinsicResult` a node's inclusion report would give.
Storage the devnet does not model raises instead of answering a plausible default, so a gap in
the simulation fails loudly in tests rather than passing quietly.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator
from typing import Any

from bittensor.balance import Balance
from bittensor.result import ChainError, ExtrinsicResult
from bittensor.sp_core import verify

from cacheon.chain.devnet import Devnet, DevnetError, commitment_fields
from cacheon.chain.devnet_errors import Rejected

SPEC_VERSION = 1
_CRYPTO_SR25519 = 1
GLOBAL_MAX_SUBNET_COUNT = 4096


class DevnetSubstrate:
    """A `Substrate` over one devnet file."""

    def __init__(self, devnet: Devnet) -> None:
        self.devnet = devnet
        self.token_symbols: dict[int, str] = {}

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance(int(rao), netuid, self.token_symbols.get(netuid) if netuid else None)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # Blocks ---------------------------------------------------------------------------------

    async def block_hash(self, block: int | None = None) -> str:
        return self.devnet.block_hash(self.devnet.head() if block is None else block)

    async def block_number(self) -> int:
        return self.devnet.head()

    async def finalized_block_number(self) -> int:
        return self.devnet.head()

    async def block_time(self) -> float:
        return self.devnet.block_time_s if self.devnet.block_time_s > 0 else 12.0

    async def spec_version(self) -> int:
        return SPEC_VERSION

    async def get_block(
        self, block_number: int | None = None, block_hash: str | None = None
    ) -> dict[str, Any] | None:
        block = self._block(block_hash) if block_number is None else block_number
        if block > self.devnet.head():
            return None
        extrinsics = [
            {
                "address": row["signer"],
                "call": {"call_module": row["module"], "call_function": row["function"]},
                "error": row["error"],
            }
            for row in self.devnet.extrinsics(block)
        ]
        timestamp = {
            "call": {
                "call_module": "Timestamp",
                "call_function": "set",
                "call_args": [{"name": "now", "value": self.devnet.timestamp_ms(block)}],
            }
        }
        header = {
            "number": block,
            "hash": self.devnet.block_hash(block),
            "parentHash": self.devnet.block_hash(max(0, block - 1)),
        }
        return {"header": header, "extrinsics": [timestamp, *extrinsics]}

    async def blocks(self, *, finalized: bool = False) -> AsyncIterator[dict[str, Any]]:
        seen = self.devnet.head()
        while True:
            head = self.devnet.head()
            for number in range(seen + 1, head + 1):
                yield {
                    "header": {"number": number, "parentHash": self.devnet.block_hash(number - 1)}
                }
            seen = head
            await asyncio.sleep(min(1.0, max(0.05, self.devnet.block_time_s / 4)))

    async def events(self, block_hash: str | None = None) -> list[dict[str, Any]]:
        return []

    # Storage ----------------------------------------------------------------------------------

    def _block(self, block_hash: str | None) -> int:
        try:
            return self.devnet.block_of(block_hash)
        except DevnetError as exc:
            raise ChainError(str(exc)) from None

    async def query(
        self,
        module: str,
        storage_function: str,
        params: list[Any] | None = None,
        block_hash: str | None = None,
    ) -> Any:
        return self._query(module, storage_function, list(params or []), self._block(block_hash))

    async def map_has_entries(
        self, module: str, storage_function: str, params: list[Any], block_hash: str | None = None
    ) -> bool:
        return bool(await self.query_map(module, storage_function, params, block_hash))

    async def query_map(
        self,
        module: str,
        storage_function: str,
        params: list[Any] | None = None,
        block_hash: str | None = None,
    ) -> list[tuple[Any, Any]]:
        block = self._block(block_hash)
        key = (module, storage_function)
        netuid = int(params[0]) if params else 0
        if key == ("Commitments", "CommitmentOf"):
            return [
                (c.hotkey, {"deposit": 0, "block": c.block, "info": {"fields": c.fields}})
                for c in self.devnet.commitments(netuid, block)
            ]
        if key == ("Commitments", "RevealedCommitments"):
            return []
        if key == ("SubtensorModule", "Uids"):
            return [(n.hotkey, n.uid) for n in self.devnet.neurons(netuid, block)]
        if key == ("SubtensorModule", "Keys"):
            return [(n.uid, n.hotkey) for n in self.devnet.neurons(netuid, block)]
        if key == ("SubtensorModule", "Weights"):
            rows = self.devnet.weights(netuid % GLOBAL_MAX_SUBNET_COUNT, block)
            return sorted(rows.items())
        if key == ("SubtensorModule", "TimelockedWeightCommits"):
            grouped: dict[int, list[tuple[str, int, str, int]]] = {}
            for epoch, hotkey, at, ciphertext, round_ in self.devnet.weight_commits(
                netuid % GLOBAL_MAX_SUBNET_COUNT, block
            ):
                grouped.setdefault(epoch, []).append((hotkey, at, "0x" + ciphertext, round_))
            return sorted(grouped.items())
        if key == ("SubtensorModule", "TokenSymbol"):
            return []
        raise ChainError(f"the devnet does not simulate storage map {module}.{storage_function}")

    async def query_batch(
        self,
        module: str,
        storage_function: str,
        param_sets: list[list[Any]],
        block_hash: str | None = None,
    ) -> list[Any]:
        block = self._block(block_hash)
        return [self._query(module, storage_function, list(p), block) for p in param_sets]

    def _query(self, module: str, function: str, params: list[Any], block: int) -> Any:  # noqa: PLR0912 (one branch per storage item)
        key = (module, function)
        if key == ("System", "BlockHash"):
            return self.devnet.block_hash(int(params[0]))
        if key == ("Timestamp", "Now"):
            return self.devnet.timestamp_ms(block)
        if key == ("Commitments", "MaxSpace"):
            return self.devnet.subnet(int(params[0])).params.max_space if params else 3100
        netuid = int(params[0]) % GLOBAL_MAX_SUBNET_COUNT
        if key == ("SubtensorModule", "NetworksAdded"):
            return netuid in self.devnet.subnets(block)
        subnet = self.devnet.subnet(netuid).params
        neurons = self.devnet.neurons(netuid, block)
        if key == ("SubtensorModule", "Uids"):
            return next((n.uid for n in neurons if n.hotkey == params[1]), None)
        if key == ("SubtensorModule", "Keys"):
            return next((n.hotkey for n in neurons if n.uid == int(params[1])), None)
        if key == ("Commitments", "CommitmentOf"):
            found = [c for c in self.devnet.commitments(netuid, block) if c.hotkey == params[1]]
            return (
                {"deposit": 0, "block": found[0].block, "info": {"fields": found[0].fields}}
                if found
                else None
            )
        if key == ("Commitments", "UsedSpaceOf"):
            epoch, used = self.devnet.used_space(netuid, str(params[1]), block)
            return {"last_epoch": epoch, "used_space": used}
        if key == ("SubtensorModule", "Weights"):
            return self.devnet.weights(netuid, block).get(int(params[1]), [])
        if key == ("SubtensorModule", "LastUpdate"):
            return [n.last_update for n in neurons]
        if key == ("SubtensorModule", "ValidatorPermit"):
            return [n.validator_permit for n in neurons]
        if key == ("SubtensorModule", "SubnetEpochConsensus"):
            return "Yuma"
        if key == ("SubtensorModule", "SubnetOwnerHotkey"):
            return subnet.owner_hotkey
        if key == ("SubtensorModule", "SubnetOwner"):
            return subnet.owner_coldkey
        if key == ("SubtensorModule", "LastEpochBlock"):
            return block - block % max(1, subnet.tempo)
        if key == ("SubtensorModule", "BlocksSinceLastStep"):
            return block % max(1, subnet.tempo)
        if key == ("SubtensorModule", "SubnetEpochIndex"):
            return block // max(1, subnet.tempo)
        if key == ("SubtensorModule", "PendingEpochAt"):
            return 0
        scalars = {
            "Tempo": subnet.tempo,
            "WeightsSetRateLimit": subnet.weights_rate_limit,
            "WeightsVersionKey": subnet.weights_version_key,
            "CommitRevealWeightsEnabled": subnet.commit_reveal,
            "MinAllowedWeights": subnet.min_allowed_weights,
            "MaxWeightsLimit": subnet.max_weights_limit,
            "RevealPeriodEpochs": subnet.reveal_period_epochs,
            "SubnetworkN": len(neurons),
        }
        if module == "SubtensorModule" and function in scalars:
            return scalars[function]
        raise ChainError(f"the devnet does not simulate storage {module}.{function}")

    async def runtime_call(
        self, api: str, method: str, params: list[Any], block_hash: str | None = None
    ) -> Any:
        if (api, method) != ("SubnetInfoRuntimeApi", "get_metagraph"):
            raise ChainError(f"the devnet does not simulate runtime API {api}.{method}")
        block = self._block(block_hash)
        netuid = int(params[0])
        if netuid not in self.devnet.subnets(block):
            return None
        subnet = self.devnet.subnet(netuid)
        neurons = self.devnet.neurons(netuid, block)
        zeros = [0] * len(neurons)
        return {
            "netuid": netuid,
            "name": list(b"cacheon-devnet"),
            "symbol": list(b"d"),
            "block": block,
            "tempo": subnet.params.tempo,
            "last_step": block - block % max(1, subnet.params.tempo),
            "blocks_since_last_step": block % max(1, subnet.params.tempo),
            "owner_hotkey": subnet.params.owner_hotkey,
            "owner_coldkey": subnet.params.owner_coldkey,
            "network_registered_at": subnet.registered_at,
            "num_uids": len(neurons),
            "max_uids": 256,
            "hotkeys": [n.hotkey for n in neurons],
            "coldkeys": [n.coldkey for n in neurons],
            "active": [True] * len(neurons),
            "validator_permit": [n.validator_permit for n in neurons],
            "last_update": [n.last_update for n in neurons],
            "block_at_registration": [n.registered_at for n in neurons],
            "axons": [{"ip": 0, "port": 0, "ip_type": 4}] * len(neurons),
            **{
                name: zeros
                for name in (
                    "alpha_stake",
                    "tao_stake",
                    "total_stake",
                    "incentives",
                    "dividends",
                    "emission",
                    "rank",
                    "trust",
                    "consensus",
                    "pruning_score",
                )
            },
        }

    async def constant(self, module: str, name: str) -> Any:
        if (module, name) == ("Aura", "SlotDuration"):
            return int(await self.block_time() * 1000)
        if (module, name) == ("Commitments", "MaxFields"):
            return 3
        raise ChainError(f"the devnet does not simulate constant {module}.{name}")

    async def decode_scale(self, type_string: str, data: Any) -> Any:
        raise ChainError("the devnet has no SCALE codec")

    # Calls ----------------------------------------------------------------------------------

    async def compose(self, call: Any) -> Any:
        """The generated `Call` itself, once the devnet's codec check has passed.

        A real node fails to encode a malformed `CommitmentInfo` here, before anything is signed.
        """
        module, function, params = call
        if (module, function) == ("Commitments", "set_commitment"):
            try:
                commitment_fields(params.get("info"))
            except DevnetError as exc:
                raise ChainError(str(exc)) from None
        return call

    async def estimate_fee(self, call: Any, keypair: Any) -> Balance:
        return Balance.from_rao(0)

    async def estimate_weight(self, call: Any, keypair: Any) -> dict[str, int]:
        return {"ref_time": 0, "proof_size": 0}

    async def account_next_index(self, address: str) -> int:
        return 0

    async def mev_next_key(self) -> bytes | None:
        return None

    async def submit(
        self,
        call: Any,
        keypair: Any,
        *,
        nonce: int | None = None,
        period: int | None = None,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> ExtrinsicResult:
        module, function, params = call
        payload = json.dumps([module, function, params], default=_json_default).encode()
        signature = keypair.sign(payload)
        if inspect.isawaitable(signature):
            signature = await signature
        if not verify(payload, bytes(signature), keypair.ss58_address, _CRYPTO_SR25519):
            return _failure("BadSignature", "Invalid signature")
        try:
            block, index = self.devnet.apply(keypair.ss58_address, module, function, params)
        except Rejected as exc:
            return _failure(exc.name, exc.docs, self.devnet.block_hash(self.devnet.head()))
        except DevnetError as exc:
            raise ChainError(str(exc)) from None
        if not (wait_for_inclusion or wait_for_finalization):
            return ExtrinsicResult(success=True, message="Submitted (not waiting).")
        return ExtrinsicResult(
            success=True,
            message="Success",
            block_hash=self.devnet.block_hash(block),
            extrinsic_id=f"{block}-{index:04d}",
            fee=Balance.from_rao(0),
        )

    async def sign_extrinsic(
        self, call: Any, keypair: Any, *, nonce: int, period: int
    ) -> tuple[bytes, str]:
        raise ChainError("the devnet does not simulate MEV-shielded submission")

    async def find_extrinsic(self, extrinsic_hash: str, block_hash: str) -> ExtrinsicResult | None:
        return None

    async def prepare(self, call: Any, **kwargs: Any) -> Any:
        raise ChainError("the devnet does not simulate out-of-process signing")

    async def submit_signature(self, unsigned: Any, signature: Any, **kwargs: Any) -> Any:
        raise ChainError("the devnet does not simulate out-of-process signing")

    async def submit_signed(self, extrinsic: Any, keypair: Any, **kwargs: Any) -> Any:
        raise ChainError("the devnet does not simulate pre-signed extrinsics")

    def multisig_account(self, signatories: list[str], threshold: int) -> Any:
        raise ChainError("the devnet does not simulate multisig accounts")

    async def submit_multisig(
        self, call: Any, keypair: Any, multisig_account: Any, **kwargs: Any
    ) -> Any:
        raise ChainError("the devnet does not simulate multisig accounts")


def _failure(name: str, docs: str, block_hash: str | None = None) -> ExtrinsicResult:
    return ExtrinsicResult(
        success=False, message=docs, block_hash=block_hash, error=ChainError(docs, name)
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)
