"""A simulated subtensor in one SQLite file, for tests, the demo and miners trying things out.

No subtensor node can be installed from a package index, yet the validator and the miner CLI must
be exercised end to end, by several processes at once (a miner commits, a validator reads). This
module is the chain's state and the rules Cacheon relies on; `devnet_substrate` puts it behind the
SDK's `substrate=` seam so the real SDK composes calls, preflights intents and decodes results.

State is kept as history (every row carries the block it landed in), so reads pinned to a block
see that block. An extrinsic is included in the current head block. Blocks advance with wall time
(`block_time_s`; 0 means only on demand) plus whatever `advance` added.

Rules enforced, as the chain does: only a hotkey registered on the netuid may commit; at most
`MaxFields` Raw fields of at most 128 bytes; a per-tempo byte quota per hotkey (each call costs
max(100, bytes)); weights need a registered hotkey with a validator permit, respect the rate
limit, the version key, `MinAllowedWeights`, `MaxWeightsLimit` and the commit-reveal switch.

Timelocked weight commits are revealed at the first block of epoch `commit epoch +
RevealPeriodEpochs` (an epoch is `tempo` blocks here): from that block the commit is no longer
pending and, unless its reveal fails, its row is the committer's weights. The SDK encrypts the
weights to drand's key and the devnet cannot reach drand, so it plays drand's part for its own
chain: the committer lodges the plaintext (`lodge_reveal`), and a commit nobody lodged is never
revealed, as a commit the chain cannot decrypt. `fail_reveals(n)` is the fault switch: the next n
commits are never revealed, for the reason given.
Not simulated: SCALE encoding, fees, stake, and drand.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacheon.chain import devnet_weights
from cacheon.chain.devnet_errors import Rejected
from cacheon.chain.devnet_weights import U16_MAX

SCHEME = "sim://"
MAX_FIELDS = 3
MAX_RAW_BYTES = 128
MIN_COMMIT_COST = 100

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE subnets (
    netuid INTEGER PRIMARY KEY, owner_hotkey TEXT NOT NULL, owner_coldkey TEXT NOT NULL,
    tempo INTEGER NOT NULL, weights_rate_limit INTEGER NOT NULL,
    weights_version_key INTEGER NOT NULL, commit_reveal INTEGER NOT NULL,
    min_allowed_weights INTEGER NOT NULL, max_weights_limit INTEGER NOT NULL,
    max_space INTEGER NOT NULL, reveal_period_epochs INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE TABLE neurons (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, coldkey TEXT NOT NULL,
    validator_permit INTEGER NOT NULL, registered_at INTEGER NOT NULL,
    PRIMARY KEY (netuid, uid), UNIQUE (netuid, hotkey)
);
CREATE TABLE extrinsics (
    block INTEGER NOT NULL, idx INTEGER NOT NULL, signer TEXT NOT NULL, module TEXT NOT NULL,
    function TEXT NOT NULL, error TEXT, PRIMARY KEY (block, idx)
);
CREATE TABLE commitments (
    netuid INTEGER NOT NULL, hotkey TEXT NOT NULL, block INTEGER NOT NULL, fields TEXT NOT NULL
);
CREATE TABLE used_space (
    netuid INTEGER NOT NULL, hotkey TEXT NOT NULL, epoch INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (netuid, hotkey, epoch)
);
CREATE TABLE weights (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, block INTEGER NOT NULL, row TEXT NOT NULL
);
CREATE TABLE weight_commits (
    netuid INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey TEXT NOT NULL, block INTEGER NOT NULL,
    commit_hex TEXT NOT NULL, reveal_round INTEGER NOT NULL
);
"""


class DevnetError(Exception):
    """The devnet file is missing, not a devnet, or asked to do something it cannot."""


@dataclass(frozen=True)
class SubnetParams:
    """A subnet's hyperparameters; defaults are permissive so tests opt into each rule."""

    owner_hotkey: str
    owner_coldkey: str
    tempo: int = 360
    weights_rate_limit: int = 100
    weights_version_key: int = 0
    commit_reveal: bool = False
    min_allowed_weights: int = 1
    max_weights_limit: int = U16_MAX
    max_space: int = 3100
    reveal_period_epochs: int = 1


HYPERPARAMETERS = frozenset(
    {
        "tempo",
        "weights_rate_limit",
        "weights_version_key",
        "commit_reveal",
        "min_allowed_weights",
        "max_weights_limit",
        "max_space",
        "reveal_period_epochs",
    }
)


@dataclass(frozen=True)
class Subnet:
    netuid: int
    params: SubnetParams
    registered_at: int


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    coldkey: str
    validator_permit: bool
    registered_at: int
    last_update: int


@dataclass(frozen=True)
class Commitment:
    hotkey: str
    block: int
    fields: list[dict[str, str]]
    """Decoded the way the SDK's transport hands them over: `[{"Raw71": "0x…"}]`."""


def db_path(network: str) -> Path | None:
    """The devnet file a `sim://<path>` network names, or None for any other network."""
    if not network.startswith(SCHEME):
        return None
    return Path(network[len(SCHEME) :]).expanduser()


class Devnet:
    """One devnet file. Safe to share between threads; several processes may open the same file."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise DevnetError(
                f"{path}: no devnet here; create one with `cacheon-validator devnet init`"
            )
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        try:
            self._meta = {
                row["key"]: row["value"] for row in self._conn.execute("SELECT * FROM meta")
            }
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise DevnetError(f"{path}: not a devnet file ({exc})") from None
        self._conn.executescript(devnet_weights.REVEALS_SCHEMA)

    @classmethod
    def create(cls, path: Path, *, block_time_s: float = 12.0) -> Devnet:
        """Start a new chain at block 1; refuses to overwrite an existing file."""
        if path.exists():
            raise DevnetError(f"{path} already exists; remove it or pick another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.executescript(f"BEGIN;{_SCHEMA}COMMIT;")
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("genesis_unix", repr(time.time())),
                    ("genesis_hash", hashlib.sha256(str(path.resolve()).encode()).hexdigest()),
                    ("block_time_s", repr(block_time_s)),
                    ("manual_blocks", "1"),
                ],
            )
        finally:
            conn.close()
        return cls(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # Blocks -------------------------------------------------------------------------------------

    @property
    def block_time_s(self) -> float:
        return float(self._meta["block_time_s"])

    def head(self) -> int:
        manual = int(self._rows("SELECT value FROM meta WHERE key = 'manual_blocks'")[0][0])
        if self.block_time_s <= 0:
            return manual
        elapsed = time.time() - float(self._meta["genesis_unix"])
        return manual + int(elapsed / self.block_time_s)

    def advance(self, blocks: int = 1) -> int:
        """Produce `blocks` empty blocks now; returns the new head."""
        if blocks < 0:
            raise DevnetError("blocks only move forward")
        with self._write() as conn:
            conn.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'manual_blocks'",
                (blocks,),
            )
        return self.head()

    def block_hash(self, block: int) -> str:
        """A hash that encodes its block number, so a pinned read needs no lookup table."""
        tail = hashlib.sha256(f"{self._meta['genesis_hash']}:{block}".encode()).hexdigest()
        return f"0x{block:016x}{tail[:48]}"

    def block_of(self, block_hash: str | None) -> int:
        if block_hash is None:
            return self.head()
        try:
            block = int(block_hash[2:18], 16)
        except ValueError:
            raise DevnetError(f"unknown block hash {block_hash}") from None
        if self.block_hash(block) != block_hash or block > self.head():
            raise DevnetError(f"unknown block hash {block_hash}")
        return block

    def timestamp_ms(self, block: int) -> int:
        spacing = self.block_time_s if self.block_time_s > 0 else 12.0
        return int((float(self._meta["genesis_unix"]) + block * spacing) * 1000)

    # Administration (what sudo and `btcli subnets register` do on a real chain) -----------------

    def add_subnet(self, netuid: int, params: SubnetParams) -> None:
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO subnets VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        netuid,
                        params.owner_hotkey,
                        params.owner_coldkey,
                        params.tempo,
                        params.weights_rate_limit,
                        params.weights_version_key,
                        int(params.commit_reveal),
                        params.min_allowed_weights,
                        params.max_weights_limit,
                        params.max_space,
                        params.reveal_period_epochs,
                        self.head(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DevnetError(f"netuid {netuid} already exists") from None

    def set_hyperparameter(self, netuid: int, name: str, value: int) -> None:
        if name not in HYPERPARAMETERS:
            raise DevnetError(f"unknown hyperparameter {name}; known: {sorted(HYPERPARAMETERS)}")
        self.subnet(netuid)
        with self._write() as conn:
            conn.execute(f"UPDATE subnets SET {name} = ? WHERE netuid = ?", (value, netuid))  # noqa: S608 (name is from the fixed set above)

    def register(
        self, netuid: int, hotkey: str, coldkey: str, *, validator_permit: bool = False
    ) -> int:
        """Give a hotkey the next uid on a netuid; a registered hotkey keeps its uid."""
        self.subnet(netuid)
        with self._write() as conn:
            row = conn.execute(
                "SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE neurons SET validator_permit = ? WHERE netuid = ? AND uid = ?",
                    (int(validator_permit), netuid, row[0]),
                )
                return int(row[0])
            uid = conn.execute(
                "SELECT COUNT(*) FROM neurons WHERE netuid = ?", (netuid,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO neurons VALUES (?,?,?,?,?,?)",
                (netuid, uid, hotkey, coldkey, int(validator_permit), self.head()),
            )
            return int(uid)

    def lodge_reveal(
        self,
        netuid: int,
        hotkey: str,
        reveal_round: int,
        row: Sequence[tuple[int, int]],
        version_key: int,
    ) -> None:
        """What the hotkey's timelocked commit for drand round `reveal_round` decrypts to (the
        devnet's stand-in for drand, see the module docstring)."""
        with self._write() as conn:
            if not devnet_weights.lodge_reveal(
                self, conn, netuid, hotkey, reveal_round, row=row, version_key=version_key
            ):
                raise DevnetError(
                    f"no timelocked commit by {hotkey} for drand round {reveal_round}"
                )

    # Faults -------------------------------------------------------------------------------------

    def fail_reveals(
        self, count: int = 1, reason: str = devnet_weights.DEFAULT_REVEAL_FAILURE
    ) -> None:
        """The next `count` timelocked commits are never revealed, for `reason`; 0 clears."""
        with self._write() as conn:
            devnet_weights.fail_reveals(conn, count, reason)

    # Reads at a block ---------------------------------------------------------------------------

    def subnets(self, block: int) -> list[int]:
        rows = self._rows("SELECT netuid FROM subnets WHERE registered_at <= ?", (block,))
        return [int(r[0]) for r in rows]

    def subnet(self, netuid: int) -> Subnet:
        rows = self._rows("SELECT * FROM subnets WHERE netuid = ?", (netuid,))
        if not rows:
            raise DevnetError(f"netuid {netuid} does not exist on this devnet")
        row = dict(rows[0])
        registered_at = row.pop("registered_at")
        row.pop("netuid")
        row["commit_reveal"] = bool(row["commit_reveal"])
        return Subnet(netuid=netuid, params=SubnetParams(**row), registered_at=registered_at)

    def neurons(self, netuid: int, block: int) -> list[Neuron]:
        rows = self._rows(
            "SELECT n.*, (SELECT MAX(b) FROM ("
            "  SELECT block AS b FROM weights w WHERE w.netuid = n.netuid AND w.uid = n.uid"
            "    AND w.block <= :block"
            "  UNION ALL SELECT block FROM weight_commits c WHERE c.netuid = n.netuid"
            "    AND c.uid = n.uid AND c.block <= :block)) AS last_update "
            "FROM neurons n WHERE n.netuid = :netuid AND n.registered_at <= :block ORDER BY uid",
            {"netuid": netuid, "block": block},
        )
        return [
            Neuron(
                uid=r["uid"],
                hotkey=r["hotkey"],
                coldkey=r["coldkey"],
                validator_permit=bool(r["validator_permit"]),
                registered_at=r["registered_at"],
                last_update=r["last_update"] or 0,
            )
            for r in rows
        ]

    def commitments(self, netuid: int, block: int) -> list[Commitment]:
        rows = self._rows(
            "SELECT hotkey, block, fields FROM commitments c WHERE netuid = :netuid"
            " AND block <= :block AND rowid = (SELECT MAX(rowid) FROM commitments d"
            "  WHERE d.netuid = c.netuid AND d.hotkey = c.hotkey AND d.block <= :block)",
            {"netuid": netuid, "block": block},
        )
        return [Commitment(r["hotkey"], r["block"], json.loads(r["fields"])) for r in rows]

    def used_space(self, netuid: int, hotkey: str, block: int) -> tuple[int, int]:
        """(epoch, bytes used in it) for the epoch containing `block`."""
        epoch = block // max(1, self.subnet(netuid).params.tempo)
        rows = self._rows(
            "SELECT used FROM used_space WHERE netuid = ? AND hotkey = ? AND epoch = ?",
            (netuid, hotkey, epoch),
        )
        return epoch, int(rows[0][0]) if rows else 0

    def weights(self, netuid: int, block: int) -> dict[int, list[tuple[int, int]]]:
        """Each uid's row at `block`: the latest set directly or revealed from a commit."""
        rows = self._rows(
            "SELECT uid, block, row, 0 AS source, rowid AS seq FROM weights"
            " WHERE netuid = :netuid AND block <= :block"
            " UNION ALL SELECT uid, reveal_block, row, 1, rowid FROM weight_reveals"
            " WHERE netuid = :netuid AND reveal_block <= :block AND row IS NOT NULL"
            "  AND failure IS NULL ORDER BY 2, 4, 5",
            {"netuid": netuid, "block": block},
        )
        return {int(r["uid"]): [tuple(p) for p in json.loads(r["row"])] for r in rows}

    def weight_commits(self, netuid: int, block: int) -> list[tuple[int, str, int, str, int]]:
        """Commits still pending at `block` (not yet at their reveal block), oldest first:
        (epoch, hotkey, commit block, ciphertext hex, reveal round)."""
        tempo = max(1, self.subnet(netuid).params.tempo)
        rows = self._rows(
            "SELECT hotkey, block, commit_hex, reveal_round FROM weight_commits c"
            " WHERE netuid = :netuid AND block <= :block AND NOT EXISTS (SELECT 1"
            "  FROM weight_reveals r WHERE r.netuid = c.netuid AND r.uid = c.uid"
            "  AND r.commit_block = c.block AND r.reveal_round = c.reveal_round"
            "  AND r.reveal_block <= :block) ORDER BY rowid",
            {"netuid": netuid, "block": block},
        )
        return [(r[1] // tempo, r[0], r[1], r[2], r[3]) for r in rows]

    def extrinsics(self, block: int) -> list[sqlite3.Row]:
        return self._rows("SELECT * FROM extrinsics WHERE block = ? ORDER BY idx", (block,))

    # Extrinsics ---------------------------------------------------------------------------------

    def apply(
        self, signer: str, module: str, function: str, params: dict[str, Any]
    ) -> tuple[int, int]:
        """Dispatch one signed call in the head block; returns its (block, extrinsic index).

        Raises `Rejected` when the chain's rules refuse it; a refused call is still recorded as an
        included extrinsic (it paid for its inclusion), as on a real chain.
        """
        handler = _HANDLERS.get((module, function))
        if handler is None:
            raise Rejected("CallNotSimulated", f"the devnet does not simulate {module}.{function}")
        with self._write() as conn:
            block = self.head()
            idx = conn.execute(
                "SELECT COUNT(*) FROM extrinsics WHERE block = ?", (block,)
            ).fetchone()[0]
            error: Rejected | None = None
            try:
                handler(self, conn, block, signer, params)
            except Rejected as exc:
                error = exc
            conn.execute(
                "INSERT INTO extrinsics VALUES (?,?,?,?,?,?)",
                (block, idx, signer, module, function, error.name if error else None),
            )
        if error is not None:
            raise error
        return int(block), int(idx)

    def registered_uid(self, conn: sqlite3.Connection, netuid: int, hotkey: str) -> int | None:
        row = conn.execute(
            "SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)
        ).fetchone()
        return None if row is None else int(row[0])

    def _set_commitment(
        self, conn: sqlite3.Connection, block: int, signer: str, params: dict[str, Any]
    ) -> None:
        netuid = int(params["netuid"])
        subnet = self.subnet(netuid)
        if self.registered_uid(conn, netuid, signer) is None:
            raise Rejected("AccountNotAllowedCommit", "Account is not allowed to commit")
        fields = commitment_fields(params["info"])
        if len(fields) > MAX_FIELDS:
            raise Rejected("TooManyFieldsInCommitmentInfo", "Too many fields in commitment info")
        cost = max(
            MIN_COMMIT_COST, sum(len(bytes.fromhex(v[2:])) for f in fields for v in f.values())
        )
        epoch, used = self.used_space(netuid, signer, block)
        if used + cost > subnet.params.max_space:
            raise Rejected("SpaceLimitExceeded", "Space Limit Exceeded for the current interval")
        conn.execute(
            "INSERT INTO used_space VALUES (?,?,?,?) ON CONFLICT(netuid, hotkey, epoch)"
            " DO UPDATE SET used = used + excluded.used",
            (netuid, signer, epoch, cost),
        )
        conn.execute(
            "INSERT INTO commitments VALUES (?,?,?,?)", (netuid, signer, block, json.dumps(fields))
        )


def commitment_fields(info: Any) -> list[dict[str, str]]:
    """Check a `CommitmentInfo` the way the SCALE codec would and return it in decoded form.

    Raises `DevnetError` for what the codec itself cannot encode (the call never reaches the
    chain): an unknown variant, or a `Raw<n>` whose payload is not exactly n ≤ 128 bytes.
    """
    entries = info.get("fields") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        raise DevnetError("cannot encode CommitmentInfo: expected {'fields': [...]}")
    out: list[dict[str, str]] = []
    for entry in entries:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise DevnetError(f"cannot encode commitment field {entry!r}")
        ((variant, payload),) = entry.items()
        data = _as_bytes(payload)
        if not variant.startswith("Raw") or not variant[3:].isdigit():
            raise DevnetError(f"the devnet only simulates Raw commitment fields, not {variant}")
        size = int(variant[3:])
        if size > MAX_RAW_BYTES or data is None or len(data) != size:
            raise DevnetError(
                f"cannot encode {variant}: payload must be exactly {size} bytes ≤ 128"
            )
        out.append({variant: "0x" + data.hex()})
    return out


def _as_bytes(payload: Any) -> bytes | None:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        if payload.startswith("0x"):
            try:
                return bytes.fromhex(payload[2:])
            except ValueError:
                return None
        return payload.encode()
    return None


_HANDLERS = {
    ("Commitments", "set_commitment"): Devnet._set_commitment,
    ("SubtensorModule", "set_mechanism_weights"): devnet_weights.set_weights,
    ("SubtensorModule", "commit_timelocked_mechanism_weights"): devnet_weights.commit_timelocked,
}
