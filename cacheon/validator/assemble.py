"""Build the daemon's collaborators from the settings, or say in one line each what is missing.

Everything is checked before anything starts: a validator that would fail its first round for a
missing S3 bucket or model manifest should refuse to start instead (exit code 2).
"""

from __future__ import annotations

from pathlib import Path

from cacheon.chain.client import ChainClient
from cacheon.chain.wallet import open_wallet, service_problem
from cacheon.config import Settings
from cacheon.pods.base import PodError
from cacheon.pods.keys import load_key
from cacheon.pods.leases import LeasePolicy, PodLeases
from cacheon.pods.providers import build_providers
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore, ObjectStoreError
from cacheon.validator.daemon import Parts


class NotReady(Exception):
    """The settings cannot run a validator; `problems` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def state_path(settings: Settings) -> Path:
    return Path(settings.validator.state_dir).expanduser() / "state.db"


def build_parts(settings: Settings, db: Database) -> Parts:
    """The daemon's parts over an open state database; raises NotReady listing every problem."""
    problems: list[str] = []
    if settings.model.manifest is None:
        problems.append("model.manifest: pin the model's files by sha256 (see config.example.toml)")
    store = None
    try:
        store = ObjectStore.from_settings(settings.s3)
    except ObjectStoreError as exc:
        problems.append(f"s3: {exc}")
    providers = []
    key = None
    try:
        key = load_key(Path(settings.pods.ssh_key_path))
        providers = build_providers(settings.pods, db)
    except PodError as exc:
        problems.append(f"pods: {exc}")
    wallet = open_wallet(settings.wallet)
    unusable = service_problem(wallet)
    if unusable is not None:
        problems.append(f"wallet: {unusable}")
    if problems or store is None or key is None:
        raise NotReady(problems)
    leases = PodLeases(db, providers, key, LeasePolicy.from_settings(settings))
    chain = ChainClient(settings.chain)
    return Parts(db=db, chain=chain, wallet=wallet, leases=leases, store=store)
