"""What every GPU pod provider offers the validator, and the errors a rent can end in.

A provider is a thin adapter over one rental API (or the operator's own machines): it lists
offers, creates a pod under a name we choose, reports the pod's state, terminates it, and lists
the pods whose names carry our prefix so that nothing we rented can hide from the orphan sweep.
Waiting for SSH, the ledger, the budget and the fallback between providers are shared code
(`ready.py`, `leases.py`), so each adapter stays a handful of REST calls.

Errors, all under `PodError`:

    PodError
    ├── ProviderError          an API call failed; the message says which call and why
    │   ├── ProviderAuthError  the API key was rejected (401/403)
    │   ├── ProviderUnavailable  429/5xx/network errors outlasted the retries
    │   ├── NotFound           the API does not know what we asked for (404)
    │   ├── AnswerLost         a non-idempotent call got no answer (it may have happened)
    │   └── MalformedAnswer    the answer did not have the documented shape
    ├── PodFailed              the provider reports the pod failed or gone
    ├── PodTimeout             the pod did not answer SSH within the deadline
    ├── SshRefused             SSH answered but refused us (key, host key)
    ├── BudgetExceeded         a new rent would pass the daily budget
    └── NoPodAvailable         every provider in order was tried and none gave a pod
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from cacheon.sshtarget import SshTarget


class PodState(StrEnum):
    """The provider's view of a pod, reduced to what the validator acts on."""

    PENDING = "pending"
    RUNNING = "running"
    FAILED = "failed"
    GONE = "gone"


@dataclass(frozen=True)
class Offer:
    provider: str
    offer_id: str
    """Targon resource name, Lium executor id, or a static host address."""
    gpu_type: str
    gpu_count: int
    price_per_hour: float


@dataclass(frozen=True)
class Pod:
    provider: str
    pod_id: str
    name: str
    state: PodState
    price_per_hour: float
    ssh: SshTarget | None = None
    """Set once the provider says how to reach the pod."""
    created_at: datetime | None = None


class Provider(Protocol):
    """One rental API. Every method has a deadline and retries only what is safe to retry."""

    @property
    def name(self) -> str: ...

    async def offers(self, gpu_type: str, gpu_count: int, max_price: float) -> list[Offer]:
        """Offers of exactly `gpu_count` GPUs of `gpu_type` at most `max_price` per hour."""
        ...

    async def create(self, offer: Offer, name: str, public_key: str, lifetime_h: float) -> Pod:
        """Rent `offer` as a pod named `name`, reachable with `public_key`; never rents twice."""
        ...

    async def get(self, pod_id: str) -> Pod | None:
        """The pod's current state, or None when the provider no longer knows it."""
        ...

    async def terminate(self, pod_id: str) -> None:
        """Stop billing for the pod; a pod that is already gone is not an error."""
        ...

    async def list_ours(self, prefix: str) -> list[Pod]:
        """Every live pod whose name starts with `prefix`."""
        ...

    async def aclose(self) -> None: ...


class PodError(Exception):
    """Renting or reaching a pod failed; the message says what to do."""


class ProviderError(PodError):
    """An API call failed."""


class ProviderAuthError(ProviderError):
    """The provider rejected our API key."""


class ProviderUnavailable(ProviderError):
    """The provider kept answering 429/5xx, or could not be reached, past the retries."""


class NotFound(ProviderError):
    """The API answered 404 for the thing asked for."""


class AnswerLost(ProviderError):
    """A call that must not be repeated got no answer; whether it took effect is unknown."""


class MalformedAnswer(ProviderError):
    """The provider answered something other than the documented shape."""


class PodFailed(PodError):
    """The provider reports the pod failed, or no longer knows it."""


class PodTimeout(PodError):
    """The pod did not become reachable over SSH within the deadline."""


class SshRefused(PodError):
    """SSH answered but refused us: our key was not accepted, or the host key is not the pinned one."""


class BudgetExceeded(PodError):
    """Renting would take today's pod spend past `pods.daily_budget_usd`."""


class NoPodAvailable(PodError):
    """No provider in the configured order gave a pod; `reasons` holds one line per provider."""

    def __init__(self, reasons: Sequence[str]) -> None:
        super().__init__("no pod available: " + "; ".join(reasons))
        self.reasons = tuple(reasons)
