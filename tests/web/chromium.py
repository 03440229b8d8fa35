"""Headless Debian `chromium` for the page tests, and a small DOM to assert on what it rendered.

Chromium runs as root in the test machines, hence `--no-sandbox`; every background service that
would reach the network is off, and the profile lives in the test's temp dir. Console messages
(and uncaught exceptions) are logged to stderr as `:CONSOLE` lines with `--enable-logging=stderr`.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
TIMEOUT_S = 90


def binary() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is missing: run scripts/install-system-packages"
    return found


@dataclass(frozen=True)
class Loaded:
    dom: str
    console: tuple[str, ...]
    """Console messages and uncaught errors the page produced."""


async def run(url: str, profile: Path, *action: str) -> Loaded:
    proc = await asyncio.create_subprocess_exec(
        binary(), *FLAGS, f"--user-data-dir={profile}", *action, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    lines = err.decode(errors="replace").splitlines()
    console = tuple(line for line in lines if ":CONSOLE" in line or "Uncaught" in line)
    return Loaded(out.decode(), console)


async def dump_dom(url: str, profile: Path) -> Loaded:
    return await run(url, profile, "--dump-dom")


async def screenshot(url: str, profile: Path, png: Path, size: str = "1400,2000") -> Loaded:
    return await run(url, profile, f"--screenshot={png}", f"--window-size={size}")


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def content(self) -> str:
        """All text below this node, whitespace collapsed."""
        parts = [*self.text, *(child.content() for child in self.children)]
        return " ".join(" ".join(parts).split())

    def find(self, *, id: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        classes = self.attrs.get("class", "").split()
        if (id is None or self.attrs.get("id") == id) and (cls is None or cls in classes):
            found.append(self)
        for child in self.children:
            found += child.find(id=id, cls=cls)
        return found


_VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "circle", "rect", "line"})


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    return builder.root
