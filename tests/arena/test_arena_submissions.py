"""Eligibility at poll time: first-seen precedence, replays and the round's queue."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheon.arena import (
    ArenaParams,
    Deferral,
    Judged,
    Queued,
    Submission,
    first_seen,
    is_terminal,
    replay,
    select_challengers,
)
from cacheon.protocol import Block, Digest, Hotkey, Outcome, ReasonCode, Uid


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
    )


@pytest.mark.parametrize(
    ("chain", "recorded", "expected"), [(100, None, 100), (100, 80, 80), (80, 100, 80)]
)
def test_first_seen_is_the_older_of_record_and_chain(
    chain: int, recorded: int | None, expected: int
) -> None:
    assert first_seen(Block(chain), None if recorded is None else Block(recorded)) == expected


V1, V2 = "ev-1", "ev-2"


@pytest.mark.parametrize(
    ("judged", "expected"),
    [
        ([Judged(digest("a"), V1, Outcome.FAIL, ReasonCode.CRASHED)], 0),
        ([Judged(digest("a"), V1, Outcome.PASS, ReasonCode.NOT_FASTER)], 0),
        ([Judged(digest("a"), V1, Outcome.PASS, ReasonCode.CROWNED)], 0),
        ([Judged(digest("a"), V1, Outcome.PASS, ReasonCode.PENDING)], None),
        ([Judged(digest("a"), V1, Outcome.NO_DECISION, ReasonCode.POD_LOST)], None),
        ([Judged(digest("a"), V2, Outcome.FAIL, ReasonCode.CRASHED)], None),
        ([Judged(digest("b"), V1, Outcome.FAIL, ReasonCode.CRASHED)], None),
        ([Judged(digest("a"), V1, Outcome.FAIL, ReasonCode.COPY_OF)], None),
        (
            [
                Judged(digest("a"), V1, Outcome.PASS, ReasonCode.NOT_FASTER),
                Judged(digest("a"), V1, Outcome.FAIL, ReasonCode.GARBAGE),
            ],
            1,
        ),
    ],
)
def test_replay(judged: list[Judged], expected: int | None) -> None:
    found = replay(digest("a"), V1, judged)
    assert found == (None if expected is None else judged[expected])
    assert replay(digest("a"), V1, reversed(judged)) == found


def test_terminal_verdicts() -> None:
    assert is_terminal(Outcome.FAIL, ReasonCode.OOM)
    assert is_terminal(Outcome.PASS, ReasonCode.CROWNED)
    assert not is_terminal(Outcome.PASS, ReasonCode.PENDING)
    assert not is_terminal(Outcome.NO_DECISION, ReasonCode.DRIFT)


NOW = Block(100_000)


def queued(hotkey: str, block: int, launches: int = 0, uid: int = 1) -> Queued:
    return Queued(sub(hotkey, hotkey[0], block, uid=uid), launches)


def names(submissions: tuple[Submission, ...]) -> list[str]:
    return [s.hotkey for s in submissions]


def test_select_in_first_seen_order_up_to_the_cap(params: ArenaParams) -> None:
    queue = [queued(f"h{i}", 1000 - i) for i in range(6)]
    selection = select_challengers(queue, {}, NOW, 100, params)
    assert names(selection.chosen) == ["h5", "h4", "h3", "h2"]
    assert [(s.hotkey, why) for s, why in selection.deferred] == [
        ("h1", Deferral.CAPACITY),
        ("h0", Deferral.CAPACITY),
    ]


@pytest.mark.parametrize(
    ("started_ago", "launches", "chosen"),
    [
        (7199, 0, False),  # a new evaluation waits out the cooldown
        (7200, 0, True),
        (10, 3, True),  # one in progress continues
        (None, 0, True),
    ],
)
def test_cooldown(
    params: ArenaParams, started_ago: int | None, launches: int, chosen: bool
) -> None:
    last = {} if started_ago is None else {Hotkey("alice"): Block(NOW - started_ago)}
    selection = select_challengers([queued("alice", 5, launches)], last, NOW, 100, params)
    assert bool(selection.chosen) is chosen
    if not chosen:
        assert selection.deferred[0][1] is Deferral.COOLDOWN


def test_budget_admits_fewer_than_the_cap(params: ArenaParams) -> None:
    queue = [queued(f"h{i}", 10 + i) for i in range(6)]
    selection = select_challengers(queue, {}, NOW, 2, params)
    assert names(selection.chosen) == ["h0", "h1"]
    assert [why for _, why in selection.deferred] == [
        Deferral.BUDGET,
        Deferral.BUDGET,
        Deferral.CAPACITY,
        Deferral.CAPACITY,
    ]


def test_cooldown_does_not_take_a_place(params: ArenaParams) -> None:
    queue = [queued("early", 1), *(queued(f"h{i}", 10 + i) for i in range(4))]
    selection = select_challengers(queue, {Hotkey("early"): NOW}, NOW, 100, params)
    assert names(selection.chosen) == ["h0", "h1", "h2", "h3"]


def test_one_place_per_hotkey(params: ArenaParams) -> None:
    with pytest.raises(ValueError, match="one submission per hotkey"):
        select_challengers([queued("alice", 1), queued("alice", 2)], {}, NOW, 9, params)


@given(st.permutations(range(7)), st.integers(min_value=0, max_value=7))
def test_select_ignores_queue_order(order: list[int], affordable: int) -> None:
    params = ArenaParams(0.01, 0.01, 8, 0.02, 3, 100, 0.8)
    queue = [queued(f"h{i}", 50 + i % 3, launches=i % 2, uid=i) for i in range(7)]
    last = {Hotkey("h2"): Block(NOW - 5), Hotkey("h3"): Block(NOW - 5)}
    expected = select_challengers(queue, last, NOW, affordable, params)
    shuffled = [queue[i] for i in order]
    assert select_challengers(shuffled, last, NOW, affordable, params) == expected
    assert len(expected.chosen) <= min(3, affordable)


def test_submission_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub("alice", "a", 100).digest = digest("z")  # type: ignore[misc]
