"""A validator process that only rents: `python rent_worker.py CONFIG.toml`.

The crash test starts it, lets it get as far as a pod at the provider, and SIGKILLs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cacheon.config import load_settings
from cacheon.pods import LeasePolicy, PodLeases, build_providers, load_key
from cacheon.store.db import Database


async def main(config: Path) -> None:
    settings = load_settings(argparse.Namespace(config=config), environ={}).settings
    db = Database.open(Path(settings.validator.state_dir) / "state.db")
    providers = build_providers(settings.pods, db)
    leases = PodLeases(
        db,
        providers,
        load_key(Path(settings.pods.ssh_key_path)),
        LeasePolicy.from_settings(settings),
    )
    await leases.start()
    print("renting", flush=True)
    await leases.acquire(expected_hours=1)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
