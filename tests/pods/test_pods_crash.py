"""A renting process killed mid-way leaves a pod; the next start's sweep removes it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cacheon.pods import LeaseState
from cacheon.store.db import Database
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.pod_env import PodEnv

WORKER = Path(__file__).with_name("rent_worker.py")


def _config(tmp: Path, key_path: Path, fake_lium: FakeLium, fake_targon: FakeTargon) -> Path:
    config = tmp / "validator.toml"
    config.write_text(
        f'[validator]\nstate_dir = "{tmp / "state"}"\n'
        f'[pods]\nproviders = ["targon", "lium"]\nssh_key_path = "{key_path}"\n'
        "ready_timeout_s = 60.0\npoll_interval_s = 0.05\napi_timeout_s = 5.0\n"
        f'targon_base_url = "{fake_targon.base_url}"\ntargon_api_key = "{fake_targon.api_key}"\n'
        f'targon_ssh_gateway = "{fake_targon.gateway}"\n'
        f'lium_base_url = "{fake_lium.base_url}"\nlium_api_key = "{fake_lium.api_key}"\n'
        f'lium_template_id = "{fake_lium.template_id}"\n'
    )
    return config


def _kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker never got a pod created"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_killed_renter_leaves_nothing_after_the_next_start(
    fake_lium: FakeLium, fake_targon: FakeTargon, env: PodEnv
) -> None:
    config = _config(env.tmp, env.key.path, fake_lium, fake_targon)
    fake_targon.faults.stuck = True  # the worker waits on a provisioning Targon workload
    log = env.tmp / "worker.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(config)], stdout=output, stderr=output
        )
        _kill_when(proc, lambda: fake_targon.live_workloads() != [], log)
    [workload] = fake_targon.live_workloads()
    assert proc.returncode == -signal.SIGKILL

    settings = env.settings(targon=fake_targon, lium=fake_lium)

    async def next_start() -> None:
        with Database.open(env.tmp / "state" / "state.db") as db:
            async with env.leases(settings, db) as leases:
                [left] = leases.ledger.live()
                assert left.name == workload["name"]
                report = await leases.start()
                assert [(e.pod_id, e.reason) for e in report.terminated] == [
                    (workload["uid"], "left over from a rent a previous run did not finish")
                ]
                ended = leases.ledger.get(left.name)
                assert ended is not None
                assert ended.state is LeaseState.FAILED
                assert leases.ledger.live() == []

    asyncio.run(next_start())
    assert fake_targon.live_workloads() == []
    assert fake_lium.live_pods() == []
