"""The leaderboard page: who leads, by how much and how sure we are, and why everyone else lost.

One server-rendered HTML file from the public report (plus, when the daemon knows it, when the
next round comes), so the page served at `/` and the copy published to S3 beside each report are
the same bytes' worth of truth and need nothing else to display. Everything that came from a
miner or the agent (hotkeys, image names, details) is escaped.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

from cacheon.arena import RoundVoid, launch_speeds
from cacheon.log import get_logger
from cacheon.protocol import (
    PublicReport,
    PublicRound,
    PublishedVerdict,
    Role,
    RoundReport,
    Standing,
)
from cacheon.store.objects import ObjectStore, ObjectStoreError
from cacheon.validator.leaderboard_assets import CONTENT_SECURITY_POLICY, SCRIPT, STYLE
from cacheon.validator.reasons import meaning
from cacheon.validator.views import NextRound

log = get_logger("cacheon.validator.leaderboard")

PAGE_CONTENT_TYPE = "text/html; charset=utf-8"
VERDICTS_SHOWN = 25
DETAIL_CHARS = 160


def render_leaderboard(report: PublicReport, next_round: NextRound | None = None) -> str:
    """The whole page as one self-contained HTML document."""
    scale = _Scale.of([report.leader, report.runner_up, *report.pending])
    published = _time(report.published_at)
    noise = "—" if report.launch_noise is None else f"{report.launch_noise * 100:.1f}%"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta http-equiv="refresh" content="120">
<title>Cacheon leaderboard · netuid {report.netuid} · block {report.block}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>Cacheon <span>· subnet {report.netuid} leaderboard</span></h1>
<div class="meta">
<span>block <b id="block">{report.block}</b></span>
<span>published <b>{published}</b></span>
<span>validator <b class="mono" id="validator">{escape(report.validator_hotkey)}</b></span>
<span>version <b id="validator-version">{escape(report.validator_version)}</b></span>
<span>evaluation <b class="mono" id="evaluation-version">{escape(report.evaluation_version)}</b></span>
<span>launch noise &sigma; <b id="launch-noise">{noise}</b></span>
</div></header>
<main>
<div class="podium">
{_place("leader", "Leader", report.leader, scale)}
{_place("runner-up", "Runner-up", report.runner_up, scale)}
{_next_round(report, next_round)}
</div>
{_pending(report.pending, scale)}
{_verdicts(report.verdicts)}
{_round(report.round)}
</main>
<footer>Speed ratios are against the pinned vLLM baseline on the same pod in the same round
(higher is faster); the range is the one-sided confidence bound at each end. A challenger takes
the lead only when its lower bound against the leader clears the 1% moat. The raw evidence of
every round is in the JSON report published beside this page.</footer>
<script>{SCRIPT}</script>
</body></html>
"""


async def publish_leaderboard(
    store: ObjectStore, report: PublicReport, upcoming: NextRound | None
) -> None:
    """Publish the page beside the report (`<block>.html` and `index.html`); a failure is
    logged and left for the next report, like the report's own."""
    page = render_leaderboard(report, upcoming).encode()
    try:
        key = await asyncio.to_thread(_put_page, store, report.block, page)
    except ObjectStoreError as exc:
        log.warning("leaderboard page not published; next report will", reason=str(exc))
        return
    log.info("leaderboard page published", key=key)


def _put_page(store: ObjectStore, block: int, page: bytes) -> str:
    key = f"{store.prefix}/public/{block:012d}.html"
    store.put(key, page, PAGE_CONTENT_TYPE)
    store.put(f"{store.prefix}/public/index.html", page, PAGE_CONTENT_TYPE)
    return key


class _Scale:
    """One horizontal axis for every ratio bar on the page, so bars compare at a glance."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    @classmethod
    def of(cls, standings: Iterable[Standing | None]) -> _Scale:
        values = [1.0]
        for s in standings:
            if s is not None and s.speed_ratio is not None:
                values += [v for v in (s.ratio_low, s.speed_ratio, s.ratio_high) if v is not None]
        low, high = min(values), max(values)
        pad = max(0.02, (high - low) * 0.08)
        return cls(max(0.0, low - pad), high + pad)

    def x(self, value: float, width: float) -> float:
        return round((value - self.low) / (self.high - self.low) * width, 1)

    def bar(self, s: Standing, width: float = 320) -> str:
        if s.speed_ratio is None:
            return ""
        low = s.ratio_low if s.ratio_low is not None else s.speed_ratio
        high = s.ratio_high if s.ratio_high is not None else s.speed_ratio
        one, lo, hi, mid = (self.x(v, width) for v in (1.0, low, high, s.speed_ratio))
        return (
            f'<svg class="bar" width="{width}" height="22" viewBox="0 0 {width} 22" role="img"'
            f' aria-label="ratio {s.speed_ratio:.3f}, bounds {low:.3f} to {high:.3f}">'
            f'<line x1="0" y1="11" x2="{width}" y2="11" stroke="#dde3ea" stroke-width="2"/>'
            f'<line x1="{one}" y1="2" x2="{one}" y2="20" stroke="#9aa5b1" stroke-dasharray="3 2"/>'
            f'<text x="{min(one + 3, width - 40)}" y="9" font-size="9" fill="#6b7a8c">vLLM 1.0</text>'
            f'<rect x="{lo}" y="7" width="{max(hi - lo, 2)}" height="8" rx="4" fill="#2457c5"'
            f' fill-opacity="0.3"/><circle cx="{mid}" cy="11" r="5" fill="#2457c5"/></svg>'
        )


def _ratio(s: Standing, *, small: bool = False) -> str:
    if s.speed_ratio is None:
        return '<div class="ratio empty">not measured against the baseline yet</div>'
    low = "?" if s.ratio_low is None else f"{s.ratio_low:.3f}"
    high = "?" if s.ratio_high is None else f"{s.ratio_high:.3f}"
    return (
        f'<div class="ratio{" small" if small else ""}" data-ratio="{s.speed_ratio:.6f}"'
        f' data-low="{s.ratio_low}" data-high="{s.ratio_high}">'
        f'<span class="x">&times;{s.speed_ratio:.3f}</span>'
        f'<span class="bounds">bounds &times;{low} &ndash; &times;{high} · {s.launches} launch'
        f"{'' if s.launches == 1 else 'es'}</span></div>"
    )


def _place(element_id: str, title: str, s: Standing | None, scale: _Scale) -> str:
    if s is None:
        body = '<p class="empty">nobody yet: emission goes to the burn uid</p>'
        return f'<article class="card" id="{element_id}"><h2>{title}</h2>{body}</article>'
    uid = "—" if s.uid is None else str(s.uid)
    return (
        f'<article class="card" id="{element_id}" data-hotkey="{escape(s.hotkey)}">'
        f"<h2>{title} · uid {uid}</h2>"
        f'<div class="hotkey mono">{escape(s.hotkey)}</div>'
        f"{_image(s.image)}{_ratio(s)}{scale.bar(s)}</article>"
    )


def _next_round(report: PublicReport, upcoming: NextRound | None) -> str:
    facts: list[tuple[str, str]] = []
    current = report.round
    if upcoming is not None and upcoming.running:
        names = ", ".join(f"<code>{escape(r)}</code>" for r in upcoming.running)
        many = len(upcoming.running) > 1
        facts.append(
            ("now", f"round{'s' if many else ''} {names} {'are' if many else 'is'} running")
        )
        if upcoming.in_progress_since is not None:
            facts.append(("started", _time(upcoming.in_progress_since)))
    elif current is not None and current.state in ("planned", "running"):
        facts.append(("now", f"round <code>{escape(current.round_id)}</code> is {current.state}"))
    else:
        facts.append(("now", "no round running"))
    if upcoming is not None:
        if upcoming.next_poll_at is not None:
            facts.append(("next poll", _time(upcoming.next_poll_at, due=True)))
        facts.append(("polls", f"every {upcoming.poll_interval_s:g} s"))
        facts.append(("per round", f"up to {upcoming.max_challengers} challengers"))
        facts.append(("at once", f"up to {upcoming.max_parallel} rounds, one pod each"))
    if report.pending:
        count = len(report.pending)
        facts.append(("pending", f"{count} challenger{'' if count == 1 else 's'}"))
    if current is not None:
        facts.append(("last round", f"<code>{escape(current.round_id)}</code> · {current.state}"))
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<article class="card" id="next-round"><h2>Next round</h2><dl class="facts">{rows}</dl>'
        "</article>"
    )


def _pending(pending: tuple[Standing, ...], scale: _Scale) -> str:
    if not pending:
        rows = '<tr><td colspan="4" class="empty">no challenger is pending</td></tr>'
    else:
        rows = "".join(
            f'<tr data-hotkey="{escape(s.hotkey)}"><td>{_who(s.hotkey, s.uid)}{_image(s.image)}</td>'
            f"<td>{_ratio(s, small=True)}</td><td>{scale.bar(s, 220)}</td>"
            f'<td class="num">{s.launches}</td></tr>'
            for s in pending
        )
    return f"""<section class="block" id="pending"><h2>Pending challengers</h2>
<p class="note">Too close to call against the leader so far; each gets more launches in later
rounds until the moat decision is reached or its launch budget is spent.</p>
<table><thead><tr><th>challenger</th><th>speed vs baseline</th><th>uncertainty</th>
<th class="num">launches</th></tr></thead><tbody>{rows}</tbody></table></section>"""


def _verdicts(verdicts: tuple[PublishedVerdict, ...]) -> str:
    shown = verdicts[:VERDICTS_SHOWN]
    if not shown:
        rows = '<tr><td colspan="6" class="empty">no verdict yet</td></tr>'
    else:
        rows = "".join(_verdict_row(v) for v in shown)
    return f"""<section class="block" id="verdicts"><h2>Recent verdicts</h2>
<table><thead><tr><th>when</th><th>miner</th><th>outcome</th><th>reason</th><th>what it means</th>
<th>round</th></tr></thead><tbody>{rows}</tbody></table></section>"""


def _verdict_row(v: PublishedVerdict) -> str:
    reason = "" if v.reason is None else f'<code class="reason">{escape(v.reason.value)}</code>'
    detail = v.detail if len(v.detail) <= DETAIL_CHARS else v.detail[: DETAIL_CHARS - 1] + "…"
    return (
        f'<tr class="verdict" data-hotkey="{escape(v.hotkey)}" data-reason="'
        f'{escape(v.reason.value if v.reason else "")}"><td class="when">{_time(v.at)}</td>'
        f"<td>{_who(v.hotkey, None)}{_image(v.image or v.digest)}</td>"
        f'<td><span class="badge {v.outcome.value}">{v.outcome.value}</span></td>'
        f"<td>{reason}</td><td>{escape(meaning(v.reason, v.outcome))}"
        f'<div class="detail" title="{escape(v.detail)}">{escape(detail)}</div></td>'
        f"<td><code>{escape(v.round_id or '—')}</code></td></tr>"
    )


def _round(r: PublicRound | None) -> str:
    if r is None:
        return '<section class="block" id="last-round"><h2>Last round</h2><p class="empty">no round yet</p></section>'
    salt = (
        f"<code>{escape(r.salt)}</code>"
        if r.salt
        else '<span class="empty">revealed when the round is over</span>'
    )
    facts = [
        ("round", f"<code>{escape(r.round_id)}</code> · {escape(r.state)}"
         + (f" · <code class='reason'>{escape(r.reason.value)}</code>" if r.reason else "")),
        ("block", f"{r.block} · hash <code>{escape(r.block_hash)}</code>"),
        ("salt hash", f"<code>{escape(r.salt_hash)}</code>"),
        ("salt", salt),
        ("seed", f"<code>{escape(r.seed)}</code>"),
        ("launch order", '<span class="chips">' + "".join(f"<span>{escape(k)}</span>" for k in r.launch_order) + "</span>"),
    ]  # fmt: skip
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return f"""<section class="block" id="last-round"><h2>Last round</h2>
<div class="card"><dl class="facts">{rows}</dl></div>
{_launches(r)}</section>"""


def _launches(r: PublicRound) -> str:
    if not r.launches:
        return ""
    who = {c.key: c for c in r.contestants}
    outcomes = {res.key: res for res in r.results}
    try:
        timed = launch_speeds(
            RoundReport(round_id=r.round_id, launches=r.launches, results=r.results)
        )
    except RoundVoid:
        timed = ()
    speeds = {(t.key, t.at): t.log_speed for t in timed}
    base = [t.log_speed for t in timed if t.key == "B"]
    base_log = sum(base) / len(base) if base else None
    rows = []
    for launch in r.launches:
        c = who.get(launch.contestant)
        label = (
            "vLLM baseline" if c is None or c.role is Role.BASELINE else _who(c.hotkey or "", None)
        )
        log_speed = speeds.get((launch.contestant, (launch.started_ns + launch.ended_ns) / 2))
        ratio = (
            "—"
            if log_speed is None or base_log is None
            else f"&times;{math.exp(log_speed - base_log):.3f}"
        )
        result = outcomes.get(launch.contestant)
        outcome = launch.outcome or (result.outcome if result else None)
        badge = (
            "" if outcome is None else f'<span class="badge {outcome.value}">{outcome.value}</span>'
        )
        reason = launch.reason or (result.reason if result else None)
        code = "" if reason is None else f' <code class="reason">{escape(reason.value)}</code>'
        ttft = [lv.ttft_s for lv in launch.levels if lv.ttft_s is not None]
        ttft_text = "—" if not ttft else f"{min(ttft) * 1000:.0f} ms"
        rows.append(
            f'<tr><td class="num">{launch.index}</td><td><code>{escape(launch.contestant)}</code></td>'
            f'<td>{label}</td><td class="num">{ratio}</td><td class="num">{ttft_text}</td>'
            f"<td>{badge}{code}</td></tr>"
        )  # fmt: skip
    return f"""<table class="launches"><thead><tr><th class="num">#</th>
<th>key</th><th>contestant</th><th class="num">speed vs baseline</th><th class="num">best TTFT</th>
<th>outcome</th></tr></thead><tbody>{"".join(rows)}</tbody></table>"""


def _who(hotkey: str, uid: int | None) -> str:
    short = hotkey if len(hotkey) <= 18 else f"{hotkey[:8]}…{hotkey[-6:]}"
    tag = "" if uid is None else f" · uid {uid}"
    return f'<span class="mono" title="{escape(hotkey)}">{escape(short)}</span>{tag}'


def _image(image: str) -> str:
    """`registry/repo@sha256:` and the first 12 hex digits, as `docker images` shows them."""
    name, _, digest = image.rpartition("@")
    short = image if not name else f"{name}@{digest[:19]}…"
    return f'<div class="image mono" title="{escape(image)}">{escape(short)}</div>'


def _time(at: float, *, due: bool = False) -> str:
    stamp = datetime.fromtimestamp(at, UTC)
    flag = ' data-due="1"' if due else ""
    return (
        f'<time datetime="{stamp.isoformat(timespec="seconds")}"{flag}>'
        f"{stamp.strftime('%Y-%m-%d %H:%M UTC')}</time>"
    )
