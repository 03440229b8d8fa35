"""The leaderboard page's inline stylesheet and script.

The page is one self-contained file: it is served by the status server and published to S3
beside each report, where no other asset can be relied on, so nothing is fetched from anywhere.
The script only turns UTC timestamps into local "5 min ago" text and marks the page ready; the
page reads the same without it. Its sha256 goes into the page's Content-Security-Policy, which
forbids every other script and every network fetch.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

STYLE: Final = """
:root { --ink:#17202a; --muted:#5d6b7a; --line:#dde3ea; --bg:#f4f6f9; --card:#fff;
  --accent:#2457c5; --gold:#b7791f; --silver:#6b7a8c; --pass:#1f7a3f; --fail:#b42318;
  --nd:#6b7280; --pending:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink); background:var(--bg); }
code, .mono { font-family: ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:.9em; }
header { background:#101826; color:#e8edf4; padding:18px 32px; }
header h1 { margin:0; font-size:22px; letter-spacing:.2px; }
header h1 span { color:#8fb0ff; font-weight:500; }
.meta { display:flex; flex-wrap:wrap; gap:6px 22px; margin-top:8px; color:#b8c3d1; font-size:13px; }
.meta b { color:#fff; font-weight:600; }
main { max-width:1320px; margin:0 auto; padding:22px 32px 40px; }
.podium { display:grid; grid-template-columns: 1.25fr 1fr .9fr; gap:18px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px 18px; }
.card h2 { margin:0 0 10px; font-size:13px; text-transform:uppercase; letter-spacing:.08em;
  color:var(--muted); }
#leader { border-top:4px solid var(--gold); }
#runner-up { border-top:4px solid var(--silver); }
#next-round { border-top:4px solid var(--accent); }
.hotkey { font-size:13px; word-break:break-all; font-weight:600; }
.image { color:var(--muted); font-size:12.5px; word-break:break-all; margin-top:2px; }
.ratio { margin-top:12px; display:flex; align-items:baseline; gap:10px; flex-wrap:wrap; }
.ratio .x { font-size:34px; font-weight:700; letter-spacing:-.5px; }
.ratio .bounds { color:var(--muted); }
.ratio.small .x { font-size:16px; font-weight:600; }
.bar { margin-top:6px; }
.empty { color:var(--muted); font-style:italic; }
.facts { margin:6px 0 0; display:grid; grid-template-columns:auto 1fr; gap:3px 12px; font-size:13.5px; }
.facts dt { color:var(--muted); }
.facts dd { margin:0; word-break:break-all; }
section.block { margin-top:22px; }
section.block h2 { font-size:17px; margin:0 0 8px; }
section.block p.note { margin:0 0 8px; color:var(--muted); font-size:13px; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line);
  border-radius:10px; overflow:hidden; font-size:13.5px; }
th { text-align:left; font-weight:600; color:var(--muted); background:#f9fafb; font-size:12px;
  text-transform:uppercase; letter-spacing:.05em; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
tr:last-child td { border-bottom:none; }
td.when { white-space:nowrap; color:var(--muted); }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px;
  font-weight:600; color:#fff; white-space:nowrap; }
.badge.PASS { background:var(--pass); } .badge.FAIL { background:var(--fail); }
.badge.NO_DECISION { background:var(--nd); }
table.launches { margin-top:10px; }
code.reason { background:#eef2f7; padding:1px 6px; border-radius:4px; white-space:nowrap; }
.detail { color:var(--muted); font-size:12.5px; }
.chips span { display:inline-block; margin:0 4px 4px 0; padding:1px 8px; border-radius:6px;
  background:#eef2f7; font-family:ui-monospace,Menlo,monospace; font-size:12.5px; }
footer { max-width:1320px; margin:0 auto; padding:0 32px 30px; color:var(--muted); font-size:12.5px; }
@media (max-width: 980px) { .podium { grid-template-columns:1fr; } main, header { padding:14px; } }
"""

SCRIPT: Final = """
(function () {
  var now = Date.now();
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var at = Date.parse(el.getAttribute("datetime"));
    if (isNaN(at)) { return; }
    var s = Math.round((now - at) / 1000), future = s < 0, a = Math.abs(s), text;
    if (a < 60) { text = a + " s"; }
    else if (a < 3600) { text = Math.round(a / 60) + " min"; }
    else if (a < 172800) { text = Math.round(a / 3600) + " h"; }
    else { text = Math.round(a / 86400) + " d"; }
    el.title = new Date(at).toLocaleString();
    if (!future && el.hasAttribute("data-due")) { el.textContent = "due now"; return; }
    el.textContent = future ? "in " + text : text + " ago";
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; style-src 'unsafe-inline'; script-src '{_sha256(SCRIPT)}'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)
"""No fetches, no foreign scripts; inline styles only (the SVG bars use attributes)."""
