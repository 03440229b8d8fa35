"""The daemon's own cost: idle RSS and CPU on the devnet, and orchestration overhead per round.

    python bench/daemon_bench.py [--idle-seconds 120] [--poll-interval 12]

Idle: `cacheon-validator run` as operators run it (a subprocess), polling a devnet with no
commitments; RSS and CPU are sampled from /proc. Targets: RSS <= 150 MiB, CPU < 1% of a core.
Round: one full round on the local arena (fake Lium pod = this machine's sshd + dockerd); the
overhead is the round's wall time minus the time the agent spent in launches (pod rent,
bootstrap, pulls, report handoff, scoring). Needs root (it starts dockerd), like the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from cacheon.protocol import RoundReport
from cacheon.store.db import Database
from cacheon.testing.local_arena import LocalArena, Services, start_services
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon

RSS_TARGET_MIB = 150
CPU_TARGET = 0.01
TICKS = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds) of one process."""
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / TICKS


def idle(services: Services, root: Path, seconds: float, poll_s: float) -> None:
    arena = LocalArena.create(root / "idle", services, miners=())
    try:
        config = arena.write_config(
            root / "idle.toml", validator={"poll_interval_s": poll_s}, log={"level": "warning"}
        )
        env = {**os.environ, **arena.secrets_env()}
        argv = [sys.executable, "-m", "cacheon.cli.validator", "run", "--config", str(config)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(15)  # start-up: imports, first poll, first weights
            rss0, cpu0 = _proc(proc.pid)
            started = time.monotonic()
            peak = rss0
            while time.monotonic() - started < seconds:
                time.sleep(5)
                rss, _ = _proc(proc.pid)
                peak = max(peak, rss)
            rss, cpu = _proc(proc.pid)
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    finally:
        arena.close()
    share = (cpu - cpu0) / elapsed
    print(f"idle daemon over {elapsed:.0f}s, polling every {poll_s:g}s on the devnet")
    print(f"{'':24}{'measured':>12}{'target':>12}")
    print(f"{'RSS after start (MiB)':24}{rss0:12.1f}{RSS_TARGET_MIB:12}")
    print(f"{'RSS peak (MiB)':24}{peak:12.1f}{RSS_TARGET_MIB:12}")
    print(f"{'CPU (share of a core)':24}{share:12.4f}{CPU_TARGET:12}")


def round_overhead(services: Services, root: Path) -> None:
    arena = LocalArena.create(root / "round", services)
    try:
        arena.commit("fast", "second", "slow", "cheat")
        settings = arena.settings(log={"level": "warning"})
        db = Database.open(state_path(settings))
        try:
            daemon = Daemon(settings, build_parts(settings, db))

            async def one_round() -> float:
                await daemon.parts.leases.start()
                started = time.monotonic()
                await daemon.one_pass()
                elapsed = time.monotonic() - started
                await daemon.parts.leases.close()
                await daemon.parts.chain.close()
                return elapsed

            total = asyncio.run(one_round())
            record = daemon.state.rounds(limit=1)[0]
        finally:
            db.close()
    finally:
        arena.close()
    if record.report is None:
        print(f"round did not score: {record.reason} {record.detail}")
        return
    report = RoundReport.model_validate_json(record.report)
    launches = sum(launch.ended_ns - launch.started_ns for launch in report.launches) / 1e9
    print(f"\none round, {len(report.launches)} launches, fake provider, pod = this machine")
    print(f"{'poll + round + score + publish + weights':44}{total:8.1f} s")
    print(f"{'in agent launches (pull, start, measure)':44}{launches:8.1f} s")
    print(f"{'orchestration overhead':44}{total - launches:8.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--poll-interval", type=float, default=12.0)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cacheon-bench-") as tmp:
        services = start_services(stack)
        root = Path(tmp)
        idle(services, root, args.idle_seconds, args.poll_interval)
        round_overhead(services, root)


if __name__ == "__main__":
    main()
