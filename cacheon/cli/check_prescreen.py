"""The validator's poll-time pre-screen of an image, run by `cacheon-miner check` first.

A validator reads the image's manifest and config from the registry before spending anything
on it (DESIGN.md §3 step 1, §4.6): canonical reference, linux/amd64 present, compressed size
under the limit, and layers that are not a copy of the leader's or of the baseline alone. The
check asks the same registry with the same code (`parse_reference`, `fetch_manifest`,
`find_copy`), so a miner sees these FAILs before paying for a commitment.
"""

from __future__ import annotations

from dataclasses import dataclass

from cacheon.arena import Submission, attribute, find_copy
from cacheon.chain.commitments import ImageRef, Rejection, parse_reference
from cacheon.chain.registry import ImageManifest, RegistryProblem, fetch_manifest
from cacheon.protocol import Block, Digest, Hotkey, Outcome, ReasonCode, Uid

MINE = Hotkey("this image")
LEADER = Hotkey("the leader")


@dataclass(frozen=True)
class Prescreen:
    manifest: ImageManifest | None = None
    base_layers: frozenset[str] | None = None
    """The baseline's layer diff ids: shared by everyone, never counted as a copy."""
    leader_layers: frozenset[str] | None = None
    failure: tuple[ReasonCode, str] | None = None
    """The FAIL a validator would record without running the image."""
    warnings: tuple[str, ...] = ()


async def prescreen(
    image: str, baseline: str | None, leader: str | None, max_image_gb: float
) -> Prescreen:
    """`baseline` and `leader` are None where they are attached servers, not images."""
    ref = parse_reference(image)
    if isinstance(ref, Rejection):
        return Prescreen(failure=(ReasonCode.BAD_COMMITMENT, ref.detail))
    try:
        manifest = await fetch_manifest(ref)
    except RegistryProblem as problem:
        if attribute(problem.reason, during_own_launch=True).outcome is Outcome.FAIL:
            return Prescreen(failure=(problem.reason, str(problem)))
        return Prescreen(warnings=(f"registry unavailable, pre-screen skipped: {problem}",))
    limit = int(max_image_gb * 1e9)
    if manifest.compressed_size > limit:
        detail = f"{manifest.compressed_size / 1e9:.1f} GB compressed > {max_image_gb:g} GB"
        return Prescreen(manifest, failure=(ReasonCode.IMAGE_TOO_LARGE, detail))
    warnings: list[str] = []
    base = await _layers(baseline, "baseline", warnings)
    leading = await _layers(leader, "leader", warnings)
    screened = Prescreen(manifest, base, leading, warnings=tuple(warnings))
    if base is None:
        return screened  # a validator waits for the baseline's layers before judging copies
    mine = Submission(MINE, Uid(1), Digest(ref.digest), Block(1), frozenset(manifest.diff_ids))
    history = []
    if leader is not None and leading is not None:
        digest = Digest(leader.rpartition("@")[2])
        history.append(Submission(LEADER, Uid(0), digest, Block(0), leading))
    copy = find_copy(mine, history, base)
    if copy is None:
        return screened
    of = f"a copy of {copy.of}" if copy.of else "it adds no layers to the baseline"
    return Prescreen(manifest, base, leading, (copy.reason, of), tuple(warnings))


async def _layers(image: str | None, role: str, warnings: list[str]) -> frozenset[str] | None:
    if image is None:
        return None
    ref = parse_reference(image)
    if not isinstance(ref, ImageRef):
        warnings.append(f"{role} {image}: {ref.detail}; copy checks skipped")
        return None
    try:
        return frozenset((await fetch_manifest(ref)).diff_ids)
    except RegistryProblem as problem:
        warnings.append(f"{role} manifest unavailable, copy checks skipped: {problem}")
        return None
