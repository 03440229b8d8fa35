"""The three entry points answer --help and --version as installed console scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cacheon import __version__


@pytest.mark.parametrize("program", ["cacheon-validator", "cacheon-miner", "cacheon-agent"])
def test_entry_point_help_and_version(program: str) -> None:
    path = Path(sys.executable).parent / program
    assert path.exists(), f"{program} is not installed as a console script beside {sys.executable}"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"{program} {__version__}"
    helptext = subprocess.run([path, "--help"], capture_output=True, text=True, check=True)
    assert helptext.stdout.startswith(f"usage: {program}")
