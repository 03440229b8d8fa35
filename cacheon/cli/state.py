"""`cacheon-validator state export|import`: copy the state database out, and restore it.

Export works while the daemon runs; import refuses until it is stopped. Both print one line.
"""

from __future__ import annotations

import argparse
import sys

from cacheon.cli.common import EXIT_FAILED, EXIT_USAGE, add_settings_arguments, load_or_exit
from cacheon.cli.help import add_command
from cacheon.store.backup import StateInfo
from cacheon.store.db import DatabaseError
from cacheon.store.objects import ObjectStoreError
from cacheon.store.transfer import default_export, export_state, import_state, parse_location
from cacheon.validator.assemble import state_path


def add_state_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = add_command(
        commands,
        "state",
        "export or import the state database",
        "cacheon-validator state export --config /etc/cacheon/config.toml",
        "cacheon-validator state import backup.db --config /etc/cacheon/config.toml",
    )
    sub = state.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)
    export = add_command(
        sub,
        "export",
        "a consistent snapshot of the state, safe while the daemon runs",
        "cacheon-validator state export --config /etc/cacheon/config.toml",
        "cacheon-validator state export --to s3://my-backups/cacheon/state.db --config /etc/cacheon/config.toml",
    )
    export.add_argument(
        "--to",
        metavar="FILE|s3://BUCKET/KEY",
        help="where to write it (default: <state_dir>/backups/state-<UTC time>.db)",
    )
    restore = add_command(
        sub,
        "import",
        "replace the state with a snapshot (stop the daemon first)",
        "cacheon-validator state import s3://my-backups/cacheon/state.db --config /etc/cacheon/config.toml",
    )
    restore.add_argument("source", metavar="FILE|s3://BUCKET/KEY")
    for parser in (export, restore):
        add_settings_arguments(parser)


def run_state(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    db = state_path(settings)
    try:
        if args.state_command == "export":
            to = parse_location(args.to) if args.to else default_export(db.parent)
            info = export_state(db, to, settings.s3)
            print(f"exported {_describe(info)} to {to}")
        else:
            source = parse_location(args.source)
            kept = import_state(source, db, settings.s3)
            previous = f"the previous one is kept at {kept}" if kept else "there was none before"
            print(f"imported {source} into {db}; {previous}")
    except ValueError as exc:
        print(f"state: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DatabaseError, ObjectStoreError, OSError) as exc:
        print(f"state: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _describe(info: StateInfo) -> str:
    return (
        f"state schema {info.schema_version} ({_size(info.size)}; {info.standings} standings "
        f"rows, {info.first_seen} first-seen records)"
    )


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
