"""The daily pod budget: price x time, per UTC day, pure arithmetic over the ledger's leases.

A lease costs from the moment it was recorded (before the rent call: conservative, since some
providers bill from the rent) until it ended, or until now while it lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from cacheon.pods.base import BudgetExceeded, Offer
from cacheon.pods.ledger import Lease

SECONDS_PER_HOUR = 3600.0


def day_start(now: float) -> float:
    """The start of the UTC day that contains `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def spend(leases: Iterable[Lease], start: float, end: float) -> float:
    """Dollars the leases cost between `start` and `end`."""
    total = 0.0
    for lease in leases:
        begin = max(lease.created_at, start)
        finish = min(lease.ended_at if lease.ended_at is not None else end, end)
        if finish > begin:
            total += lease.price_per_hour * (finish - begin) / SECONDS_PER_HOUR
    return total


def check(offer: Offer, expected_hours: float, spent_today: float, daily_budget: float) -> None:
    """Raise BudgetExceeded when renting `offer` for `expected_hours` would pass the budget."""
    projected = spent_today + offer.price_per_hour * expected_hours
    if projected > daily_budget:
        raise BudgetExceeded(
            f"renting on {offer.provider} at ${offer.price_per_hour:.2f}/h for ~{expected_hours:g}h "
            f"would bring today's pod spend to ${projected:.2f} (spent ${spent_today:.2f}), over "
            f"pods.daily_budget_usd = ${daily_budget:.2f}; wait for the next UTC day or raise it"
        )
