"""Copies by digest and by layers at poll time, and by files on the pod (DESIGN.md §4.6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheon.arena import Copy, Submission, file_copy, file_match, layer_copy
from cacheon.protocol import Block, Digest, FileFingerprint, Hotkey, ReasonCode, Uid

BASE = frozenset({"base-cuda", "base-vllm"})
TINY = 16_000_000
SIZES = {"alice-engine": 900_000_000, "bob-tweak": 40_000, "bob-kernels": 2_000_000_000}


def digest(tag: str) -> Digest:
    return Digest("sha256:" + tag * 64)


def sub(
    hotkey: str,
    tag: str,
    block: int,
    uid: int = 1,
    layers: set[str] | None = None,
) -> Submission:
    return Submission(
        Hotkey(hotkey),
        Uid(uid),
        digest(tag),
        Block(block),
        None if layers is None else frozenset(layers),
        tuple((layer, SIZES[layer]) for layer in sorted(layers or ()) if layer in SIZES),
    )


def _found(copy: Copy | None) -> tuple[ReasonCode, str | None] | None:
    return None if copy is None else (copy.reason, copy.of)


ALICE = sub("alice", "a", 100, uid=5, layers={"base-cuda", "base-vllm", "alice-engine"})
ALICE_LATER = sub("alice", "b", 300, uid=5, layers={"base-cuda", "alice-engine", "alice-v2"})


@pytest.mark.parametrize(
    ("candidate", "history", "expected"),
    [
        pytest.param(
            sub("bob", "a", 200, uid=2),
            [ALICE],
            (ReasonCode.COPY_OF, "alice"),
            id="same digest, later, other hotkey",
        ),
        pytest.param(
            sub("alice", "a", 400, uid=5),
            [ALICE, ALICE_LATER],
            None,
            id="same-hotkey re-commit of its own digest",
        ),
        pytest.param(ALICE, [ALICE, sub("bob", "a", 200, uid=2)], None, id="the earlier holder"),
        pytest.param(
            sub("bob", "a", 100, uid=9),
            [sub("alice", "a", 100, uid=5)],
            (ReasonCode.COPY_OF, "alice"),
            id="same block, bob has the higher uid",
        ),
        pytest.param(
            sub("bob", "a", 100, uid=3),
            [sub("alice", "a", 100, uid=5)],
            None,
            id="same block, bob has the lower uid",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"base-cuda", "alice-engine", "bob-tweak"}),
            [ALICE],
            (ReasonCode.COPY_OF, "alice"),
            id="an earlier image under a tiny new top layer",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"base-cuda", "alice-engine", "bob-kernels"}),
            [ALICE],
            None,
            id="built on an earlier image with real work on top: judged by speed",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"base-cuda", "alice-engine", "bob-unsized"}),
            [ALICE],
            None,
            id="a layer of unknown size is never tiny",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"alice-engine"}),
            [ALICE],
            (ReasonCode.COPY_OF, "alice"),
            id="same non-base layers, different digest",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"base-cuda", "bob-engine"}),
            [ALICE],
            None,
            id="own layers on a shared base",
        ),
        pytest.param(
            sub("bob", "c", 50, uid=2, layers={"base-cuda", "alice-engine", "bob-tweak"}),
            [ALICE],
            None,
            id="containing a later image is not copying it",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"base-cuda", "base-vllm"}),
            [ALICE],
            (ReasonCode.COPY_OF_REFERENCE, None),
            id="nothing but base layers",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2, layers={"alice-engine"}),
            [sub("carol", "d", 150, uid=3, layers={"base-cuda"})],
            None,
            id="an earlier reference copy is contained by everything and counts for nothing",
        ),
        pytest.param(
            sub("bob", "c", 200, uid=2),
            [ALICE],
            None,
            id="layers unknown: digest rule only",
        ),
        pytest.param(
            sub("dave", "a", 500, uid=4),
            [sub("carol", "a", 300, uid=3), ALICE, sub("bob", "a", 200, uid=2)],
            (ReasonCode.COPY_OF, "alice"),
            id="the earliest holder is named",
        ),
    ],
)
def test_layer_copy(
    candidate: Submission, history: list[Submission], expected: tuple[ReasonCode, str | None] | None
) -> None:
    assert _found(layer_copy(candidate, history, BASE, tiny_bytes=TINY)) == expected
    again = layer_copy(candidate, [*reversed(history), candidate], BASE, tiny_bytes=TINY)
    assert _found(again) == expected


@given(st.permutations(range(6)))
def test_layer_copy_ignores_history_order(order: list[int]) -> None:
    history = [sub(f"h{i}", "a", 100 + i % 3, uid=10 - i) for i in range(6)]
    candidate = sub("late", "a", 900, uid=0)
    shuffled = [history[i] for i in order]
    found = layer_copy(candidate, shuffled, BASE, tiny_bytes=TINY)
    assert found == layer_copy(candidate, history, BASE, tiny_bytes=TINY)
    assert _found(found) == (ReasonCode.COPY_OF, "h3")


def _files(*groups: tuple[str, int, int, bool]) -> FileFingerprint:
    """(prefix, count, size, own) groups of sampled files, named `<prefix>-<i>`."""
    samples = tuple(
        (f"{prefix}-{i}", size, own) for prefix, count, size, own in groups for i in range(count)
    )
    return FileFingerprint(files=len(samples), bytes=sum(s for _, s, _ in samples), samples=samples)


CUDA = ("cuda", 40, 50_000_000, False)
LEADER_ENGINE = ("engine", 30, 20_000_000, True)
LEADER = _files(CUDA, LEADER_ENGINE)
PROTECTED = [(Hotkey("alice"), LEADER)]


@pytest.mark.parametrize(
    ("candidate", "copy"),
    [
        pytest.param(_files(("cuda", 40, 50_000_000, True), ("engine", 30, 20_000_000, True)),
                     True, id="a squash: the same files in one layer"),
        pytest.param(_files(CUDA, LEADER_ENGINE, ("shim", 1, 2_000_000, True)), True,
                     id="re-layered under a tiny new top layer"),
        pytest.param(_files(CUDA, LEADER_ENGINE, ("kernels", 10, 200_000_000, True)), False,
                     id="built on the leader with 2 GB of work of its own"),
        pytest.param(_files(CUDA, ("bob", 30, 20_000_000, True)), False,
                     id="its own engine on the same base"),
        pytest.param(_files(CUDA), False, id="the base alone holds none of the leader's own"),
        pytest.param(_files(CUDA, ("engine", 20, 20_000_000, True)), False,
                     id="two thirds of the leader's files"),
    ],
)  # fmt: skip
def test_file_copy(candidate: FileFingerprint, copy: bool) -> None:
    found = file_copy(candidate, PROTECTED, contained=0.9, tiny_bytes=TINY)
    assert (found is not None) == copy, file_match(candidate, LEADER)
    if found is not None:
        assert (found.reason, found.of) == (ReasonCode.COPY_OF, "alice")
        assert "holds 100% of its own files" in found.detail


def test_small_files_are_sampled_and_weighted() -> None:
    small = _files(("cfg", 10, 1_000, True))  # stands for 10 x 64 files of 1 kB
    match = file_match(_files(("new", 1, 1_000, True)), small)
    assert match is not None
    assert match.contained == 0.0
    assert match.novel_bytes == 64_000


def test_an_exact_copy_of_a_queued_image_is_a_copy_but_a_failed_one_protects_nothing() -> None:
    queued = sub("alice", "a", 100, uid=5)
    copy = sub("bob", "a", 200, uid=2)
    # alice has not been judged yet: bob's exact copy earns nothing either
    assert _found(layer_copy(copy, [], BASE, tiny_bytes=TINY, holders=[queued])) == (
        ReasonCode.COPY_OF,
        "alice",
    )
    # alice failed (she is neither protected nor a holder): bob's verdict is the image's own
    assert layer_copy(copy, [], BASE, tiny_bytes=TINY, holders=[]) is None
    # layers of an unjudged image protect nothing: building on it is not copying a winner
    built = sub("bob", "c", 200, uid=2, layers={"base-cuda", "alice-engine", "bob-tweak"})
    alice = sub("alice", "a", 100, uid=5, layers={"base-cuda", "alice-engine"})
    assert layer_copy(built, [], BASE, tiny_bytes=TINY, holders=[alice]) is None
