"""`cacheon-validator doctor`: one line per deployment check, `ok` or `FAIL` with the fix.

Exit 0 when every check passes, 1 when any fails (so it can gate a deploy script), 2 when the
config itself cannot be loaded.
"""

from __future__ import annotations

import argparse
import asyncio

from cacheon.cli.common import EXIT_FAILED, add_settings_arguments, load_or_exit
from cacheon.cli.help import add_command
from cacheon.log import configure_logging
from cacheon.validator.doctor import Check, run_checks


def add_doctor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = add_command(
        commands,
        "doctor",
        "check wallet, chain, S3, providers, keys and model before running",
        "cacheon-validator doctor --config /etc/cacheon/config.toml",
    )
    add_settings_arguments(doctor)


def run_doctor(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    # The checks' own lines say everything; library logs would only repeat them.
    configure_logging("console", "error")
    checks = asyncio.run(run_checks(settings))
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(render(check, width))
    failed = sum(not check.ok for check in checks)
    print(f"{failed} of {len(checks)} checks failed" if failed else "all checks passed")
    return EXIT_FAILED if failed else 0


def render(check: Check, width: int) -> str:
    return f"{'ok' if check.ok else 'FAIL':<4}  {check.name:<{width}}  {check.detail}"
