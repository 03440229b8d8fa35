"""Who is paid: the standings as a weight vector over uids (DESIGN.md §4.7).

Winner-take-most: the leader gets its share and the runner-up the rest; without a runner-up the
leader takes everything, and without a leader everything is burnt to the subnet owner's uid. A
validator that sets no weights when nobody leads stops counting, so the vector is never empty.
Padding and u16 quantisation for the chain belong to the chain layer.
"""

from __future__ import annotations

from collections.abc import Mapping

from cacheon.arena.standings import Holder, Standings
from cacheon.protocol import Hotkey, Uid

FALLBACK_BURN_UID = Uid(0)
"""Burn target when the subnet owner's hotkey holds no uid."""


def burn_uid(metagraph: Mapping[Hotkey, Uid], owner: Hotkey | None) -> Uid:
    """The uid of the subnet owner's hotkey, or uid 0 when it has none."""
    if owner is None:
        return FALLBACK_BURN_UID
    return metagraph.get(owner, FALLBACK_BURN_UID)


def weights(
    standings: Standings,
    metagraph: Mapping[Hotkey, Uid],
    owner: Hotkey | None,
    leader_share: float,
) -> dict[Uid, float]:
    """Weights by uid, summing to 1, ordered by uid.

    Uids are resolved from the current `metagraph` (hotkey -> uid), so a uid that changed hands
    is never paid for its previous holder. A leader whose hotkey is no longer registered pays
    nobody: the standings should already have dethroned it, and burning is the safe reading.
    """
    leader = _uid(standings.leader, metagraph)
    runner_up = _uid(standings.runner_up, metagraph)
    shares: dict[Uid, float] = {}
    if leader is None:
        shares[burn_uid(metagraph, owner)] = 1.0
    elif runner_up is None or runner_up == leader:
        shares[leader] = 1.0
    else:
        shares[leader] = leader_share
        shares[runner_up] = 1.0 - leader_share
    return {uid: share for uid, share in sorted(shares.items()) if share > 0}


def _uid(holder: Holder | None, metagraph: Mapping[Hotkey, Uid]) -> Uid | None:
    return None if holder is None else metagraph.get(holder.hotkey)
