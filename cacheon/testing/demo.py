"""`make demo`: a full validator round on this machine, on the embedded defaults.

Real services on loopback (dockerd, a registry, an sshd standing in for the GPU pod, SeaweedFS
S3), the simulated chain with toy miners (fast, a second faster than the baseline, slow, a cheat,
a copy of the fast one, a malformed commitment), and the real daemon, which rents the pod from a
fake Lium, runs the agent over SSH, scores, publishes and sets weights, each step shown live
(`demo_view`). It ends by printing the leaderboard, the verdicts with their reasons, the weights
on chain and where the page is.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cacheon.log import configure_logging
from cacheon.protocol import PublicReport, Uid
from cacheon.store.db import Database
from cacheon.testing.demo_view import DemoView
from cacheon.testing.local_arena import NETUID, LocalArena, Services, start_services
from cacheon.validator.assemble import build_parts, state_path
from cacheon.validator.daemon import Daemon
from cacheon.validator.leaderboard import render_leaderboard
from cacheon.validator.publish import build_public_report
from cacheon.validator.reasons import meaning

COMMITTING = ("fast", "second", "slow", "cheat", "malformed")


def run_demo(workdir: Path, console: Console, verbose: bool = False, pods: int = 1) -> PublicReport:
    configure_logging("console", "info" if verbose else "warning", stream=sys.stderr)
    with ExitStack() as stack:
        with console.status("starting dockerd, the registry, the pod's sshd and S3 on loopback"):
            services = start_services(stack, pods)
        return run_demo_on(services, workdir, console, pods)


def run_demo_on(services: Services, workdir: Path, console: Console, pods: int = 1) -> PublicReport:
    """The demo over running services (the test suite passes its own); on `pods` pods, the
    committed challengers are split into that many rounds, all in flight at once."""
    with ExitStack() as stack:
        with console.status("building toy miner images and the local chain"):
            arena = LocalArena.create(workdir, services, pods=pods)
            stack.callback(arena.close)
            arena.commit(*COMMITTING)
            arena.commit("copycat")  # a block later: the same digest as `fast`
        judged = len(COMMITTING) - 1  # the malformed commitment never reaches a round
        settings = arena.settings(arena={"max_challengers_per_round": -(-judged // pods)})
        db = Database.open(state_path(settings))
        stack.callback(db.close)
        names = {image: name for name, image in arena.images.items()}
        view = DemoView(console, {arena.baseline_image: "baseline", **names}, rounds=pods)
        daemon = Daemon(settings, replace(build_parts(settings, db), watcher=view))
        console.print("The validator's pass, as it happens:")
        with view:
            asyncio.run(_one_pass(daemon))
        chain = arena.devnet
        rounds = daemon.state.rounds(limit=1)
        report = build_public_report(
            daemon.state,
            params=daemon.params,
            validator_hotkey=daemon.hotkey,
            evaluation_version=daemon.version,
            netuid=NETUID,
            block=chain.head(),
            uids={p.hotkey: Uid(p.uid) for p in arena.participants.values()},
            last_round=rounds[0] if rounds else None,
        )
        row = chain.weights(NETUID, chain.head()).get(arena.validator.uid, [])
        if pods > 1:
            _rounds(console, daemon)
        _print(console, arena, report, row)
        (workdir / "report.json").write_text(report.model_dump_json(indent=1))
        page = workdir / "leaderboard.html"
        page.write_text(render_leaderboard(report))
        console.print(
            f"\nThe leaderboard page: {page} (the daemon publishes it to S3 beside "
            f"cacheon/public/latest.json, and `cacheon-validator run` serves it on "
            f"http://{settings.web.host}:{settings.web.port}/)"
        )
        return report


async def _one_pass(daemon: Daemon) -> None:
    await daemon.parts.leases.start()
    await daemon.recover()
    await daemon.one_pass()
    await daemon.parts.leases.close()
    await daemon.parts.chain.close()


def _rounds(console: Console, daemon: Daemon) -> None:
    """Which round ran on which pod, and when: with several pods they overlap."""
    table = Table(title="Rounds (one pod each, in flight at once)")
    for column in ("round", "pod", "state", "started", "ended"):
        table.add_column(column)
    rounds = sorted(daemon.state.rounds(), key=lambda r: r.started_at)
    first = rounds[0].started_at if rounds else 0.0
    for r in rounds:
        ended = "-" if r.ended_at is None else f"+{r.ended_at - first:.1f} s"
        table.add_row(
            r.round_id, r.pod or "-", r.state.value, f"+{r.started_at - first:.1f} s", ended
        )
    console.print(table)


def _print(
    console: Console, arena: LocalArena, report: PublicReport, row: list[tuple[int, int]]
) -> None:
    names: dict[str, str] = {p.hotkey: name for name, p in arena.participants.items()}
    board = Table(title="Leaderboard (speed against the vLLM baseline stand-in)")
    for column in ("place", "miner", "uid", "speed ratio", "bounds", "launches"):
        board.add_column(column)
    for place, standing in (("leader", report.leader), ("runner-up", report.runner_up)):
        if standing is None:
            board.add_row(place, "-", "", "", "", "")
            continue
        ratio = f"x{standing.speed_ratio:.3f}" if standing.speed_ratio else "?"
        bounds = (
            f"x{standing.ratio_low:.3f} .. x{standing.ratio_high:.3f}"
            if standing.ratio_low and standing.ratio_high
            else ""
        )
        board.add_row(
            place, names.get(standing.hotkey, standing.hotkey[:10]), str(standing.uid), ratio,
            bounds, str(standing.launches),
        )  # fmt: skip
    console.print(board)

    verdicts = Table(title="Verdicts")
    for column in ("miner", "outcome", "reason", "what it means"):
        verdicts.add_column(column)
    seen = set()
    for v in report.verdicts:
        if v.hotkey in seen:
            continue
        seen.add(v.hotkey)
        reason = v.reason.value if v.reason else ""
        verdicts.add_row(
            names.get(v.hotkey, v.hotkey[:10]), v.outcome.value, reason,
            meaning(v.reason, v.outcome),
        )  # fmt: skip
    console.print(verdicts)

    weights = Table(title=f"Weights set on chain by the validator (uid {arena.validator.uid})")
    weights.add_column("uid")
    weights.add_column("miner")
    weights.add_column("u16")
    weights.add_column("share")
    total = sum(w for _, w in row) or 1
    by_uid = {p.uid: name for name, p in arena.participants.items()}
    for uid, weight in sorted(row):
        weights.add_row(
            str(uid), by_uid.get(uid, "owner (burn)"), str(weight), f"{weight / total:.3f}"
        )
    console.print(weights)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cacheon-demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="keep the demo's files here (default: temp)")
    parser.add_argument("--verbose", action="store_true", help="show the daemon's logs")
    parser.add_argument(
        "--pods", type=int, default=1, choices=(1, 2), help="rounds at once, one pod each"
    )
    args = parser.parse_args(argv)
    console = Console()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="cacheon-demo-"))).resolve()
    if args.workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
    report = run_demo(workdir, console, args.verbose, args.pods)
    return 0 if report.leader is not None else 1


if __name__ == "__main__":
    sys.exit(main())
