"""Who competes: first-seen precedence, copies, replayed verdicts and the per-round queue.

Everything here runs at poll time on what the chain and the registry say (DESIGN.md §3 step 1-2,
§4.6), before any GPU money is spent: copies are the most common failure in this kind of contest,
and a verdict already reached under the same evaluation version is never paid for twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from cacheon.arena.params import ArenaParams
from cacheon.protocol import Block, Digest, Hotkey, Outcome, ReasonCode, Uid


@dataclass(frozen=True)
class Submission:
    """One digest as held by one hotkey."""

    hotkey: Hotkey
    uid: Uid
    """The uid when first seen; it breaks ties between holders seen in the same block."""
    digest: Digest
    first_seen: Block
    layers: frozenset[str] | None = None
    """The image's layer diff ids from the registry; None until the manifest has been read."""
    layer_sizes: tuple[tuple[str, int], ...] = ()
    """(diff id, compressed bytes) of the layers whose size the registry gave."""

    @property
    def precedence(self) -> tuple[int, int, str]:
        """Sort key: earlier first-seen wins, then the lower uid (DESIGN.md §3 step 1)."""
        return (self.first_seen, self.uid, self.hotkey)


def first_seen(chain_block: Block, recorded: Block | None) -> Block:
    """A digest's first-seen block: our own record or the chain's commitment, whichever is older.

    Our record can be older when the holder re-committed since; the chain's can be older when we
    were offline when it appeared.
    """
    return chain_block if recorded is None else min(chain_block, recorded)


@dataclass(frozen=True)
class Judged:
    """A verdict reached for a digest under one evaluation version (DESIGN.md §3 step 2)."""

    digest: Digest
    evaluation_version: str
    outcome: Outcome
    reason: ReasonCode | None


_HOLDER_SPECIFIC = frozenset({ReasonCode.COPY_OF, ReasonCode.COPY_OF_REFERENCE})
_DECIDED_SPEED = frozenset({ReasonCode.CROWNED, ReasonCode.NOT_FASTER})


def is_terminal(outcome: Outcome, reason: ReasonCode | None) -> bool:
    """A FAIL, or a PASS whose speed has been decided; pending and NO_DECISION are retried."""
    if outcome is Outcome.FAIL:
        return True
    return outcome is Outcome.PASS and reason in _DECIDED_SPEED


def replay(digest: Digest, evaluation_version: str, judged: Iterable[Judged]) -> Judged | None:
    """The terminal verdict to reuse for `digest` instead of running it again, if there is one.

    Copy verdicts are not replayed: they depend on who holds the digest, not on the image, and
    are recomputed at no cost. Should both a FAIL and a PASS exist, the FAIL is reused.
    """
    usable = sorted(
        (
            verdict
            for verdict in judged
            if verdict.digest == digest
            and verdict.evaluation_version == evaluation_version
            and verdict.reason not in _HOLDER_SPECIFIC
            and is_terminal(verdict.outcome, verdict.reason)
        ),
        key=lambda verdict: (verdict.outcome, verdict.reason or ""),
    )
    return usable[0] if usable else None


@dataclass(frozen=True)
class Queued:
    """An eligible, undecided submission waiting for launches."""

    submission: Submission
    launches: int
    """Launches already spent against the current opponent."""
    pending: bool = False
    """Its evaluation is in progress (launches spent, or a crown that was not installed): it
    continues without waiting for the cooldown."""


class Deferral(StrEnum):
    """Why a queued submission gets no launch this round."""

    COOLDOWN = "cooldown"  # its hotkey started an evaluation too recently
    CAPACITY = "capacity"  # the round is full
    BUDGET = "budget"  # the daily budget cannot pay for another launch


@dataclass(frozen=True)
class Selection:
    chosen: tuple[Submission, ...]
    """This round's challengers, in first-seen order."""
    deferred: tuple[tuple[Submission, Deferral], ...]


def select_challengers(
    queue: Iterable[Queued],
    last_started: Mapping[Hotkey, Block],
    now: Block,
    affordable_launches: int,
    params: ArenaParams,
) -> Selection:
    """Pick this round's challengers in first-seen order.

    `queue` holds the current commitment of each hotkey, so a re-commit has replaced its pending
    digest (and its evidence) and takes the place its own first-seen block gives it. A new evaluation
    starts at most once per `min_blocks_between_evaluations` per hotkey (`last_started`), while
    one already in progress continues, so a pending challenger's evidence is not left to go
    stale. `affordable_launches` is how many challenger launches the remaining daily budget pays
    for, as projected by the caller.
    """
    entries = sorted(queue, key=lambda entry: entry.submission.precedence)
    hotkeys = [entry.submission.hotkey for entry in entries]
    if len(set(hotkeys)) != len(hotkeys):
        raise ValueError("the queue holds one submission per hotkey: its current commitment")
    room = min(params.max_challengers_per_round, affordable_launches)
    chosen: list[Submission] = []
    deferred: list[tuple[Submission, Deferral]] = []
    places = 0  # places in the round taken, or that only the budget kept from being taken
    for entry in entries:
        submission = entry.submission
        started = last_started.get(submission.hotkey)
        if (
            entry.launches == 0
            and not entry.pending
            and started is not None
            and now - started < params.min_blocks_between_evaluations
        ):
            deferred.append((submission, Deferral.COOLDOWN))
            continue
        if places < room:
            chosen.append(submission)
        elif places < params.max_challengers_per_round:
            deferred.append((submission, Deferral.BUDGET))
        else:
            deferred.append((submission, Deferral.CAPACITY))
        places += 1
    return Selection(tuple(chosen), tuple(deferred))


def worth_a_round(waiting: int, places: int, *, in_flight: int) -> bool:
    """Whether a free pod should start a round for `waiting` challengers now.

    A round pays its bookends (B, L, L', B') whatever it measures, so while other rounds are in
    flight (and will free pods and challengers soon) one starts only if it fills at least half
    its `places`; with nothing in flight, anyone waiting gets a round.
    """
    if waiting <= 0:
        return False
    return in_flight == 0 or 2 * waiting >= places
