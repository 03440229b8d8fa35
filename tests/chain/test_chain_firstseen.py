"""First-seen precedence: min(our record, the chain's block), ties in a block to the lower uid."""

from __future__ import annotations

from pathlib import Path

from cacheon.chain.commitments import ImageRef, Submission
from cacheon.chain.firstseen import holders_on_chain
from cacheon.protocol import Block, Digest, Hotkey, Uid
from cacheon.store.db import Database
from cacheon.validator.state import ValidatorState

DIGEST = Digest("sha256:" + "ef" * 32)
IMAGE = ImageRef("docker.io", "m/s", DIGEST)


def _sub(hotkey: str, uid: int | None, block: int) -> Submission:
    return Submission(Hotkey(hotkey), None if uid is None else Uid(uid), Block(block), IMAGE)


def test_ties_in_one_block_go_to_the_lower_uid() -> None:
    ranked = holders_on_chain([_sub("b", 7, 10), _sub("a", 3, 10), _sub("c", None, 10)])[DIGEST]
    assert [h.hotkey for h in ranked] == ["a", "b", "c"]


def test_ledger_keeps_the_earliest_block(tmp_path: Path) -> None:
    with Database.open(tmp_path / "state.db") as db:
        state = ValidatorState(db)
        state.record_first_seen([_sub("late", 2, 20)])
        state.record_first_seen([_sub("early", 5, 15)])
        state.record_first_seen([_sub("early", 5, 40), _sub("late", 2, 30)])
        ranked = state.first_seen_holders(DIGEST)
        assert [(h.hotkey, h.block) for h in ranked] == [("early", 15), ("late", 20)]
        assert state.first_seen_holders(Digest("sha256:" + "00" * 32)) == []
