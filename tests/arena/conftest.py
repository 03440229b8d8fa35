"""Fixtures of the arena tests: the default parameters, as the validator builds them."""

from __future__ import annotations

import pytest

from cacheon.arena import ArenaParams


@pytest.fixture
def params() -> ArenaParams:
    return ArenaParams(
        moat=0.01,
        alpha=0.01,
        max_launches=8,
        sigma_floor=0.02,
        max_challengers_per_round=4,
        min_blocks_between_evaluations=7200,
        leader_share=0.8,
    )
