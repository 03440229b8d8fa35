"""`cacheon-validator`: the daemon operators run under systemd, and its admin commands."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from cacheon.arena import ArenaParams
from cacheon.arena import simulate as arena_simulate
from cacheon.cli.common import EXIT_FAILED, add_settings_arguments, load_or_exit, make_parser
from cacheon.cli.devnet import add_devnet_parser, run_devnet
from cacheon.cli.pods import add_commands as add_pods_commands
from cacheon.cli.pods import run as run_pods_command
from cacheon.config import ArenaSettings, render_settings
from cacheon.log import configure_logging, get_logger
from cacheon.store.db import Database, DatabaseError


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "cacheon-validator", "Cacheon validator: benchmark miners' servers and set weights."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the validator loop (the systemd service)")
    add_settings_arguments(run)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = config_commands.add_parser(
        "show", help="print the effective config, redacted, with sources"
    )
    add_settings_arguments(show)
    add_devnet_parser(commands)
    add_pods_commands(commands)

    simulate = commands.add_parser(
        "simulate", help="measure the verdict rules on synthetic challengers under noise"
    )
    add_settings_arguments(simulate)
    noise = simulate.add_argument_group("noise model (log scale: 0.02 is about 2%%)")
    noise.add_argument("--launch-noise", type=float, default=0.02, help="between launches")
    noise.add_argument("--block-noise", type=float, default=0.01, help="between blocks")
    noise.add_argument("--drift", type=float, default=0.0, help="per launch slot in a round")
    noise.add_argument("--position-bias", type=float, default=0.0, help="a challenger's edge")
    simulate.add_argument("--trials", type=int, default=5000, help="lifetimes per table row")
    simulate.add_argument("--seed", type=int, default=0)
    return parser


def arena_params(settings: ArenaSettings) -> ArenaParams:
    """The arena's parameters from the operator's settings."""
    return ArenaParams(
        moat=settings.moat,
        alpha=settings.alpha,
        max_launches=settings.max_launches,
        sigma_floor=settings.sigma_floor,
        max_challengers_per_round=settings.max_challengers_per_round,
        min_blocks_between_evaluations=settings.min_blocks_between_evaluations,
        leader_share=settings.leader_share,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "devnet":
        return run_devnet(args)
    if args.command in ("keys", "pods") and (code := run_pods_command(args)) is not None:
        return code
    if args.command == "config" and args.config_command == "show":
        print(render_settings(load_or_exit(args)))
        return 0
    if args.command == "simulate":
        return _simulate(args)
    parser.print_help()
    return 0


def _run(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    settings = loaded.settings
    configure_logging(settings.log.format or "json", settings.log.level)
    log = get_logger("cacheon.validator")
    state = Path(settings.validator.state_dir).expanduser() / "state.db"
    try:
        with Database.open(state) as db:
            log.info("state loaded", path=str(state), schema_version=db.schema_version)
    except DatabaseError as exc:
        log.error("cannot open state", reason=str(exc))
        return EXIT_FAILED
    log.error("the round loop is not built yet; nothing to run", netuid=settings.chain.netuid)
    return EXIT_FAILED


def _simulate(args: argparse.Namespace) -> int:
    params = arena_params(load_or_exit(args).settings.arena)
    noise = arena_simulate.Noise(
        launch=args.launch_noise,
        block=args.block_noise,
        drift=args.drift,
        position_bias=args.position_bias,
    )
    rng = random.Random(args.seed)  # noqa: S311 (a reproducible simulation, not a secret)
    print(arena_simulate.render(arena_simulate.run(rng, noise, params, trials=args.trials)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
