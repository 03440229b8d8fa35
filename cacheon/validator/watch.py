"""What a person watching a round sees: the daemon's steps and the agent's progress, as they happen.

The daemon itself only logs; a watcher (the demo's live view) is optional, given in the daemon's
`Parts`. It is called from the event loop and must neither block nor raise: what it shows never
changes what the round does.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from cacheon.protocol import ProgressEvent


class Step(StrEnum):
    """The steps of a round, in the order they happen (DESIGN.md §3). The first four are
    reported as they begin; SCORE and WEIGHTS (the loop's, not only the round's: weights are set
    whenever due) once they are done, with what came of them."""

    RENT = "rent"
    INSTALL = "install"
    PROVISION = "provision"
    LAUNCHES = "launches"
    SCORE = "score"
    WEIGHTS = "weights"


class RoundWatcher(Protocol):
    def step(self, step: Step, detail: str, round_id: str | None = None) -> None:
        """Round `round_id` is at `step`, doing `detail`; called again for the same step, it
        says what came of it (the pod rented). None: the loop's own step (weights). Several
        rounds may be in flight at once, each on its pod."""

    def progress(self, event: ProgressEvent, round_id: str | None = None) -> None:
        """One progress line of round `round_id`'s agent (model fetch, launches, upload)."""
