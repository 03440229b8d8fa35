"""`cacheon-validator keys init` and `cacheon-validator pods list|sweep|terminate ID`.

Operator tools over the same ledger and providers the daemon uses: see every pod of ours and its
lease, end orphans now instead of at the next sweep, or terminate one pod by id.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cacheon.cli.common import EXIT_FAILED, EXIT_USAGE, add_settings_arguments, load_or_exit
from cacheon.cli.help import add_command
from cacheon.config import Settings
from cacheon.log import configure_logging
from cacheon.pods.base import PodError, Provider
from cacheon.pods.keys import init_key
from cacheon.pods.ledger import LeaseLedger, LeaseState
from cacheon.pods.providers import PodConfigError, build_providers
from cacheon.pods.sweep import sweep, terminate_lease
from cacheon.store.db import Database, DatabaseError


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = add_command(
        commands,
        "keys",
        "the validator's own SSH key for pods",
        "cacheon-validator keys init --config /etc/cacheon/config.toml",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    init = add_command(
        keys_commands,
        "init",
        "create the pod SSH key (ed25519, 0600) if missing",
        "cacheon-validator keys init --config /etc/cacheon/config.toml",
    )
    pods = add_command(
        commands,
        "pods",
        "rented GPU pods and their leases",
        "cacheon-validator pods list --config /etc/cacheon/config.toml",
        "cacheon-validator pods sweep --config /etc/cacheon/config.toml",
    )
    pods_commands = pods.add_subparsers(dest="pods_command", metavar="SUBCOMMAND")
    listing = add_command(
        pods_commands,
        "list",
        "our pods at every provider",
        "cacheon-validator pods list --config /etc/cacheon/config.toml",
    )
    sweep_pods = add_command(
        pods_commands,
        "sweep",
        "terminate orphaned or expired pods now",
        "cacheon-validator pods sweep --config /etc/cacheon/config.toml",
    )
    terminate = add_command(
        pods_commands,
        "terminate",
        "terminate one pod by provider id",
        "cacheon-validator pods terminate 3f9c2a71 --config /etc/cacheon/config.toml",
    )
    terminate.add_argument("pod_id", metavar="ID", help="the provider's id, as `pods list` shows")
    for parser in (init, listing, sweep_pods, terminate):
        add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int | None:
    """Run a keys/pods command; None when `args` is not one of them."""
    if args.command == "keys" and args.keys_command == "init":
        return _keys_init(load_or_exit(args).settings)
    if args.command == "pods" and args.pods_command in ("list", "sweep", "terminate"):
        settings = load_or_exit(args).settings
        configure_logging(settings.log.format or "console", settings.log.level)
        state = Path(settings.validator.state_dir).expanduser() / "state.db"
        try:
            db = Database.open(state)
        except DatabaseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            return asyncio.run(_pods(settings, db, args.pods_command, getattr(args, "pod_id", "")))
        finally:
            db.close()
    return None


def _keys_init(settings: Settings) -> int:
    key, created = init_key(Path(settings.pods.ssh_key_path))
    state = "created" if created else "exists, kept"
    print(f"{key.path} ({state}); public key, for static hosts' authorized_keys:")
    print(key.public_line)
    return 0


async def _pods(settings: Settings, db: Database, command: str, pod_id: str) -> int:
    try:
        providers = build_providers(settings.pods, db)
    except PodConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ledger = LeaseLedger(db)
        prefix = ledger.pod_prefix(settings.pods.name_prefix)
        if command == "list":
            return await _list(providers, ledger, prefix)
        if command == "sweep":
            return await _sweep(providers, ledger, prefix, settings.pods.keep_on_restart)
        return await _terminate(providers, ledger, prefix, pod_id)
    finally:
        for provider in providers:
            await provider.aclose()


async def _sweep(
    providers: Sequence[Provider],
    ledger: LeaseLedger,
    prefix: str,
    keep_on_restart: bool,
) -> int:
    report = await sweep(
        {p.name: p for p in providers}, ledger, prefix, time.time,
        startup=False, keep_on_restart=keep_on_restart,
    )  # fmt: skip
    for ended in report.terminated:
        print(f"terminated {ended.provider} {ended.pod_id}: {ended.reason}")
    for ended in report.closed:
        print(f"closed lease {ended.name}: {ended.reason}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not (report.terminated or report.closed or report.errors):
        print("nothing to sweep")
    return EXIT_FAILED if report.errors else 0


async def _list(providers: Sequence[Provider], ledger: LeaseLedger, prefix: str) -> int:
    table = Table(title=f"pods named {prefix}*")
    for column in ("provider", "id", "name", "age", "price/h", "state", "lease"):
        table.add_column(column)
    failed = False
    now = time.time()
    for provider in providers:
        try:
            pods = await provider.list_ours(prefix)
        except PodError as exc:
            print(f"error: {provider.name}: {exc}", file=sys.stderr)
            failed = True
            continue
        for pod in pods:
            lease = ledger.by_pod(provider.name, pod.pod_id) or ledger.get(pod.name)
            started = (
                pod.created_at.timestamp()
                if pod.created_at
                else lease.created_at
                if lease
                else None
            )
            table.add_row(
                provider.name, pod.pod_id, pod.name, _age(now, started),
                f"${pod.price_per_hour:.2f}", str(pod.state),
                f"{lease.state}" if lease else "none (orphan)",
            )  # fmt: skip
    Console().print(table)
    return EXIT_FAILED if failed else 0


async def _terminate(
    providers: Sequence[Provider],
    ledger: LeaseLedger,
    prefix: str,
    pod_id: str,
) -> int:
    by_name = {p.name: p for p in providers}
    leases = [ledger.by_pod(name, pod_id) for name in by_name]
    lease = next((lease for lease in leases if lease is not None and lease.live), None)
    if lease is not None:
        done = await terminate_lease(
            by_name[lease.provider], ledger, lease,
            final=LeaseState.RELEASED, reason="terminated by the operator", now=time.time(),
        )  # fmt: skip
        print(f"{'terminated' if done else 'could not terminate'} {pod_id} (lease {lease.name})")
        return 0 if done else EXIT_FAILED
    for provider in providers:
        try:
            pods = await provider.list_ours(prefix)
        except PodError as exc:
            print(f"error: {provider.name}: {exc}", file=sys.stderr)
            continue
        if any(pod.pod_id == pod_id for pod in pods):
            try:
                await provider.terminate(pod_id)
            except PodError as exc:
                print(f"error: {provider.name}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"terminated {provider.name} {pod_id} (no lease)")
            return 0
    print(f"error: no pod {pod_id} of ours at {', '.join(by_name)}", file=sys.stderr)
    return EXIT_FAILED


def _age(now: float, started: float | None) -> str:
    if started is None:
        return "?"
    seconds = max(0, int(now - started))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
