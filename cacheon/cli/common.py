"""What every validator-side CLI shares: --version, config loading and the exit code contract.

Exit codes: 0 success, 1 the command failed, 2 bad usage or bad configuration (nothing started).
"""

from __future__ import annotations

import argparse
import sys

from cacheon import __version__
from cacheon.cli.help import examples
from cacheon.config import ConfigError, LoadedSettings, add_config_arguments, load_settings

EXIT_FAILED = 1
EXIT_USAGE = 2


def make_parser(prog: str, description: str, *example_lines: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=examples(*example_lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def load_or_exit(args: argparse.Namespace) -> LoadedSettings:
    """Load the settings, or print one line per problem to stderr and exit 2."""
    try:
        return load_settings(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
