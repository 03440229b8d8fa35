"""A stand-in daemon for the snapshot tests: holds the state database's writer lock and commits
transactions that each add one first-seen record and one noise pair, so any consistent snapshot
has as many of one as of the other. Prints `ready` once it holds the lock, exits after N."""

from __future__ import annotations

import sys
from pathlib import Path

from cacheon.store.db import Database


def main(path: str, transactions: int) -> None:
    with Database.open(Path(path)) as db:
        print("ready", flush=True)
        for i in range(transactions):
            with db.transaction() as conn:
                conn.execute(
                    "INSERT INTO first_seen(digest, hotkey, uid, block) VALUES(?, ?, ?, ?)",
                    (f"sha256:{i:064x}", f"hotkey-{i % 7}", i % 256, i),
                )
                conn.execute(
                    "INSERT INTO noise_pairs(round_id, value) VALUES(?, ?)", (str(i), 0.01)
                )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
