"""`cacheon-validator status` and `cacheon-validator weights show`: the operator's glance.

`status` reads the running daemon's status API (it never opens the state database, which the
daemon owns) and draws it as tables. `weights show` puts what we last set (from the API) beside
what the chain holds now (read directly, so it works while the daemon is down) and says when the
rate limit and the weights interval next let us set weights.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.errors import ChainFailure
from cacheon.chain.wallet import WalletError, hotkey_address, open_wallet
from cacheon.chain.weights import next_allowed_block
from cacheon.cli.common import EXIT_FAILED, add_settings_arguments, load_or_exit
from cacheon.cli.help import add_command
from cacheon.config import Settings
from cacheon.protocol import Standing
from cacheon.validator.reasons import meaning
from cacheon.validator.views import StatusView, WeightsEntry

DEFAULT_URL = "http://127.0.0.1:9414"
TIMEOUT_S = 10.0
VERDICTS_SHOWN = 10


class ApiError(Exception):
    """The status API could not be read; the message says where and why."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = add_command(
        commands,
        "status",
        "the running validator at a glance",
        "cacheon-validator status",
        "cacheon-validator status --url http://10.0.0.5:9414",
    )
    status.add_argument(
        "--url", metavar="URL", default=DEFAULT_URL, help=f"status API (default {DEFAULT_URL})"
    )
    weights = add_command(
        commands,
        "weights",
        "weights: what we set and what the chain holds",
        "cacheon-validator weights show --config /etc/cacheon/config.toml",
    )
    sub = weights.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", required=True)
    show = add_command(
        sub,
        "show",
        "last weights set, the chain's row, the next window",
        "cacheon-validator weights show --config /etc/cacheon/config.toml",
    )
    show.add_argument(
        "--url", metavar="URL", default=DEFAULT_URL, help=f"status API (default {DEFAULT_URL})"
    )
    add_settings_arguments(show)


def run(args: argparse.Namespace) -> int | None:
    """Handle `status` / `weights show`; None for any other command."""
    if args.command == "status":
        try:
            view = fetch_status(args.url)
        except ApiError as exc:
            print(f"status: {exc}", file=sys.stderr)
            return EXIT_FAILED
        render_status(view, Console())
        return 0
    if args.command == "weights" and args.weights_command == "show":
        return _weights_show(args)
    return None


def fetch_status(url: str) -> StatusView:
    endpoint = url.rstrip("/") + "/api/status"
    try:
        response = httpx.get(endpoint, timeout=TIMEOUT_S)
        response.raise_for_status()
        return StatusView.model_validate_json(response.content)
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot read {endpoint}: {exc}; is the validator running?") from None
    except ValidationError as exc:
        raise ApiError(f"{endpoint} answered something else than a status: {exc}") from None


def render_status(view: StatusView, console: Console) -> None:
    report, ops = view.report, view.operations
    now = time.time()
    about = _pairs("Validator")
    about.add_row("hotkey", report.validator_hotkey)
    about.add_row("netuid / block", f"{report.netuid} / {report.block}")
    about.add_row("versions", f"validator {report.validator_version}, evaluation {report.evaluation_version}")  # fmt: skip
    about.add_row("loop", _loop(ops.loop_completed_at, ops.stopping, now))
    noise = "-" if report.launch_noise is None else f"{report.launch_noise * 100:.1f}%"
    about.add_row("launch noise", noise)
    running = ", ".join(
        f"{r.round_id} ({r.state}, pod {r.pod or '-'}, {len(r.challengers)} challengers)"
        for r in ops.rounds
    )
    about.add_row("rounds", running or "none running")
    pods = ops.pods
    about.add_row(
        "pods / spend",
        f"{len(pods.running)} running, ${pods.spent_today_usd:.2f} of ${pods.daily_budget_usd:.2f} today",
    )
    console.print(about)

    standings = Table(title="Standings (speed vs baseline, one-sided bounds)", title_justify="left")
    for column in ("place", "hotkey", "uid", "image", "ratio", "bounds", "launches"):
        standings.add_column(column, justify="right" if column in ("uid", "launches") else "left")
    places = [("leader", report.leader), ("runner-up", report.runner_up)]
    for place, standing in [*places, *(("pending", s) for s in report.pending)]:
        if standing is not None:
            standings.add_row(place, *_standing(standing))
    if report.leader is None:
        standings.add_row("leader", "nobody: emission goes to the burn uid", "", "", "", "", "")
    console.print(standings)

    verdicts = Table(title="Recent verdicts", title_justify="left")
    for column in ("age", "hotkey", "outcome", "reason", "meaning", "round"):
        verdicts.add_column(column)
    for v in report.verdicts[:VERDICTS_SHOWN]:
        verdicts.add_row(
            _age(now - v.at), v.hotkey, v.outcome.value, v.reason.value if v.reason else "",
            meaning(v.reason, v.outcome), v.round_id or "",
        )  # fmt: skip
    console.print(verdicts)

    weights = _pairs("Weights")
    weights.add_row("last attempt", _weights_line(ops.weights.last_attempt, now))
    weights.add_row("last success", _weights_line(ops.weights.last_success, now))
    console.print(weights)


def _weights_show(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    console = Console()
    view: StatusView | None = None
    try:
        view = fetch_status(args.url)
    except ApiError as exc:
        console.print(f"[yellow]status API unavailable[/]: {exc}")
    try:
        hotkey = _our_hotkey(view, settings)
        chain_state, row, pending = asyncio.run(_read_chain(settings, hotkey))
    except (ChainFailure, WalletError) as exc:
        print(f"weights show: {exc}", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    ours = _pairs(f"What we last set ({hotkey})")
    if view is not None:
        ours.add_row("last attempt", _weights_line(view.operations.weights.last_attempt, now))
        last = view.operations.weights.last_success
        ours.add_row("last success", _weights_line(last, now))
        if last is not None:
            ours.add_row("vector", _vector(last.vector))
    console.print(ours)

    uid = chain_state.uid_of(hotkey)
    held = _pairs(f"What the chain holds (netuid {chain_state.netuid}, block {chain_state.block})")
    if uid is None:
        held.add_row("registration", f"{hotkey} is not registered on netuid {chain_state.netuid}")
    else:
        total = sum(v for _, v in row) or 1
        held.add_row("uid", str(uid))
        held.add_row("row", ", ".join(f"uid {d}: {v} ({v / total:.1%})" for d, v in row) or "empty")
        if chain_state.hyperparameters.commit_reveal:
            held.add_row(
                "pending commits", ", ".join(f"reveal round {r}" for r in pending) or "none"
            )
    console.print(held)

    window = _pairs("Next window")
    hyper = chain_state.hyperparameters
    window.add_row("rate limit", f"{hyper.weights_rate_limit} blocks")
    if uid is not None:
        opens = next_allowed_block(chain_state, uid)
        window.add_row("rate limit opens", "now" if opens is None else f"block {opens}")
    interval = settings.validator.weights_interval_blocks or hyper.tempo
    last_block = None
    if view is not None and view.operations.weights.last_success is not None:
        last_block = view.operations.weights.last_success.block
    due = "now (no success on record)" if last_block is None else f"block {last_block + interval}"
    window.add_row("interval", f"every {interval} blocks, or when the standings change")
    window.add_row("next due", due)
    console.print(window)
    return 0


def _our_hotkey(view: StatusView | None, settings: Settings) -> str:
    """From the daemon's report when it answers, else from the wallet (the daemon may be down)."""
    if view is not None:
        return view.report.validator_hotkey
    return hotkey_address(open_wallet(settings.wallet))


async def _read_chain(
    settings: Settings, hotkey: str
) -> tuple[ChainState, list[tuple[int, int]], list[int]]:
    async with ChainClient(settings.chain) as client:
        state = await client.read_state()
        uid = state.uid_of(hotkey)
        row = [] if uid is None else sorted(await client.weights_row(uid))
        pending = (
            await client.pending_weight_commits(hotkey)
            if state.hyperparameters.commit_reveal
            else []
        )
        return state, row, pending


def _pairs(title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    return table


def _standing(s: Standing) -> tuple[str, ...]:
    image = s.image.rpartition("@")[0] or s.image
    if s.speed_ratio is None:
        return s.hotkey, str(s.uid or "-"), image, "-", "-", str(s.launches)
    low = "?" if s.ratio_low is None else f"x{s.ratio_low:.3f}"
    high = "?" if s.ratio_high is None else f"x{s.ratio_high:.3f}"
    return (
        s.hotkey, "-" if s.uid is None else str(s.uid), image, f"x{s.speed_ratio:.3f}",
        f"{low} .. {high}", str(s.launches),
    )  # fmt: skip


def _weights_line(entry: WeightsEntry | None, now: float) -> str:
    if entry is None:
        return "none yet"
    return f"{entry.status} at block {entry.block}, {_age(now - entry.at)} ago: {entry.detail}"


def _vector(vector: dict[int, float]) -> str:
    return ", ".join(f"uid {uid}: {w:.1%}" for uid, w in sorted(vector.items()))


def _loop(completed_at: float | None, stopping: bool, now: float) -> str:
    if stopping:
        return "stopping"
    if completed_at is None:
        return "no pass completed yet"
    return f"last pass {_age(now - completed_at)} ago"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
