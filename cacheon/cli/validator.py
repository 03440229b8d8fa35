"""`cacheon-validator`: the daemon operators run under systemd, and its admin commands."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from cacheon.arena import season
from cacheon.arena import simulate as arena_simulate
from cacheon.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_settings_arguments,
    load_or_exit,
    make_parser,
)
from cacheon.cli.devnet import add_devnet_parser, run_devnet
from cacheon.cli.doctor import add_doctor_parser, run_doctor
from cacheon.cli.help import add_command
from cacheon.cli.pods import add_commands as add_pods_commands
from cacheon.cli.pods import run as run_pods_command
from cacheon.cli.state import add_state_parser, run_state
from cacheon.cli.status import add_commands as add_status_commands
from cacheon.cli.status import run as run_status_command
from cacheon.config import render_settings
from cacheon.log import configure_logging, get_logger
from cacheon.store.db import Database, DatabaseError
from cacheon.validator.assemble import NotReady, build_parts, state_path
from cacheon.validator.daemon import Daemon
from cacheon.validator.evaluation import arena_params, workload


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "cacheon-validator",
        "Cacheon validator: benchmark miners' servers and set weights.",
        "cacheon-validator doctor --config /etc/cacheon/config.toml",
        "cacheon-validator run --config /etc/cacheon/config.toml",
        "cacheon-validator status",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = add_command(
        commands,
        "run",
        "run the validator loop (the systemd service)",
        "cacheon-validator run --config /etc/cacheon/config.toml",
        "cacheon-validator run --subtensor.network test --netuid 214 --wallet.name validator",
    )
    add_settings_arguments(run)

    config = add_command(
        commands,
        "config",
        "inspect the configuration",
        "cacheon-validator config show --config /etc/cacheon/config.toml",
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = add_command(
        config_commands,
        "show",
        "print the effective config, redacted, with sources",
        "cacheon-validator config show --config /etc/cacheon/config.toml",
        "cacheon-validator config show --netuid 14 --subtensor.network finney",
    )
    add_settings_arguments(show)
    add_devnet_parser(commands)
    add_pods_commands(commands)
    add_status_commands(commands)
    add_state_parser(commands)
    add_doctor_parser(commands)

    simulate = add_command(
        commands,
        "simulate",
        "measure the verdict rules on synthetic challengers under noise",
        "cacheon-validator simulate",
        "cacheon-validator simulate --launch-noise 0.07 --drift 0.01 --trials 2000",
    )
    add_settings_arguments(simulate)
    noise = simulate.add_argument_group("noise model (log scale: 0.02 is about 2%%)")
    for flag, metavar, default, text in (
        ("--launch-noise", "SIGMA", 0.02, "between launches"),
        ("--block-noise", "SIGMA", 0.01, "between blocks"),
        ("--drift", "LOG", 0.0, "per launch slot in a round"),
        ("--position-bias", "LOG", 0.0, "a challenger's edge"),
        ("--outliers", "SHARE", 0.0, "share of launches that are outliers (sd 10%%)"),
    ):
        noise.add_argument(flag, metavar=metavar, type=float, default=default, help=text)
    simulate.add_argument(
        "--trials", metavar="N", type=int, default=5000, help="lifetimes per table row"
    )
    simulate.add_argument("--seed", metavar="N", type=int, default=0, help="the simulation's seed")
    simulate.add_argument(
        "--season",
        action="store_true",
        help="play launch days on 1, 2, 4 and 8 pods (GPU-hours per decision, latency, crowns)"
        " beside the settings this design replaced",
    )
    simulate.add_argument(
        "--seasons", metavar="N", type=int, default=200, help="launch days per --season row"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "devnet":
        return run_devnet(args)
    if args.command in ("status", "weights") and (code := run_status_command(args)) is not None:
        return code
    if args.command in ("keys", "pods") and (code := run_pods_command(args)) is not None:
        return code
    if args.command == "config" and args.config_command == "show":
        print(render_settings(load_or_exit(args)))
        return 0
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "state":
        return run_state(args)
    if args.command == "doctor":
        return run_doctor(args)
    parser.print_help()
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    configure_logging(settings.log.format or "json", settings.log.level)
    log = get_logger("cacheon.validator")
    try:
        db = Database.open(state_path(settings))
    except DatabaseError as exc:
        log.error("cannot open state", reason=str(exc))
        return EXIT_FAILED
    try:
        parts = build_parts(settings, db)
    except NotReady as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        db.close()
        return EXIT_USAGE
    try:
        return asyncio.run(Daemon(settings, parts).run())
    finally:
        db.close()


def _simulate(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    params = arena_params(settings.arena)
    noise = arena_simulate.Noise(
        launch=args.launch_noise,
        block=args.block_noise,
        drift=args.drift,
        position_bias=args.position_bias,
        outliers=args.outliers,
    )
    rng = random.Random(args.seed)  # noqa: S311 (a reproducible simulation, not a secret)
    if args.season:
        rows = season.versus_legacy(
            rng, params, workload(settings.workload), noise, seasons=args.seasons
        )
        print(season.render(rows))
        return 0
    print(arena_simulate.render(arena_simulate.run(rng, noise, params, trials=args.trials)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
