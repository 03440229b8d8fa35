"""The registry's answer for an image, in the arena's terms, for the pre-screen (`arena.screen`).

The poll and `cacheon-miner check` both ask the registry through this one function and judge
the answer with the same pure rule, so a miner sees a pre-screen FAIL before paying to commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cacheon.arena import Listing, Unlisted
from cacheon.chain.commitments import ImageRef
from cacheon.chain.registry import ImageManifest, RegistryProblem, fetch_manifest

ManifestFetcher = Callable[[ImageRef], Awaitable[ImageManifest]]


async def list_image(ref: ImageRef, fetch: ManifestFetcher = fetch_manifest) -> Listing | Unlisted:
    """The image's linux/amd64 listing, or the registry's refusal with its reason code."""
    try:
        manifest = await fetch(ref)
    except RegistryProblem as problem:
        return Unlisted(problem.reason, str(problem))
    return Listing(manifest.compressed_size, manifest.diff_ids, manifest.layer_sizes)
