"""Copies: by digest, by layers, by files (DESIGN.md §4.6). Pure rules over what was listed.

A copy earns nothing and must not take a place from the work it copies. Who is protected: an
earlier holder whose submission passed (a failed or unevaluated one protects nothing, so whoever
first commits a public image squats nothing). What is shared by right: the base layers (the
pinned baseline's, published reference images' and the configured public bases'). Three checks,
each catching what the one before cannot:
- at poll time, the same digest, or another holder's own layers inside ours with only a tiny
  remainder beside them (an image built FROM a miner's image with real work on top is not a copy:
  the speed test and the behavioural check judge it);
- on the pod, the files: a squash or a re-layering changes layers, not files, so an image that
  holds nearly all of the leader's (or runner-up's) own files and adds only a tiny part of its own
  is a copy whatever its layers;
- in the round, the outputs (`measure.behavioural_copies`): a flagged copy can be neither leader
  nor runner-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cacheon.arena.submissions import Submission
from cacheon.protocol import FileFingerprint, Hotkey, ReasonCode, file_sample_weight


@dataclass(frozen=True)
class Copy:
    """Why a submission is a copy, and of whom (None: of the baseline or a reference image)."""

    reason: ReasonCode
    of: Hotkey | None
    detail: str = ""


def layer_copy(
    candidate: Submission,
    protected: Iterable[Submission],
    base_layers: frozenset[str],
    *,
    tiny_bytes: int,
    holders: Iterable[Submission] = (),
) -> Copy | None:
    """The layer check of `candidate` against the earlier holders worth protecting (`protected`,
    those that passed) and, for the same digest only, against `holders` that have not failed:
    committing an exact copy of an image still in the queue earns nothing either, while a copy
    of a failed image fails as it did. A layer whose size the registry did not give is never
    tiny.

    Same-hotkey re-commits are never copies, and the earliest matching holder is named,
    whatever order `protected` comes in.
    """
    own = None if candidate.layers is None else candidate.layers - base_layers
    matches = [
        (other, "the same image")
        for other in holders
        if other.digest == candidate.digest
        and other.hotkey != candidate.hotkey
        and other.precedence < candidate.precedence
    ]
    for other in protected:
        if other.hotkey == candidate.hotkey or other.precedence >= candidate.precedence:
            continue
        if other.digest == candidate.digest:
            matches.append((other, "the same image"))
            continue
        theirs = None if other.layers is None else other.layers - base_layers
        if own is None or not theirs or not theirs <= own:
            continue
        sizes = dict(candidate.layer_sizes)
        extra = sum(sizes.get(layer, tiny_bytes + 1) for layer in own - theirs)
        if extra <= tiny_bytes:
            matches.append((other, f"its layers plus {extra / 1e6:.1f} MB"))
    if matches:
        earliest, how = min(matches, key=lambda match: match[0].precedence)
        return Copy(ReasonCode.COPY_OF, earliest.hotkey, f"copy of {earliest.hotkey}: {how}")
    if own is not None and not own:
        return Copy(ReasonCode.COPY_OF_REFERENCE, None, "no layers beyond the base images'")
    return None


@dataclass(frozen=True)
class FileMatch:
    """How much of a protected image's own files a candidate holds, and what it adds."""

    contained: float
    """Share of the protected image's own bytes found in the candidate (sample estimate)."""
    novel_bytes: int
    """Bytes of the candidate's files the protected image does not hold (sample estimate)."""


def file_match(candidate: FileFingerprint, protected: FileFingerprint) -> FileMatch | None:
    """Compare two file samples; None when the protected image has no own files sampled."""
    theirs_all = {name for name, _, _ in protected.samples}
    mine = {name for name, _, _ in candidate.samples}
    own = [(name, size) for name, size, is_own in protected.samples if is_own]
    total = sum(size * file_sample_weight(size) for _, size in own)
    if total == 0:
        return None
    held = sum(size * file_sample_weight(size) for name, size in own if name in mine)
    novel = sum(
        size * file_sample_weight(size)
        for name, size, _ in candidate.samples
        if name not in theirs_all
    )
    return FileMatch(held / total, novel)


def file_copy(
    candidate: FileFingerprint,
    protected: Iterable[tuple[Hotkey, FileFingerprint]],
    *,
    contained: float,
    tiny_bytes: int,
) -> Copy | None:
    """The file check: nearly all of a protected image's own files, and only a tiny addition."""
    for hotkey, theirs in protected:
        match = file_match(candidate, theirs)
        if match is not None and match.contained >= contained and match.novel_bytes <= tiny_bytes:
            detail = (
                f"copy of {hotkey}: holds {match.contained:.0%} of its own files and adds"
                f" {match.novel_bytes / 1e6:.1f} MB"
            )
            return Copy(ReasonCode.COPY_OF, hotkey, detail)
    return None
