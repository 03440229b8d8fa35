"""Fixtures of the status server tests: a validator with a season behind it, on a devnet."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.web_season import Season, build_season


@pytest.fixture
def season(tmp_path: Path) -> Iterator[Season]:
    """Built in its own event loop; each test runs the daemon in another (`asyncio.run`)."""
    built = asyncio.run(build_season(tmp_path, port=0))
    try:
        yield built
    finally:
        built.daemon.parts.db.close()
