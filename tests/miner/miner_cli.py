"""`cacheon-miner` in its own process, as a miner runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cacheon.testing.local_arena import MODEL_FILES


def miner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cacheon.cli.miner", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def verdict_of(stdout: str) -> tuple[str, str]:
    """(outcome, reason) from the check's `verdict: <OUTCOME> <reason>` line."""
    line = next(line for line in stdout.splitlines() if line.startswith("verdict: "))
    outcome, _, reason = line.removeprefix("verdict: ").partition(" ")
    return outcome, reason.strip()


def model_dir(root: Path) -> Path:
    """The toy model's files, as the pod has them and a miner would."""
    path = root / "model"
    path.mkdir()
    for name, data in MODEL_FILES.items():
        (path / name).write_bytes(data)
    return path
