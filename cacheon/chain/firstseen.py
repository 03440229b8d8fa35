"""First-seen precedence of image digests (DESIGN.md §3 step 1, §4.6).

The chain only remembers the block of each hotkey's latest commitment: a miner who re-commits
looks newer, and a copier who commits a leader's digest after the leader re-committed something
else would look first. So the validator keeps its own ledger of when it first saw each
(digest, hotkey) pair (`ValidatorState.record_first_seen`), and the first-seen block is
min(our record, the chain's block). Ties inside one block go to the lower uid, since the chain
keeps no order within a block. This module holds the ordering; the ledger lives with the rest of
the validator's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cacheon.chain.commitments import Submission
from cacheon.protocol import Block, Digest, Hotkey, Uid


@dataclass(frozen=True)
class Holder:
    """A hotkey that has committed a digest, and the earliest block it is known to have held it."""

    digest: Digest
    hotkey: Hotkey
    uid: Uid | None
    block: Block


def precedence(holder: Holder) -> tuple[int, int, int, str]:
    """Sort key: earlier block first; in one block the lower uid; deregistered (no uid) last."""
    return (holder.block, holder.uid is None, holder.uid or 0, holder.hotkey)


def rank(holders: Iterable[Holder]) -> list[Holder]:
    """Holders of one digest, first-seen first."""
    return sorted(holders, key=precedence)


def holders_on_chain(submissions: Iterable[Submission]) -> dict[Digest, list[Holder]]:
    """Group what the chain holds now by digest, each group ranked; for tools without a ledger."""
    grouped: dict[Digest, list[Holder]] = {}
    for s in submissions:
        grouped.setdefault(s.image.digest, []).append(
            Holder(digest=s.image.digest, hotkey=s.hotkey, uid=s.uid, block=s.block)
        )
    return {digest: rank(group) for digest, group in grouped.items()}
