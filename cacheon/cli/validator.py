"""`cacheon-validator`: the daemon operators run under systemd, and its admin commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cacheon.cli.common import EXIT_FAILED, add_settings_arguments, load_or_exit, make_parser
from cacheon.cli.devnet import add_devnet_parser, run_devnet
from cacheon.config import render_settings
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "devnet":
        return run_devnet(args)
    if args.command == "config" and args.config_command == "show":
        print(render_settings(load_or_exit(args)))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
