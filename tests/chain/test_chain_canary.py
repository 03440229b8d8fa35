"""Canary: every bittensor name and parameter the chain layer uses exists in the installed SDK.

An SDK upgrade that renames or drops one must fail here, in tests, not on mainnet.
"""

from __future__ import annotations

import inspect

import bittensor as bt
from bittensor.intents import normalize
from bittensor.intents.weights import clip_to_max_weight
from bittensor.metagraph import NeuronCommitment

from cacheon.chain.devnet_substrate import DevnetSubstrate


def _params(fn: object) -> set[str]:
    return set(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_pinned_version() -> None:
    assert bt.__version__ == "11.3.0"


def test_client_surface() -> None:
    assert {"network", "fallback_endpoints", "substrate"} <= _params(bt.Client.__init__)
    for name in ("connect", "close", "block", "at", "query", "execute", "submit_call"):
        assert callable(getattr(bt.Client, name))
    client = bt.Client("local", substrate=object())  # type: ignore[arg-type]
    assert callable(client.subnets.metagraph)
    assert callable(client.subnets.commitments)
    assert callable(client.weights.timelocked_weight_commits)
    assert {"signer", "wait_for_inclusion", "wait_for_finalization"} <= _params(
        bt.client.Executor.submit_call
    )
    assert {"wait_for_inclusion", "wait_for_finalization"} <= _params(bt.client.Executor.execute)


def test_calls_storage_and_intents() -> None:
    call = bt.calls.Commitments.set_commitment(netuid=1, info={"fields": []})
    assert (call.module, call.function) == ("Commitments", "set_commitment")
    st = bt.storage.SubtensorModule
    for item in (
        st.Uids,
        st.Weights,
        st.Tempo,
        st.WeightsVersionKey,
        st.WeightsSetRateLimit,
        st.CommitRevealWeightsEnabled,
        st.MinAllowedWeights,
        st.MaxWeightsLimit,
    ):
        assert item.container == "SubtensorModule"
    assert bt.storage.System.BlockHash.name == "BlockHash"
    intent = bt.SetWeights(netuid=1, weights={0: 1.0}, version_key=2)
    assert (intent.uids, intent.version_key) == ([0], 2)
    assert normalize([0, 1], [0.8, 0.2]) == ([0, 1], [65535, 16384])
    assert abs(sum(clip_to_max_weight([0.8, 0.2], 0.6)) - 1) < 1e-9
    assert {"value", "block", "uid", "hotkey"} <= set(NeuronCommitment.__dataclass_fields__) | {
        "value"
    }


def test_errors_and_wallet() -> None:
    assert issubclass(bt.RpcConnectionError, bt.BittensorError)
    assert issubclass(bt.ConnectionNotReady, bt.BittensorError)
    assert {"message", "name", "code"} <= _params(bt.ChainError.__init__)
    assert bt.ErrorCode.NOT_REGISTERED
    assert bt.ErrorCode.RATE_LIMITED
    assert {"name", "hotkey", "path"} <= _params(bt.Wallet.__init__)


def test_devnet_implements_the_substrate_protocol() -> None:
    required = {
        name
        for name, member in inspect.getmembers(bt.Substrate)
        if not name.startswith("_") and callable(member)
    }
    assert required <= set(dir(DevnetSubstrate))
