"""The poll-time pre-screen of a submission (DESIGN.md §3 step 1, §4.6), before any GPU money.

One pure rule, used by the validator's poll and by `cacheon-miner check`, over the registry's
answer: listed for linux/amd64, small enough, and not a copy by digest or layers. Whatever the
check cannot decide (the registry is down, the base images' layers are not known yet) makes the
submission wait, never skips the check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cacheon.arena.attribution import attribute
from cacheon.arena.copies import layer_copy
from cacheon.arena.submissions import Submission
from cacheon.protocol import Outcome, ReasonCode


@dataclass(frozen=True)
class Listing:
    """What the registry lists for an image's linux/amd64 platform."""

    compressed_size: int
    layers: tuple[str, ...]
    """Layer diff ids, bottom first (the copy checks compare them)."""
    layer_sizes: tuple[int, ...] = ()
    """Compressed bytes of each layer, in the same order, when the registry gave them."""


@dataclass(frozen=True)
class Unlisted:
    """The registry did not list the image; `reason` says whose fault that is (§3 step 1)."""

    reason: ReasonCode
    detail: str


@dataclass(frozen=True)
class Screened:
    """The pre-screen's finding for one submission.

    PASS: it may be queued; FAIL: it is failed with `reason`; NO_DECISION: the check could not
    run (the registry is unavailable) and the submission waits for the next poll.
    """

    outcome: Outcome
    submission: Submission
    """With the layers the registry listed, when it listed them."""
    reason: ReasonCode | None = None
    detail: str = ""


def with_listing(submission: Submission, listing: Listing) -> Submission:
    """The submission with the layers, and their sizes, the registry listed."""
    sizes = tuple(zip(listing.layers, listing.layer_sizes, strict=False))
    return Submission(
        submission.hotkey,
        submission.uid,
        submission.digest,
        submission.first_seen,
        frozenset(listing.layers),
        sizes if len(listing.layer_sizes) == len(listing.layers) else (),
    )


def screen(
    submission: Submission,
    answer: Listing | Unlisted,
    *,
    max_bytes: int,
    protected: Iterable[Submission],
    base_layers: frozenset[str] | None,
    tiny_bytes: int,
    holders: Iterable[Submission] = (),
) -> Screened:
    """`protected` are the earlier submissions that passed, `holders` those not failed (for the
    same-digest rule); `base_layers` None means the base images' layers are not known yet, so
    copies cannot be told apart from them."""
    if isinstance(answer, Unlisted):
        fault = attribute(answer.reason, during_own_launch=True)
        return Screened(fault.outcome, submission, answer.reason, answer.detail)
    listed = with_listing(submission, answer)
    if answer.compressed_size > max_bytes:
        detail = f"{answer.compressed_size / 1e9:.1f} GB compressed > {max_bytes / 1e9:g} GB"
        return Screened(Outcome.FAIL, listed, ReasonCode.IMAGE_TOO_LARGE, detail)
    if base_layers is None:
        detail = "the base images' layers are not known yet; the copy check waits for the registry"
        return Screened(Outcome.NO_DECISION, listed, ReasonCode.REGISTRY_UNAVAILABLE, detail)
    copy = layer_copy(listed, protected, base_layers, tiny_bytes=tiny_bytes, holders=holders)
    if copy is not None:
        return Screened(Outcome.FAIL, listed, copy.reason, copy.detail)
    return Screened(Outcome.PASS, listed)
