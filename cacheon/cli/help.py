"""Help that reads like the field's tools: every command says what it does and shows an example.

Only argparse is imported, so the agent's CLI (base install) shares it with the others.
"""

from __future__ import annotations

import argparse


def examples(*lines: str) -> str:
    """An `examples:` epilog, one command a line, printed as written."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    *example_lines: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A (sub)command whose help leads with `help` (or `description`) and ends with examples."""
    return commands.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=examples(*example_lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
