"""`cacheon-validator keys init` and `pods list|sweep|terminate` against the fake providers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cacheon.cli import validator as validator_cli
from cacheon.pods import LeaseState
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.pod_env import PodEnv


def test_keys_init_creates_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    key = tmp_path / "keys" / "pod"
    config.write_text(f'[pods]\nssh_key_path = "{key}"\n')
    assert validator_cli.main(["keys", "init", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert "(created)" in first
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert validator_cli.main(["keys", "init", "--config", str(config)]) == 0
    second = capsys.readouterr().out
    assert "(exists, kept)" in second
    assert (
        first.splitlines()[-1]
        == second.splitlines()[-1]
        == key.with_suffix(".pub").read_text().strip()
    )


def _config(tmp: Path, fake_lium: FakeLium, fake_targon: FakeTargon, key: Path) -> Path:
    config = tmp / "validator.toml"
    config.write_text(
        f'[validator]\nstate_dir = "{tmp / "state"}"\n'
        f'[pods]\nproviders = ["targon", "lium"]\nssh_key_path = "{key}"\n'
        "ready_timeout_s = 10.0\npoll_interval_s = 0.05\n"
        f'targon_base_url = "{fake_targon.base_url}"\ntargon_api_key = "{fake_targon.api_key}"\n'
        f'targon_ssh_gateway = "{fake_targon.gateway}"\n'
        f'lium_base_url = "{fake_lium.base_url}"\nlium_api_key = "{fake_lium.api_key}"\n'
        f'lium_template_id = "{fake_lium.template_id}"\n'
    )
    return config


def test_pods_list_sweep_and_terminate(
    fake_lium: FakeLium, fake_targon: FakeTargon, capsys: pytest.CaptureFixture[str], env: PodEnv
) -> None:
    config = _config(env.tmp, fake_lium, fake_targon, env.key.path)
    settings = env.settings(targon=fake_targon, lium=fake_lium)
    state = env.tmp / "state" / "state.db"

    async def rent_two() -> tuple[str, str, str]:
        with Database.open(state) as db:
            async with env.leases(settings, db) as leases:
                lease = await leases.acquire(expected_hours=1)
                lium = leases._providers["lium"]
                [offer] = [o for o in await lium.offers("H200", 8, 100) if o.price_per_hour > 17]
                orphan = await lium.create(
                    offer, f"{leases.prefix}orphan01", env.key.public_line, 1
                )
                assert lease.pod_id is not None
                return lease.name, lease.pod_id, orphan.pod_id

    name, pod_id, orphan_id = asyncio.run(rent_two())
    assert validator_cli.main(["pods", "list", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "targon" in table
    assert "ready" in table
    assert "orphan" in table
    assert validator_cli.main(["pods", "sweep", "--config", str(config)]) == 0
    swept = capsys.readouterr().out
    assert f"terminated lium {orphan_id}: orphan: not in the lease ledger" in swept
    assert validator_cli.main(["pods", "terminate", pod_id, "--config", str(config)]) == 0
    assert f"terminated {pod_id} (lease {name})" in capsys.readouterr().out
    assert validator_cli.main(["pods", "terminate", "nope", "--config", str(config)]) == 1
    assert "no pod nope of ours" in capsys.readouterr().err
    assert fake_targon.live_workloads() == []
    assert fake_lium.live_pods() == []
    with Database.open(state) as db:
        rows = db.query("SELECT state FROM pod_leases WHERE name = ?", (name,))
        assert rows[0]["state"] == LeaseState.RELEASED


def test_pods_commands_refuse_a_missing_api_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[validator]\nstate_dir = "{tmp_path}"\n[pods]\nproviders = ["targon"]\n')
    assert validator_cli.main(["pods", "list", "--config", str(config)]) == 2
    assert "CACHEON_PODS__TARGON_API_KEY" in capsys.readouterr().err
