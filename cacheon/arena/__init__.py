"""The rules of the arena: who competes, who wins, who is paid (DESIGN.md §3, §4.3, §4.5-§4.7).

Pure functions over frozen values: no I/O, no clock, no configuration, no randomness except the
seeded generator the simulator is given. The validator feeds them what it read and persists what
they return; the same code runs in the simulator, so the rules are measured as they are used.
"""

from cacheon.arena.attribution import FAILURES, UNEVALUABLE_LIMIT, Charged, Fault, attribute, charge
from cacheon.arena.emission import burn_uid, weights
from cacheon.arena.measure import (
    DRIFT_SIGMAS,
    Entry,
    Evidence,
    Roster,
    RoundEvidence,
    RoundVoid,
    TimedSpeed,
    behavioural_copies,
    compare,
    launch_speeds,
    measure_round,
)
from cacheon.arena.params import ArenaParams
from cacheon.arena.standings import (
    Change,
    ChangeKind,
    Contender,
    Crown,
    Holder,
    Loss,
    Standings,
    Transition,
    advance,
)
from cacheon.arena.submissions import (
    Copy,
    Deferral,
    Judged,
    Queued,
    Selection,
    Submission,
    find_copy,
    first_seen,
    is_terminal,
    replay,
    select_challengers,
)
from cacheon.arena.verdict import (
    Bounds,
    Call,
    Decision,
    alpha_spent,
    bounds,
    decide,
    pooled_sigma,
)

__all__ = [
    "DRIFT_SIGMAS",
    "FAILURES",
    "UNEVALUABLE_LIMIT",
    "ArenaParams",
    "Bounds",
    "Call",
    "Change",
    "ChangeKind",
    "Charged",
    "Contender",
    "Copy",
    "Crown",
    "Decision",
    "Deferral",
    "Entry",
    "Evidence",
    "Fault",
    "Holder",
    "Judged",
    "Loss",
    "Queued",
    "Roster",
    "RoundEvidence",
    "RoundVoid",
    "Selection",
    "Standings",
    "Submission",
    "TimedSpeed",
    "Transition",
    "advance",
    "alpha_spent",
    "attribute",
    "behavioural_copies",
    "bounds",
    "burn_uid",
    "charge",
    "compare",
    "decide",
    "find_copy",
    "first_seen",
    "is_terminal",
    "launch_speeds",
    "measure_round",
    "pooled_sigma",
    "replay",
    "select_challengers",
    "weights",
]
