"""Every parser of the three entry points reads like the field's tools.

Values are named for what they are (`--netuid NETUID`, `--wallet.name NAME`), never after an
internal dest (`FLAG_NETUID`, `REPORT_URL`), and every command and subcommand ends its help with
examples that start with the command itself and that its parser accepts.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Iterator

import pytest

from cacheon.cli import agent, miner, validator

ENTRY_POINTS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "cacheon-validator": validator.build_parser,
    "cacheon-miner": miner.build_parser,
    "cacheon-agent": agent.build_parser,
}


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from walk(sub)


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    return [(entry, p) for entry, build in ENTRY_POINTS.items() for p in walk(build())]


PARSERS = every_parser()
IDS = [parser.prog for _, parser in PARSERS]


def test_every_command_is_walked() -> None:
    progs = set(IDS)
    for expected in ("cacheon-validator weights show", "cacheon-miner check",
                     "cacheon-agent calibrate", "cacheon-validator devnet init"):  # fmt: skip
        assert expected in progs


@pytest.mark.parametrize(("entry", "parser"), PARSERS, ids=IDS)
def test_values_are_named_for_what_they_are(entry: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.nargs == 0 or action.dest == "help":
            continue  # switches take no value
        if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
            continue  # shown as {a,b}
        shown = action.option_strings or [action.dest]
        assert action.metavar is not None, f"{parser.prog} {shown}: metavar from the dest"
        assert isinstance(action.metavar, str)
        assert "FLAG_" not in action.metavar, f"{parser.prog} {shown}"
        assert action.metavar != action.dest.upper() or "_" not in action.dest, (
            f"{parser.prog} {shown}: {action.metavar} is the dest in capitals"
        )
    assert "FLAG_" not in parser.format_help()


@pytest.mark.parametrize(("entry", "parser"), PARSERS, ids=IDS)
def test_every_command_has_examples_its_parser_accepts(
    entry: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter, parser.prog
    assert parser.epilog is not None, f"{parser.prog} has no epilog"
    examples = [
        line.strip() for line in parser.epilog.splitlines() if line.strip().startswith(parser.prog)
    ]
    assert examples, f"{parser.prog}: no example starts with the command"
    top = ENTRY_POINTS[entry]()
    for example in examples:
        words = shlex.split(example.split(" < ")[0], comments=True)
        try:
            top.parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"`{example}` does not parse (exit {exc.code})")
    assert "examples:" in parser.format_help()
