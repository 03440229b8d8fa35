"""What can go wrong when Cacheon talks to the chain, as a tree callers can catch by meaning.

    ChainFailure
    ├── ChainUnavailable      the chain could not be reached or did not answer within the deadline
    └── ChainRejected         the chain (or the SDK's preflight of the chain's rules) said no
        ├── NotRegistered     the hotkey has no uid on the netuid
        ├── QuotaExceeded     the hotkey's commitment bytes for this tempo are used up
        └── RateLimited       weights were set too recently; `retry_in_blocks` says when

Every message is one line a person can act on; none carries key material.
"""

from __future__ import annotations


class ChainFailure(Exception):
    """Base of every chain-layer failure."""


class ChainUnavailable(ChainFailure):
    """No answer from any endpoint within the deadline; nothing is known to have changed."""


class ChainRejected(ChainFailure):
    """The chain refused a call; `name` is the pallet's error name when it gave one."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class NotRegistered(ChainRejected):
    pass


class QuotaExceeded(ChainRejected):
    pass


class RateLimited(ChainRejected):
    def __init__(self, message: str, retry_in_blocks: int | None = None) -> None:
        super().__init__(message, "SettingWeightsTooFast")
        self.retry_in_blocks = retry_in_blocks
