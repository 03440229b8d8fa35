"""Renting GPU pods: Targon, Lium and the operator's own machines, behind one lease ledger.

The validator daemon builds the providers (`build_providers`), loads its key (`load_key`) and
drives everything through `PodLeases`.
"""

from __future__ import annotations

from cacheon.pods.base import (
    AnswerLost,
    BudgetExceeded,
    MalformedAnswer,
    NoPodAvailable,
    NotFound,
    Offer,
    Pod,
    PodError,
    PodFailed,
    PodState,
    PodTimeout,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    SshRefused,
)
from cacheon.pods.keys import PodKey, PodKeyError, init_key, load_key
from cacheon.pods.leases import LeasePolicy, PodLeases
from cacheon.pods.ledger import Lease, LeaseState
from cacheon.pods.providers import PodConfigError, build_providers
from cacheon.pods.ssh_probe import probe_ssh
from cacheon.pods.sweep import SweepReport
from cacheon.sshtarget import SshTarget

__all__ = [
    "AnswerLost",
    "BudgetExceeded",
    "Lease",
    "LeasePolicy",
    "LeaseState",
    "MalformedAnswer",
    "NoPodAvailable",
    "NotFound",
    "Offer",
    "Pod",
    "PodConfigError",
    "PodError",
    "PodFailed",
    "PodKey",
    "PodKeyError",
    "PodLeases",
    "PodState",
    "PodTimeout",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderUnavailable",
    "SshRefused",
    "SshTarget",
    "SweepReport",
    "build_providers",
    "init_key",
    "load_key",
    "probe_ssh",
]
