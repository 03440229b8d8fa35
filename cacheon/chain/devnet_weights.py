"""The devnet's weights rules: setting weights, timelocked commits and their reveal.

Split from `devnet` (its state and reads), which dispatches the two weight extrinsics here. Each
function runs inside the devnet's write transaction (`conn`), so a commit and its reveal record
land together. The rules are the chain's as Cacheon relies on them: a registered hotkey with a
validator permit, the rate limit, the version key, `MinAllowedWeights`, `MaxWeightsLimit`, and
the commit-reveal switch; a commit reveals at the first block of epoch `commit epoch +
RevealPeriodEpochs` (an epoch is `tempo` blocks on the devnet).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cacheon.chain.devnet_errors import Rejected

if TYPE_CHECKING:
    from cacheon.chain.devnet import Devnet, Subnet

U16_MAX = 65535

REVEALS_SCHEMA = """
CREATE TABLE IF NOT EXISTS weight_reveals (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, commit_block INTEGER NOT NULL,
    reveal_round INTEGER NOT NULL, reveal_block INTEGER NOT NULL, row TEXT, failure TEXT
);
"""
"""When each timelocked commit reveals, what it reveals (lodged by the committer) and, for a
reveal the fault switch made fail, why; a table of its own so older devnet files gain it."""

DEFAULT_REVEAL_FAILURE = "the drand pulse for its round never arrived"


def set_weights(
    devnet: Devnet, conn: sqlite3.Connection, block: int, signer: str, params: dict[str, Any]
) -> None:
    """`SubtensorModule.set_mechanism_weights`."""
    netuid = int(params["netuid"])
    subnet, uid = _origin(devnet, conn, block, signer, netuid)
    if subnet.params.commit_reveal:
        raise Rejected("CommitRevealEnabled", "Commit-reveal is enabled; commit weights")
    row = checked_row(
        devnet,
        subnet,
        uid,
        block,
        dests=[int(d) for d in params["dests"]],
        values=[int(v) for v in params["weights"]],
        version_key=int(params["version_key"]),
    )
    conn.execute("INSERT INTO weights VALUES (?,?,?,?)", (netuid, uid, block, json.dumps(row)))


def commit_timelocked(
    devnet: Devnet, conn: sqlite3.Connection, block: int, signer: str, params: dict[str, Any]
) -> None:
    """`SubtensorModule.commit_timelocked_mechanism_weights`: the commit and when it reveals."""
    netuid = int(params["netuid"])
    subnet, uid = _origin(devnet, conn, block, signer, netuid)
    if not subnet.params.commit_reveal:
        raise Rejected("CommitRevealDisabled", "Commit-reveal is disabled on this subnet")
    commit = params["commit"]
    commit_hex = bytes(commit).hex() if not isinstance(commit, str) else commit
    reveal_round = int(params["reveal_round"])
    conn.execute(
        "INSERT INTO weight_commits VALUES (?,?,?,?,?,?)",
        (netuid, uid, signer, block, commit_hex, reveal_round),
    )
    tempo = max(1, subnet.params.tempo)
    reveal_block = (block // tempo + subnet.params.reveal_period_epochs) * tempo
    conn.execute(
        "INSERT INTO weight_reveals VALUES (?,?,?,?,?,NULL,?)",
        (netuid, uid, block, reveal_round, reveal_block, _doomed(conn)),
    )


def lodge_reveal(
    devnet: Devnet,
    conn: sqlite3.Connection,
    netuid: int,
    hotkey: str,
    reveal_round: int,
    *,
    row: Sequence[tuple[int, int]],
    version_key: int,
) -> bool:
    """Record what the hotkey's commit for `reveal_round` decrypts to, checked as the chain
    checks a reveal: a row the chain would refuse makes the reveal fail with that rule's name.
    False when the hotkey has no such commit."""
    uid = devnet.registered_uid(conn, netuid, hotkey)
    found = conn.execute(
        "SELECT rowid, commit_block FROM weight_reveals WHERE netuid = ? AND uid = ?"
        " AND reveal_round = ? ORDER BY rowid DESC LIMIT 1",
        (netuid, uid, reveal_round),
    ).fetchone()
    if uid is None or found is None:
        return False
    try:
        checked = checked_row(
            devnet,
            devnet.subnet(netuid),
            uid,
            found["commit_block"],
            dests=[d for d, _ in row],
            values=[v for _, v in row],
            version_key=version_key,
        )
    except Rejected as exc:
        conn.execute(
            "UPDATE weight_reveals SET failure = COALESCE(failure, ?) WHERE rowid = ?",
            (exc.name, found["rowid"]),
        )
        return True
    conn.execute(
        "UPDATE weight_reveals SET row = ? WHERE rowid = ?", (json.dumps(checked), found["rowid"])
    )
    return True


def fail_reveals(conn: sqlite3.Connection, count: int, reason: str) -> None:
    """Arm the fault switch: the next `count` commits are never revealed, for `reason`."""
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [("fail_reveals", str(count)), ("fail_reveals_reason", reason)],
    )


def checked_row(
    devnet: Devnet,
    subnet: Subnet,
    uid: int,
    block: int,
    *,
    dests: list[int],
    values: list[int],
    version_key: int,
) -> list[list[int]]:
    """The row the chain stores (max-upscaled u16) for weights set at `block` or revealed from a
    commit made then; `Rejected` by the rule a set or a reveal breaks."""
    if version_key < subnet.params.weights_version_key:
        raise Rejected("IncorrectWeightVersionKey", "Incorrect weight version key")
    n_uids = len(devnet.neurons(subnet.netuid, block))
    if len(dests) != len(values):
        raise Rejected("WeightVecNotEqualSize", "Weight vectors are not of equal size")
    if len(set(dests)) != len(dests):
        raise Rejected("DuplicateUids", "Duplicate uids in the weight vector")
    if any(not 0 <= d < n_uids for d in dests):
        raise Rejected("UidVecContainInvalidOne", "A uid in the vector is not registered")
    if any(not 0 <= v <= U16_MAX for v in values) or sum(values) == 0:
        raise Rejected("InvalidWeights", "Weights must be u16 and not all zero")
    self_weight = dests == [uid]
    if not self_weight and len(dests) < min(subnet.params.min_allowed_weights, n_uids):
        raise Rejected("WeightVecLengthIsLow", "Fewer weights than MinAllowedWeights")
    limit = subnet.params.max_weights_limit
    if not self_weight and limit < U16_MAX and max(values) * U16_MAX > limit * sum(values):
        raise Rejected("MaxWeightExceeded", "A weight exceeds MaxWeightsLimit")
    top = max(values)
    return [[d, round(v * U16_MAX / top)] for d, v in zip(dests, values, strict=True)]


def _origin(
    devnet: Devnet, conn: sqlite3.Connection, block: int, signer: str, netuid: int
) -> tuple[Subnet, int]:
    subnet = devnet.subnet(netuid)
    uid = devnet.registered_uid(conn, netuid, signer)
    if uid is None:
        raise Rejected("HotKeyNotRegisteredInSubNet", "The hotkey is not registered in subnet")
    neuron = next(n for n in devnet.neurons(netuid, block) if n.uid == uid)
    if not neuron.validator_permit:
        raise Rejected("NeuronNoValidatorPermit", "The neuron has no validator permit")
    limit = subnet.params.weights_rate_limit
    if limit and neuron.last_update and block - neuron.last_update < limit:
        raise Rejected("SettingWeightsTooFast", "Setting weights too fast")
    return subnet, uid


def _doomed(conn: sqlite3.Connection) -> str | None:
    """The fault switch's reason if it dooms this commit's reveal (it counts down)."""
    left = conn.execute("SELECT value FROM meta WHERE key = 'fail_reveals'").fetchone()
    if left is None or int(left[0]) <= 0:
        return None
    conn.execute("UPDATE meta SET value = ? WHERE key = 'fail_reveals'", (int(left[0]) - 1,))
    reason = conn.execute("SELECT value FROM meta WHERE key = 'fail_reveals_reason'").fetchone()
    return str(reason[0])
