"""The leaderboard page as a browser shows it (headless Debian chromium), and as HTML."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.protocol import Outcome, PublicReport, PublishedVerdict, ReasonCode
from cacheon.validator.leaderboard import render_leaderboard
from cacheon.validator.reasons import MEANINGS, meaning
from tests.web.chromium import Node, dump_dom, parse, screenshot
from tests.web.web_season import Season, running

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TIMES, DASH = "\u00d7", "\u2013"


@pytest.mark.services
def test_the_page_in_a_browser(season: Season, tmp_path: Path) -> None:
    keys = season.hotkeys

    async def scenario() -> tuple[str, tuple[str, ...]]:
        async with running(season.daemon) as url:
            page = await dump_dom(url + "/", tmp_path / "profile")
            shot = await screenshot(url + "/", tmp_path / "profile", tmp_path / "leaderboard.png")
            return page.dom, page.console + shot.console

    dom, console = asyncio.run(scenario())
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "leaderboard.png", ARTIFACTS / "leaderboard.png")
    assert console == ()
    root = parse(dom)
    (leader,) = root.find(id="leader")
    assert leader.attrs["data-hotkey"] == keys["fast"]
    assert keys["fast"] in leader.content()
    (ratio,) = leader.find(cls="ratio")
    shown = ratio.content()
    value, low, high = (float(ratio.attrs[k]) for k in ("data-ratio", "data-low", "data-high"))
    assert low < value < high
    assert f"{TIMES}{value:.3f}" in shown
    assert f"bounds {TIMES}{low:.3f} {DASH} {TIMES}{high:.3f}" in shown
    assert "3 launches" in shown
    (runner,) = root.find(id="runner-up")
    assert runner.attrs["data-hotkey"] in {keys["close"], keys["rookie"]}
    (pending,) = root.find(id="pending")
    assert len(pending.find(cls="ratio")) == 1
    rows = root.find(cls="verdict")
    reasons = {(row.attrs["data-hotkey"], row.attrs["data-reason"]) for row in rows}
    assert {
        (keys["fast"], "crowned"),
        (keys["steady"], "not_faster"),
        (keys["sloppy"], "greedy_consistency"),
        (keys["copycat"], "copy_of"),
        (keys["typo"], "bad_commitment"),
        (keys["close"], "pod_lost"),
    } <= reasons
    sloppy = next(r for r in rows if r.attrs["data-hotkey"] == keys["sloppy"])
    assert MEANINGS[ReasonCode.GREEDY_CONSISTENCY] in sloppy.content()
    (versions,) = root.find(id="evaluation-version")
    assert versions.content() == season.daemon.version
    (nxt,) = root.find(id="next-round")
    assert "no round running" in nxt.content()
    (last,) = root.find(id="last-round")
    assert "r3" in last.content()
    # the page's script ran: relative times, and its ready mark
    (body,) = [n for n in _walk(root) if n.tag == "body"]
    assert body.attrs.get("data-ready") == "1"
    assert "ago" in rows[0].content()


@pytest.mark.services
def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The detector the page test relies on sees an uncaught error and a console message."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><p>x</p><script>console.log('hi'); nope();</script>")
    loaded = asyncio.run(dump_dom(page.as_uri(), tmp_path / "profile"))
    assert any("Uncaught ReferenceError" in line for line in loaded.console)
    assert any('"hi"' in line for line in loaded.console)


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _report(**fields: object) -> PublicReport:
    base: dict[str, object] = {
        "validator_hotkey": "5Validator",
        "validator_version": "0.1.0",
        "evaluation_version": "abc123",
        "netuid": 14,
        "block": 100,
        "published_at": time.time(),
    }
    return PublicReport.model_validate({**base, **fields})


def test_an_empty_arena_renders() -> None:
    html = render_leaderboard(_report())
    assert "nobody yet: emission goes to the burn uid" in html
    assert "no verdict yet" in html
    assert "no round yet" in html


def test_what_miners_wrote_is_escaped() -> None:
    hostile = PublishedVerdict(
        hotkey='5Evil"><script>alert(1)</script>',
        digest="sha256:" + "e" * 64,
        image="docker.io/evil/<img src=x onerror=alert(2)>@sha256:" + "e" * 64,
        outcome=Outcome.FAIL,
        reason=ReasonCode.CRASHED,
        detail="<script>alert(3)</script>",
        at=time.time(),
    )
    html = render_leaderboard(_report(verdicts=[hostile]))
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own


def test_every_reason_code_has_a_meaning() -> None:
    assert set(MEANINGS) == set(ReasonCode)
    assert meaning(None, Outcome.PASS) == "passed every check"
    assert "never the miner's" in meaning(ReasonCode.S3_UNAVAILABLE, Outcome.NO_DECISION)
    assert "unless it struck during the image's own launch" in meaning(
        ReasonCode.POD_LOST, Outcome.NO_DECISION
    )
    assert meaning(ReasonCode.OOM, Outcome.FAIL) == MEANINGS[ReasonCode.OOM]
