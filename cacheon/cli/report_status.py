"""`cacheon-miner status --report-url`: a hotkey's standing in a validator's public report.

The chain only says what a miner committed; why it won or lost is in the report each validator
publishes after every round (`PublicReport`). This reads one, by URL, and shows the hotkey's
place, its latest verdicts with what each reason means, and its launches in the last round.
"""

from __future__ import annotations

import math

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cacheon.arena import RoundVoid, launch_speeds
from cacheon.protocol import PublicReport, PublishedVerdict, RoundReport, Standing
from cacheon.validator.reasons import meaning

TIMEOUT_S = 30.0
VERDICTS_SHOWN = 10


class ReportUnavailable(Exception):
    """The report could not be read; the message says where and why."""


async def fetch_report(url: str) -> PublicReport:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=True) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise ReportUnavailable(f"cannot read {url}: {exc!r}") from None
    if response.status_code != 200:
        raise ReportUnavailable(f"{url} answered HTTP {response.status_code}")
    try:
        return PublicReport.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReportUnavailable(
            f"{url} is not a Cacheon public report: {where}: {first['msg']}"
        ) from None


def place(report: PublicReport, hotkey: str) -> str:
    """The hotkey's rank in the report's standings, in words."""
    if report.leader is not None and report.leader.hotkey == hotkey:
        return "1 (leader)"
    if report.runner_up is not None and report.runner_up.hotkey == hotkey:
        return "2 (runner-up)"
    if any(s.hotkey == hotkey for s in report.pending):
        return "pending: more launches in later rounds"
    return "unranked"


def render_report(report: PublicReport, hotkey: str, out: Console) -> None:
    out.print(
        f"validator {report.validator_hotkey} (v{report.validator_version}, evaluation"
        f" {report.evaluation_version}), netuid {report.netuid}, report of block {report.block}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"rank: {place(report, hotkey)}", highlight=False)
    standings = Table(title="Standings")
    for column in ("place", "hotkey", "image", "speed ratio", "bounds", "launches"):
        standings.add_column(column)
    for name, standing in (("leader", report.leader), ("runner-up", report.runner_up)):
        if standing is not None:
            standings.add_row(name, *_standing(standing, hotkey))
    for standing in report.pending:
        standings.add_row("pending", *_standing(standing, hotkey))
    out.print(standings)
    if report.launch_noise is not None:
        out.print(f"launch noise sigma_L {report.launch_noise:.4f} (log scale)", highlight=False)
    mine = sorted(
        (v for v in report.verdicts if v.hotkey == hotkey), key=lambda v: v.at, reverse=True
    )
    if not mine:
        out.print(f"no verdict for {hotkey} in this report", highlight=False)
    else:
        _verdicts(mine[:VERDICTS_SHOWN], out)
    _launches(report, hotkey, out)


def _standing(standing: Standing, hotkey: str) -> tuple[str, ...]:
    you = " (you)" if standing.hotkey == hotkey else ""
    ratio = "—" if standing.speed_ratio is None else f"x{standing.speed_ratio:.4f}"
    low, high = standing.ratio_low, standing.ratio_high
    span = "—" if low is None or high is None else f"x{low:.4f} .. x{high:.4f}"
    return (standing.hotkey + you, standing.image, ratio, span, str(standing.launches))


def _verdicts(verdicts: list[PublishedVerdict], out: Console) -> None:
    """One verdict a few lines: meanings and details are sentences, too long for a table cell."""
    out.print("your latest verdicts:")
    for v in verdicts:
        reason = f" {v.reason.value}" if v.reason else ""
        where = f"round {v.round_id}" if v.round_id else "pre-screen"
        out.print(f"  {where}  {v.digest[:19]}…  {v.outcome.value}{reason}", highlight=False)
        explained = meaning(v.reason, v.outcome)
        for label, text in (("means", explained), ("detail", v.detail)):
            if text:
                out.print(f"    {label}: {text}", highlight=False, soft_wrap=True)


def _launches(report: PublicReport, hotkey: str, out: Console) -> None:
    """The hotkey's launches in the report's round: the raw evidence behind its ratio."""
    played = report.round
    if played is None:
        return
    keys = {c.key for c in played.contestants if c.hotkey == hotkey}
    launches = [launch for launch in played.launches if launch.contestant in keys]
    if not launches:
        return
    raw = RoundReport(round_id=played.round_id, launches=played.launches, results=played.results)
    try:
        speeds = {(s.key, s.at): s.log_speed for s in launch_speeds(raw)}
    except RoundVoid:
        speeds = {}
    table = Table(title=f"Your launches in round {played.round_id} (seed {played.seed[:16]}…)")
    for column in ("#", "key", "blocks", "speed (1/s)", "end"):
        table.add_column(column)
    for launch in launches:
        log_speed = speeds.get((launch.contestant, (launch.started_ns + launch.ended_ns) / 2))
        table.add_row(
            str(launch.index),
            launch.contestant,
            str(len(launch.levels)),
            "—" if log_speed is None else f"{math.exp(log_speed):.3f}",
            f"{launch.reason}: {launch.detail[-60:]}" if launch.reason else "ok",
        )
    out.print(table)
