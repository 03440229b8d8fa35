"""The arena's parameters, as one frozen value the validator builds from its settings.

The rules never read configuration themselves: a pure function of its arguments can be replayed,
simulated and tested with any parameters, and a change of settings is visible at the call site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ArenaParams:
    """Everything the rules depend on; see `ArenaSettings` for the operator-facing meaning."""

    moat: float
    """A challenger must be this much faster (0.01 = 1%) than the leader, or the baseline."""
    alpha: float
    """One-sided probability of crowning a challenger that is not faster by the moat."""
    max_launches: int
    """Launches a challenger may spend against one opponent before it is ruled not faster."""
    sigma_floor: float
    """Hard minimum of the launch-noise bound: below any CUDA-graph engine measured so far."""
    max_challengers_per_round: int
    min_blocks_between_evaluations: int
    """Cooldown between the starts of two evaluations of one hotkey."""
    leader_share: float
    """Emission share of the leader; the runner-up gets the rest."""
    sigma_prior: float = 0.05
    """The launch noise assumed until there are `MIN_PAIRS` baseline pairs to measure it from."""
    sigma_confidence: float = 0.9
    """One-sided confidence of the upper bound on the launch noise that decisions use."""
    copy_tiny_bytes: int = 16_000_000
    """What an image may add to a protected image's layers or files and still be its copy."""
    copy_file_share: float = 0.9
    """Share of a protected image's own file bytes an image must hold to be its copy by files."""

    def __post_init__(self) -> None:
        problems = [
            f"{name} = {value!r}: {rule}"
            for name, value, ok, rule in (
                ("moat", self.moat, 0 <= self.moat < 1, "must be in [0, 1)"),
                ("alpha", self.alpha, 0 < self.alpha < 0.5, "must be in (0, 0.5)"),
                ("max_launches", self.max_launches, self.max_launches >= 1, "must be >= 1"),
                ("sigma_floor", self.sigma_floor, self.sigma_floor > 0, "must be > 0"),
                (
                    "max_challengers_per_round",
                    self.max_challengers_per_round,
                    self.max_challengers_per_round >= 1,
                    "must be >= 1",
                ),
                (
                    "min_blocks_between_evaluations",
                    self.min_blocks_between_evaluations,
                    self.min_blocks_between_evaluations >= 0,
                    "must be >= 0",
                ),
                (
                    "leader_share",
                    self.leader_share,
                    0 < self.leader_share <= 1,
                    "must be in (0, 1]",
                ),
                ("sigma_prior", self.sigma_prior, self.sigma_prior > 0, "must be > 0"),
                (
                    "sigma_confidence",
                    self.sigma_confidence,
                    0.5 <= self.sigma_confidence < 1,
                    "must be in [0.5, 1)",
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def log_moat(self) -> float:
        """The bar in log-ratio space: a crown needs a lower bound above log(1 + moat)."""
        return math.log1p(self.moat)
