"""Leader and runner-up over rounds (§4.5) and the weight vector they earn (§4.7)."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheon.arena import (
    Change,
    ChangeKind,
    Contender,
    Crown,
    Holder,
    Loss,
    Standings,
    advance,
    burn_uid,
    weights,
)
from cacheon.protocol import Block, Digest, Hotkey, Uid

BASELINE = Digest("sha256:" + "0" * 64)


def holder(name: str, version: int = 1) -> Holder:
    tag = hashlib.sha256(f"{name}{version}".encode()).hexdigest()
    return Holder(Hotkey(name), Digest("sha256:" + tag))


ALICE, BOB, CAROL, DAVE = (holder(n) for n in ("alice", "bob", "carol", "dave"))
ALICE_V2 = holder("alice", 2)
OWNER = Hotkey("owner")
METAGRAPH = {OWNER: Uid(0), ALICE.hotkey: Uid(3), BOB.hotkey: Uid(7), CAROL.hotkey: Uid(12)}
DAVE_METAGRAPH = {**METAGRAPH, DAVE.hotkey: Uid(9)}
REGISTERED = set(DAVE_METAGRAPH)


def contender(
    who: Holder,
    lower: float | None,
    passing: bool = True,
    first_seen: int = 100,
    behaves_like: frozenset[Digest] = frozenset(),
) -> Contender:
    return Contender(who, Block(first_seen), passing, lower, behaves_like)


FIELD = (
    contender(ALICE, 0.10, first_seen=10),
    contender(BOB, 0.05, first_seen=20),
    contender(CAROL, 0.02, first_seen=30),
)


def test_no_incumbent_a_crown_over_the_baseline_leads() -> None:
    crowns = [Crown(BOB, BASELINE, 0.04, 0.04)]
    moved = advance(Standings(), FIELD, crowns, REGISTERED, BASELINE)
    assert moved.standings == Standings(BOB, ALICE)
    assert moved.changes == (Change(ChangeKind.CROWNED, BOB),)
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {
        Uid(3): pytest.approx(0.2),
        Uid(7): 0.8,
    }


def test_no_incumbent_and_no_crown_burns() -> None:
    moved = advance(Standings(), FIELD, [], REGISTERED, BASELINE)
    assert moved.standings == Standings()
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {Uid(0): 1.0}
    assert weights(moved.standings, {ALICE.hotkey: Uid(3)}, OWNER, 0.8) == {Uid(0): 1.0}
    assert weights(moved.standings, METAGRAPH, None, 0.8) == {Uid(0): 1.0}
    assert burn_uid({OWNER: Uid(44)}, OWNER) == Uid(44)


def test_the_leader_defends() -> None:
    moved = advance(Standings(ALICE, BOB), FIELD, [], REGISTERED, BASELINE)
    assert moved.standings == Standings(ALICE, BOB)
    assert moved.changes == ()
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {
        Uid(3): 0.8,
        Uid(7): pytest.approx(0.2),
    }


def test_dethroned_by_the_fastest_crown_of_the_round() -> None:
    crowns = [Crown(BOB, ALICE.digest, 0.02, 0.02), Crown(CAROL, ALICE.digest, 0.03, 0.03)]
    moved = advance(Standings(ALICE, BOB), FIELD, crowns, REGISTERED, BASELINE)
    # the old leader is the best of the rest against the baseline
    assert moved.standings == Standings(CAROL, ALICE)
    assert moved.changes == (Change(ChangeKind.CROWNED, CAROL),)


def test_a_crown_over_a_stale_opponent_does_not_count() -> None:
    crowns = [Crown(CAROL, BOB.digest, 0.5, 0.5), Crown(BOB, BASELINE, 0.5, 0.5)]
    assert advance(Standings(ALICE, BOB), FIELD, crowns, REGISTERED, BASELINE).standings == (
        Standings(ALICE, BOB)
    )


def test_leader_deregisters_and_the_runner_up_is_promoted() -> None:
    registered = REGISTERED - {ALICE.hotkey}
    metagraph = {k: v for k, v in METAGRAPH.items() if k != ALICE.hotkey}
    moved = advance(Standings(ALICE, BOB), FIELD, [], registered, BASELINE)
    assert moved.standings == Standings(BOB, CAROL)
    assert moved.changes == (
        Change(ChangeKind.DETHRONED, ALICE, Loss.DEREGISTERED),
        Change(ChangeKind.PROMOTED, BOB),
    )
    assert weights(moved.standings, metagraph, OWNER, 0.8) == {
        Uid(7): 0.8,
        Uid(12): pytest.approx(0.2),
    }


def test_leader_fails_correctness_and_the_runner_up_is_promoted() -> None:
    field = (contender(ALICE, 0.10, passing=False), *FIELD[1:])
    crowns = [Crown(CAROL, ALICE.digest, 0.2, 0.2)]  # beating a failing server proves nothing
    moved = advance(Standings(ALICE, BOB), field, crowns, REGISTERED, BASELINE)
    assert moved.standings == Standings(BOB, CAROL)
    assert moved.changes == (
        Change(ChangeKind.DETHRONED, ALICE, Loss.FAILED),
        Change(ChangeKind.PROMOTED, BOB),
    )


def test_leader_and_runner_up_both_gone_burns() -> None:
    field = (contender(ALICE, 0.10, passing=False), contender(BOB, 0.05, passing=False))
    moved = advance(Standings(ALICE, BOB), field, [], REGISTERED, BASELINE)
    assert moved.standings == Standings()
    assert moved.changes == (Change(ChangeKind.DETHRONED, ALICE, Loss.FAILED),)
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {Uid(0): 1.0}


def test_a_copy_of_the_leader_is_never_runner_up() -> None:
    field = (
        *FIELD,
        contender(DAVE, 0.09, first_seen=50, behaves_like=frozenset({ALICE.digest})),
    )
    moved = advance(Standings(ALICE, BOB), field, [], REGISTERED, BASELINE)
    assert moved.standings == Standings(ALICE, BOB)
    # against another leader the flag no longer applies
    crowned = advance(
        Standings(ALICE, BOB), field, [Crown(CAROL, ALICE.digest, 0.1, 0.1)], REGISTERED, BASELINE
    )
    assert crowned.standings == Standings(CAROL, ALICE)
    gone = advance(Standings(ALICE, BOB), field, [], REGISTERED - {ALICE.hotkey}, BASELINE)
    assert gone.standings == Standings(BOB, DAVE)
    assert weights(gone.standings, DAVE_METAGRAPH, OWNER, 0.8) == {
        Uid(7): 0.8,
        Uid(9): pytest.approx(0.2),
    }


def test_runner_up_needs_a_positive_lower_bound_against_the_baseline() -> None:
    field = (contender(ALICE, 0.10), contender(BOB, 0.0), contender(CAROL, None))
    moved = advance(Standings(ALICE, BOB), field, [], REGISTERED, BASELINE)
    assert moved.standings == Standings(ALICE, None)
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {Uid(3): 1.0}


def test_a_leaders_new_digest_is_a_challenger_like_any_other() -> None:
    field = (*FIELD, contender(ALICE_V2, 0.2, first_seen=90))
    # pending: the old digest keeps the lead, and the hotkey takes one place only
    assert advance(Standings(ALICE, BOB), field, [], REGISTERED, BASELINE).standings == (
        Standings(ALICE, BOB)
    )
    moved = advance(
        Standings(ALICE, BOB),
        field,
        [Crown(ALICE_V2, ALICE.digest, 0.05, 0.05)],
        REGISTERED,
        BASELINE,
    )
    assert moved.standings == Standings(ALICE_V2, BOB)
    assert weights(moved.standings, METAGRAPH, OWNER, 0.8) == {
        Uid(3): 0.8,
        Uid(7): pytest.approx(0.2),
    }


def test_ties_go_to_the_earlier_submission() -> None:
    field = (contender(BOB, 0.05, first_seen=20), contender(CAROL, 0.05, first_seen=10))
    crowns = [Crown(BOB, BASELINE, 0.03, 0.03), Crown(CAROL, BASELINE, 0.03, 0.03)]
    assert advance(Standings(), field, crowns, REGISTERED, BASELINE).standings == (
        Standings(CAROL, BOB)
    )


def test_a_holder_listed_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        advance(Standings(), [FIELD[0], FIELD[0]], [], REGISTERED, BASELINE)


def test_weights_full_share_and_uid_collision() -> None:
    assert weights(Standings(ALICE, BOB), METAGRAPH, OWNER, 1.0) == {Uid(3): 1.0}
    shared = {ALICE.hotkey: Uid(3), BOB.hotkey: Uid(3)}
    assert weights(Standings(ALICE, BOB), shared, OWNER, 0.8) == {Uid(3): 1.0}


HOLDERS = [holder(f"h{i}") for i in range(6)]
contenders = st.lists(
    st.builds(
        Contender,
        holder=st.sampled_from(HOLDERS),
        first_seen=st.integers(min_value=0, max_value=5).map(Block),
        passing=st.booleans(),
        lower_vs_baseline=st.none() | st.floats(min_value=-0.1, max_value=0.1),
        behaves_like=st.frozensets(st.sampled_from([h.digest for h in HOLDERS]), max_size=2),
    ),
    max_size=6,
    unique_by=lambda c: c.holder,
)
opponents = st.sampled_from([BASELINE, *(h.digest for h in HOLDERS)])
crowns = st.lists(
    st.builds(
        Crown,
        st.sampled_from(HOLDERS),
        opponents,
        st.floats(min_value=0.0, max_value=0.1),
        st.floats(min_value=0.0, max_value=0.1),
    ),
    max_size=4,
)
standings = st.builds(
    Standings, st.none() | st.sampled_from(HOLDERS), st.none() | st.sampled_from(HOLDERS)
)
registered = st.frozensets(st.sampled_from([h.hotkey for h in HOLDERS]))


@given(standings, contenders, crowns, registered, st.randoms(use_true_random=False))
def test_standings_never_depend_on_input_order(
    current: Standings,
    field: list[Contender],
    won: list[Crown],
    hotkeys: frozenset[Hotkey],
    rng: object,
) -> None:
    expected = advance(current, field, won, hotkeys, BASELINE)
    shuffled_field, shuffled_crowns = list(field), list(won)
    rng.shuffle(shuffled_field)  # type: ignore[attr-defined]
    rng.shuffle(shuffled_crowns)  # type: ignore[attr-defined]
    assert advance(current, shuffled_field, shuffled_crowns, hotkeys, BASELINE) == expected
    after = expected.standings
    if after.runner_up is not None:
        assert after.leader is not None
        assert after.runner_up.hotkey != after.leader.hotkey
    for place in (after.leader, after.runner_up):
        if place is not None:
            assert place.hotkey in hotkeys


@given(
    standings,
    st.dictionaries(
        st.sampled_from([h.hotkey for h in HOLDERS] + [OWNER]),
        st.integers(min_value=0, max_value=255).map(Uid),
    ),
    st.none() | st.sampled_from([OWNER, HOLDERS[0].hotkey]),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_weights_sum_to_one_over_valid_uids(
    current: Standings, metagraph: dict[Hotkey, Uid], owner: Hotkey | None, share: float
) -> None:
    vector = weights(current, metagraph, owner, share)
    assert vector
    assert math.isclose(math.fsum(vector.values()), 1.0)
    assert all(value > 0 for value in vector.values())
    assert set(vector) <= {*metagraph.values(), Uid(0)}
    assert list(vector) == sorted(vector)
    reordered = dict(reversed(list(metagraph.items())))
    assert weights(current, reordered, owner, share) == vector
