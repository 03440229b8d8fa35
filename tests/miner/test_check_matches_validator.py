"""Done when (issue 13): `cacheon-miner check` prints the verdict the validator's round gives.

The real daemon runs its first round over a local subnet (devnet, registry, pod sshd, S3) with
three toy miners; then `cacheon-miner check` runs, in its own process on the same dockerd, for
each image with that round's seed, baseline and workload. Both must reach the same outcome and
reason. Then `cacheon-miner status --report-url` reads the report the daemon published.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cacheon.protocol import Outcome, ReasonCode
from cacheon.store.db import Database
from cacheon.testing.local_arena import LocalArena
from cacheon.testing.miner_cli import run_miner, verdict_of
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon
from cacheon.validator.reasons import meaning


def _validator_round(arena: LocalArena) -> tuple[dict[str, tuple[str, str]], str]:
    """Every miner's verdict by name, and the round's seed."""
    settings = arena.settings()
    db = Database.open(state_path(settings))
    try:
        daemon = Daemon(settings, build_parts(settings, db))

        async def one_pass() -> None:
            await daemon.parts.leases.start()
            await daemon.recover()
            await daemon.one_pass()
            await daemon.parts.leases.close()
            await daemon.parts.chain.close()

        asyncio.run(one_pass())
        latest = {}
        for v in reversed(daemon.state.verdicts()):
            latest[arena.name_of(v.hotkey)] = (v.outcome.value, v.reason.value if v.reason else "")
        (played,) = daemon.state.rounds()
        return latest, played.seed
    finally:
        db.close()


@contextmanager
def _serving(body: bytes) -> Iterator[str]:
    """One JSON document over HTTP on loopback, as a validator's bucket serves its report."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cacheon/public/latest.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_check_prints_the_validators_verdicts(
    arena: LocalArena, model_dir: Path, tmp_path: Path
) -> None:
    checked = [m.name for m in arena.miners]
    arena.commit(*checked)
    validator, seed = _validator_round(arena)
    assert validator == {
        "fast": ("PASS", "crowned"),
        "slow": ("PASS", "not_faster"),
        "cheat": ("FAIL", "conformance"),
    }
    config = arena.write_config(tmp_path / "config.toml")
    docker = {"DOCKER_HOST": arena.services.docker.host}
    printed = {}
    for name in checked:
        proc = run_miner(
            "check", arena.images[name], "--seed", seed, "--config", str(config),
            "--model-path", str(model_dir), "--out", str(tmp_path / f"check-{name}"), env=docker,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        assert verdict_of(proc.stdout) == validator[name], proc.stdout + proc.stderr
        assert proc.returncode == (0 if validator[name][0] == "PASS" else 1)
        assert arena.images[name].rpartition("@")[2] in proc.stdout  # image facts
        assert "(own)" in proc.stdout
        assert "(baseline)" in proc.stdout
        assert (tmp_path / f"check-{name}" / "report.json").exists()
        printed[name] = proc.stdout
    speed = next(line for line in printed["fast"].splitlines() if line.startswith("speed: x"))
    assert 1.5 < float(speed.split()[1].removeprefix("x")) < 2.5, speed
    assert "fabrication" in printed["fast"]
    assert "KL mean" in printed["fast"]

    body = (
        arena.services.s3.client()
        .get_object(Bucket=arena.bucket, Key="cacheon/public/latest.json")["Body"]
        .read()
    )
    with _serving(body) as url:
        fast = arena.participants["fast"].wallet
        status = run_miner(
            "status", "--report-url", url, "--config", str(config),
            "--wallet.name", fast.name, "--wallet.hotkey", "hk",
            "--wallet.path", str(arena.root / "wallets"),
        )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "rank: 1 (leader)" in status.stdout
    assert "crowned" in status.stdout
    assert meaning(ReasonCode.CROWNED, Outcome.PASS) in status.stdout
