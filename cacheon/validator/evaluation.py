"""What a verdict depends on, and the round's secrets that make its prompts unpredictable.

A terminal verdict is replayed instead of re-run only while the evaluation version is unchanged
(DESIGN.md §3 step 2): the validator's major.minor, the model and its revision, the baseline
digest, the workload (its generator and what it measures: a ratio at other concurrencies is
another ratio), the gate thresholds, the miner contract and the arena settings that change a
verdict (moat, alpha, max_launches, the noise rule, the copy rules). The round salt is
HMAC(validator secret, round id): its hash is published before the round, the salt after it, so
anyone can check the seed was not chosen after seeing the block.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from cacheon import __version__
from cacheon.arena import ArenaParams
from cacheon.config import ArenaSettings, Settings, WorkloadSettings
from cacheon.protocol import CONTRACT_VERSION, SCHEMA_VERSION, GateThresholds, Workload
from cacheon.store.db import Database

SECRET_META_KEY = "validator.secret"  # noqa: S105 (the key under which it is stored)


def arena_params(settings: ArenaSettings) -> ArenaParams:
    """The arena's parameters from the operator's settings."""
    return ArenaParams(
        moat=settings.moat,
        alpha=settings.alpha,
        max_launches=settings.max_launches,
        sigma_floor=settings.sigma_floor,
        max_challengers_per_round=settings.max_challengers_per_round,
        min_blocks_between_evaluations=settings.min_blocks_between_evaluations,
        leader_share=settings.leader_share,
        sigma_prior=settings.sigma_prior,
        sigma_confidence=settings.sigma_confidence,
        copy_tiny_bytes=int(settings.copy_tiny_mb * 1e6),
        copy_file_share=settings.copy_file_share,
    )


def workload(settings: WorkloadSettings) -> Workload:
    """What the agent measures, from the operator's settings."""
    return Workload(**settings.model_dump(include=set(Workload.model_fields)))


def evaluation_version(settings: Settings, workload: Workload, gate: GateThresholds) -> str:
    major_minor = ".".join(__version__.split(".")[:2])
    parts = {
        "validator": major_minor,
        "model": f"{settings.model.name}@{settings.model.revision}",
        "baseline": settings.model.baseline_image.rpartition("@")[2],
        "workload": workload.model_dump(mode="json"),  # its generator and what it measures
        "gate": gate.version,
        "contract": CONTRACT_VERSION,
        "schema": SCHEMA_VERSION,
        "arena": _verdict_rules(settings.arena),
    }
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _verdict_rules(arena: ArenaSettings) -> dict[str, object]:
    """The arena settings that change a verdict: a decision reached under other ones is another
    decision (evidence and verdicts are keyed by the evaluation version, DESIGN.md §4.5)."""
    return {
        "moat": arena.moat,
        "alpha": arena.alpha,
        "max_launches": arena.max_launches,
        "sigma": [arena.sigma_floor, arena.sigma_prior, arena.sigma_confidence],
        "copies": [sorted(arena.base_images), arena.copy_tiny_mb, arena.copy_file_share],
    }


def validator_secret(settings: Settings, db: Database) -> bytes:
    """The configured secret, or one generated once and kept in the state database."""
    if settings.validator.secret is not None:
        return settings.validator.secret.get_secret_value().encode()
    stored = db.get_meta(SECRET_META_KEY)
    if stored is None:
        stored = secrets.token_hex(32)
        db.set_meta(SECRET_META_KEY, stored)
    return bytes.fromhex(stored)


def round_salt(secret: bytes, round_id: str) -> bytes:
    return hmac.new(secret, round_id.encode(), hashlib.sha256).digest()


def round_seed(block_hash: str, salt: bytes) -> str:
    return hashlib.sha256(block_hash.encode() + salt).hexdigest()
