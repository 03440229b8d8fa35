"""Who leads and who follows: a deterministic state machine over the rounds (DESIGN.md §4.5).

The leader changes only for a reason that can be named: a challenger crowned over it, or it
failed, or its hotkey left the subnet (then the runner-up is promoted if it still passes). The
runner-up is recomputed from the whole field every round, so it can never be stale.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from cacheon.protocol import Block, Digest, Hotkey


@dataclass(frozen=True)
class Holder:
    """A place in the standings belongs to a digest as held by a hotkey."""

    hotkey: Hotkey
    digest: Digest


@dataclass(frozen=True)
class Standings:
    leader: Holder | None = None
    runner_up: Holder | None = None
    """Only ever set when there is a leader."""


@dataclass(frozen=True)
class Contender:
    """A submission as the standings see it after a round."""

    holder: Holder
    first_seen: Block
    passing: bool
    """Its latest verdict is a PASS; a FAIL, whatever its speed, scores nothing."""
    lower_vs_baseline: float | None
    """Lower bound of its log speed ratio against the baseline; None until measured."""
    behaves_like: frozenset[Digest] = frozenset()
    """Leader digests it produced bit-identical outputs to (a behavioural copy, §4.6)."""


@dataclass(frozen=True)
class Crown:
    """A challenger whose lower bound cleared the moat this round."""

    holder: Holder
    over: Digest
    """The opponent it beat: the leader's digest, or the baseline's when there was no leader."""
    lower: float
    in_round: float
    """Its mean log-ratio to the opponent over this round's launches alone. Two crowns of one
    round are compared on this: their launches share the round's bookends, while their
    cumulative bounds may come from different numbers of looks."""


class ChangeKind(StrEnum):
    CROWNED = "crowned"
    DETHRONED = "dethroned"
    PROMOTED = "promoted"


class Loss(StrEnum):
    """Why a leader lost the lead without being beaten."""

    DEREGISTERED = "deregistered"
    FAILED = "failed"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    holder: Holder
    loss: Loss | None = None


@dataclass(frozen=True)
class Transition:
    standings: Standings
    changes: tuple[Change, ...]
    """What happened to the lead, in order (a dethroning, then a promotion or a crown)."""
    displaced: tuple[Holder, ...] = ()
    """Challengers that crowned but were not installed: another crown of the round was faster,
    or they may not lead (a flagged copy). CROWNED is terminal only for the one installed; these
    stay pending against whoever leads now."""


def advance(
    current: Standings,
    contenders: Iterable[Contender],
    crowns: Iterable[Crown],
    registered: Collection[Hotkey],
    baseline: Digest,
) -> Transition:
    """The standings after a round.

    `contenders` holds every submission still in the running with its latest verdict (the
    leader's and the runner-up's included); `registered` the hotkeys of the current metagraph.
    Crowns count only over the leader that held at the start of the round (or over `baseline`
    when there was none), and never for a behavioural copy of it; among several, the one fastest
    in this round's direct comparison wins and the others are `displaced`.
    """
    pool: dict[Holder, Contender] = {}
    for contender in contenders:
        if contender.holder in pool:
            raise ValueError(f"{contender.holder} is listed twice")
        pool[contender.holder] = contender

    def standing(holder: Holder) -> bool:
        found = pool.get(holder)
        return holder.hotkey in registered and found is not None and found.passing

    changes: list[Change] = []
    leader = current.leader
    if leader is not None and not standing(leader):
        loss = Loss.DEREGISTERED if leader.hotkey not in registered else Loss.FAILED
        changes.append(Change(ChangeKind.DETHRONED, leader, loss))
        leader = None

    beaten = current.leader.digest if current.leader is not None else baseline
    failed = any(change.loss is Loss.FAILED for change in changes)
    valid = [
        crown
        for crown in crowns
        if crown.over == beaten
        and not failed  # beating a failing server proves nothing
        and standing(crown.holder)
        and beaten not in _flags(pool, crown)
    ]
    installed = None
    if valid:
        # a crown over a leader that deregistered this round still counts: it beat that leader
        best = min(valid, key=lambda crown: (-crown.in_round, *_precedence(pool[crown.holder])))
        installed = leader = best.holder
        changes.append(Change(ChangeKind.CROWNED, leader))
    elif leader is None and current.runner_up is not None and standing(current.runner_up):
        leader = current.runner_up
        changes.append(Change(ChangeKind.PROMOTED, leader))
    displaced = tuple(sorted({crown.holder for crown in crowns} - {installed}, key=_order))
    return Transition(
        Standings(leader, _runner_up(leader, pool.values(), standing)), tuple(changes), displaced
    )


def _order(holder: Holder | None) -> tuple[str, str]:
    return ("", "") if holder is None else (holder.hotkey, holder.digest)


def _flags(pool: dict[Holder, Contender], crown: Crown) -> frozenset[Digest]:
    found = pool.get(crown.holder)
    return frozenset() if found is None else found.behaves_like


def _runner_up(
    leader: Holder | None, pool: Iterable[Contender], standing: Callable[[Holder], bool]
) -> Holder | None:
    if leader is None:
        return None
    ranked = [
        (-contender.lower_vs_baseline, *_precedence(contender), contender.holder)
        for contender in pool
        if contender.lower_vs_baseline is not None
        and contender.lower_vs_baseline > 0
        and contender.holder.hotkey != leader.hotkey
        and leader.digest not in contender.behaves_like
        and standing(contender.holder)
    ]
    return min(ranked)[-1] if ranked else None


def _precedence(contender: Contender) -> tuple[int, str, str]:
    # Ties go to the earlier submission, then a fixed order, so input order never matters.
    return (contender.first_seen, contender.holder.hotkey, contender.holder.digest)
