"""`cacheon-miner`: what a miner runs to check an image locally, commit it and follow it.

Everything a validator will check about a commitment is checked here first, with the same code
(the commitment parser, and optionally the registry pre-screen), so a miner learns of a mistake
before paying for it. Failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from rich.console import Console
from rich.prompt import Confirm
from rich.table import Table

from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import (
    Rejection,
    commitment_fields,
    encode_commitment,
    parse_reference,
    parse_submission,
)
from cacheon.chain.errors import ChainFailure, NotRegistered, QuotaExceeded
from cacheon.chain.firstseen import holders_on_chain
from cacheon.chain.registry import RegistryProblem, fetch_manifest
from cacheon.chain.wallet import Wallet, WalletError, hotkey_address, open_wallet
from cacheon.cli import check, serve_leader
from cacheon.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_settings_arguments,
    load_or_exit,
    make_parser,
)
from cacheon.cli.help import add_command
from cacheon.cli.report_status import ReportUnavailable, fetch_report, render_report
from cacheon.config import Settings
from cacheon.log import configure_logging

out = Console()
err = Console(stderr=True)


class Failed(Exception):
    """A one-line reason the command stopped, and its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "cacheon-miner",
        "Cacheon miner tools: check a server image locally, commit it on chain, follow it, and"
        " serve the current leader.",
        "cacheon-miner check docker.io/alice/fast-qwen@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f --model-path ~/models/qwen",
        "cacheon-miner commit docker.io/alice/fast-qwen@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f --wallet.name miner --wallet.hotkey default",
        "cacheon-miner status --report-url https://validator.example/cacheon/public/latest.json",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commit = add_command(
        commands,
        "commit",
        "commit IMAGE (<registry>/<repository>@sha256:<hex>) for your hotkey",
        "cacheon-miner commit docker.io/alice/fast-qwen@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f --netuid 14 --wallet.name miner --wallet.hotkey default",
        "cacheon-miner commit docker.io/alice/fast-qwen@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f --check-registry --yes",
    )
    commit.add_argument("image", metavar="IMAGE", help="<registry>/<repository>@sha256:<hex>")
    commit.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    commit.add_argument(
        "--check-registry",
        action="store_true",
        help="first check with the registry that the digest exists and has linux/amd64",
    )
    add_settings_arguments(commit)
    status = add_command(
        commands,
        "status",
        "your hotkey's commitment on chain, and its standing in a validator's report",
        "cacheon-miner status --wallet.name miner --wallet.hotkey default",
        "cacheon-miner status --report-url https://validator.example/cacheon/public/latest.json",
    )
    status.add_argument(
        "--report-url", metavar="URL", help="a validator's public report (public/latest.json)"
    )
    add_settings_arguments(status)
    check.add_parser(commands)
    serve_leader.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    settings = load_or_exit(args).settings
    configure_logging("console", settings.log.level if settings.log.level != "info" else "warning")
    try:
        if args.command == "commit":
            asyncio.run(_commit(settings, args.image, args.yes, args.check_registry))
        elif args.command == "check":
            return asyncio.run(check.check(settings, args, out))
        elif args.command == "serve-leader":
            return serve_leader.serve_leader(settings, args, out)
        else:
            asyncio.run(_status(settings, args.report_url))
    except (Failed, check.CheckFailed, serve_leader.ServeFailed) as exc:
        err.print(f"error: {exc}", highlight=False, soft_wrap=True)
        return exc.code
    except KeyboardInterrupt:
        err.print("interrupted; nothing was committed unless a block was printed")
        return EXIT_FAILED
    return 0


def _wallet(settings: Settings) -> tuple[Wallet, str]:
    wallet = open_wallet(settings.wallet)
    try:
        return wallet, hotkey_address(wallet)
    except WalletError as exc:
        raise Failed(str(exc)) from None


async def _commit(settings: Settings, text: str, yes: bool, check_registry: bool) -> None:
    image = parse_reference(text)
    if isinstance(image, Rejection):
        raise Failed(f"malformed reference: {image.detail}", EXIT_USAGE)
    fields = commitment_fields(image)
    if isinstance(fields, Rejection):
        raise Failed(f"malformed reference: {fields.detail}", EXIT_USAGE)
    wallet, hotkey = _wallet(settings)
    netuid = settings.chain.netuid

    if check_registry:
        with out.status(f"asking {image.registry} for {image.digest} …"):
            try:
                manifest = await fetch_manifest(image)
            except RegistryProblem as exc:
                raise Failed(f"registry check failed ({exc.reason}): {exc}") from None
        out.print(
            f"registry: found, linux/amd64, {manifest.compressed_size / 1e9:.2f} GB compressed"
        )

    try:
        async with ChainClient(settings.chain) as chain:
            uid = await chain.uid_of(hotkey, netuid)
            if uid is None:
                raise Failed(
                    f"hotkey {hotkey} is not registered on netuid {netuid};"
                    f" register it first (btcli subnets register --netuid {netuid})"
                )
            table = Table(show_header=False, box=None)
            table.add_row("netuid", str(netuid))
            table.add_row("hotkey", f"{hotkey} (uid {uid})")
            table.add_row("commitment", encode_commitment(image))
            table.add_row("fields", ", ".join(f"Raw{len(f)}" for f in fields))
            out.print(table)
            if not yes:
                if not sys.stdin.isatty():
                    raise Failed("not a terminal; pass --yes to commit without confirmation", 2)
                if not Confirm.ask("Commit this, signed by the hotkey?", console=out):
                    raise Failed("cancelled; nothing was committed")
            with out.status("submitting …"):
                receipt = await chain.commit(fields, wallet, netuid)
            mine = next((c for c in await chain.commitments(netuid) if c.hotkey == hotkey), None)
    except NotRegistered:
        raise Failed(
            f"hotkey {hotkey} is not registered on netuid {netuid}; the chain refused the commit"
        ) from None
    except QuotaExceeded:
        raise Failed(
            f"commitment quota for this tempo is used up for {hotkey} on netuid {netuid};"
            " wait for the next tempo and commit again"
        ) from None
    except ChainFailure as exc:
        raise Failed(str(exc)) from None
    out.print(f"[green]committed[/green] in block {receipt.block} ({receipt.extrinsic_id})")
    out.print(
        f"a validator reads: {mine.text if mine else '(nothing yet)'}",
        highlight=False,
        soft_wrap=True,
    )


async def _status(settings: Settings, report_url: str | None) -> None:
    _, hotkey = _wallet(settings)
    await _chain_status(settings, hotkey)
    if report_url is not None:
        try:
            report = await fetch_report(report_url)
        except ReportUnavailable as exc:
            raise Failed(str(exc)) from None
        render_report(report, hotkey, out)


async def _chain_status(settings: Settings, hotkey: str) -> None:
    netuid = settings.chain.netuid
    allowlist = settings.arena.registry_allowlist
    try:
        async with ChainClient(settings.chain) as chain:
            uid = await chain.uid_of(hotkey, netuid)
            commitments = await chain.commitments(netuid)
    except ChainFailure as exc:
        raise Failed(str(exc)) from None
    out.print(f"hotkey {hotkey}: " + (f"uid {uid}" if uid is not None else "not registered"))
    mine = next((c for c in commitments if c.hotkey == hotkey), None)
    if mine is None:
        out.print(f"no commitment on netuid {netuid}")
        return
    out.print(f"commitment (block {mine.block}): {mine.text}", highlight=False, soft_wrap=True)
    parsed = parse_submission(
        mine.text, hotkey=mine.hotkey, uid=mine.uid, block=mine.block, allowlist=allowlist
    )
    if isinstance(parsed, Rejection):
        out.print(f"[red]validators will reject it[/red]: {parsed.detail}")
        return
    others = [
        parse_submission(c.text, hotkey=c.hotkey, uid=c.uid, block=c.block, allowlist=allowlist)
        for c in commitments
    ]
    ranked = holders_on_chain(s for s in others if not isinstance(s, Rejection))
    first = ranked[parsed.image.digest][0]
    if first.hotkey == hotkey:
        out.print("first seen: yours is the earliest commitment of this digest on chain")
    else:
        out.print(
            f"[yellow]first seen by another hotkey[/yellow]: {first.hotkey} (uid {first.uid})"
            f" committed this digest at block {first.block}; yours counts as a copy"
        )


if __name__ == "__main__":
    sys.exit(main())
