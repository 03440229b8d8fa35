"""Representative cases of the fault-injection matrix, run as tests (the whole matrix is
`bench/reliability.py`): each must end as the matrix requires -- the right outcome, nothing
lost, no pod leaked, no wrong verdict, a round concluded after the fault.

The same runs check what a compromised pod or a log reader could learn: nothing the daemon logged
and nothing the agent left on the pod (job file, logs, progress) holds the S3 secret, the
provider's API key, the wallet's keys or a round's HMAC key.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import structlog

from cacheon.testing.local_arena import LocalArena, Services
from cacheon.testing.reliability.cases import CASES
from cacheon.testing.reliability.trial import run_case

FAST_CASES = ("lost create answer", "SSH drop: run")


def _secrets(root: Path, arena: LocalArena) -> list[str]:
    found = [arena.services.s3.secret_key, arena.lium.api_key]
    hotkey = json.loads((root / "wallets" / "validator" / "hotkeys" / "hk").read_text())
    found += [hotkey[k] for k in ("secretSeed", "privateKey", "secretPhrase") if hotkey.get(k)]
    conn = sqlite3.connect(root / "state" / "state.db")
    try:
        found += [bytes(row[0]).hex() for row in conn.execute("SELECT hmac_key FROM round_keys")]
    finally:
        conn.close()
    return found


@pytest.mark.parametrize("name", FAST_CASES)
def test_fault_case_ends_as_the_matrix_requires(
    name: str, tmp_path: Path, services: Services
) -> None:
    case = next(c for c in CASES if c.name == name)
    arenas: list[LocalArena] = []
    real_create = LocalArena.create

    def remembered(*args: object, **kwargs: object) -> LocalArena:
        arena = real_create(*args, **kwargs)  # type: ignore[arg-type]
        arenas.append(arena)
        return arena

    with pytest.MonkeyPatch.context() as patch, structlog.testing.capture_logs() as logs:
        patch.setattr(LocalArena, "create", remembered)
        row = run_case(case, services, tmp_path)
    assert row.ok, row
    assert (row.data_lost, row.pods_leaked, row.wrong_verdicts) == (0, 0, 0)
    assert row.recovery_s is not None

    secrets = _secrets(tmp_path, arenas[0])
    logged = repr(logs)
    left_on_pod = "".join(
        p.read_text(errors="replace")
        for p in (tmp_path / "pod-agent" / "jobs").rglob("*")
        if p.is_file() and p.stat().st_size < 1 << 20
    )
    assert left_on_pod
    for secret in secrets:
        assert secret not in logged
        assert secret not in left_on_pod
