"""`cacheon-miner` in its own process, as a miner runs it, and the verdict line it prints.

Shared by the chain tests (commit, status) and the miner tests (check): one way to start the
CLI, so both see the same environment and a wide terminal that keeps each line whole.
"""

from __future__ import annotations

import os
import subprocess
import sys

TIMEOUT_S = 300.0
"""Long enough for a `check` that builds and measures a toy image on a loaded machine."""


def run_miner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `python -m cacheon.cli.miner ARGS` to completion; a non-zero exit is not an error."""
    return subprocess.run(
        [sys.executable, "-m", "cacheon.cli.miner", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def verdict_of(stdout: str) -> tuple[str, str]:
    """(outcome, reason) from the check's `verdict: <OUTCOME> <reason>` line."""
    line = next(line for line in stdout.splitlines() if line.startswith("verdict: "))
    outcome, _, reason = line.removeprefix("verdict: ").partition(" ")
    return outcome, reason.strip()
