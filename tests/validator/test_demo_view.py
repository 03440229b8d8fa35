"""The demo's live view, fed a round's steps and agent events the way the daemon reports them:
every step is a row with what came of it, every launch a bar (the validator's `LaunchBars`)."""

from __future__ import annotations

import io

from rich.console import Console

from cacheon.protocol import Phase, ProgressEvent
from cacheon.testing.demo_view import DemoView
from cacheon.validator.watch import Step

BASELINE = "127.0.0.1:5000/cacheon/baseline@sha256:" + "b" * 64
FAST = "127.0.0.1:5000/miners/fast@sha256:" + "f" * 64
CHEAT = "127.0.0.1:5000/miners/cheat@sha256:" + "c" * 64


def _event(phase: Phase, **fields: object) -> ProgressEvent:
    return ProgressEvent(ts=0.0, phase=phase, **fields)


def _launch(view: DemoView, index: int, key: str, image: str, blocks: int = 2) -> None:
    view.progress(_event(Phase.PULL, launch=index, contestant=key, message=image))
    view.progress(_event(Phase.START, launch=index, contestant=key))
    for done in range(1, blocks + 1):
        view.progress(_event(Phase.MEASURE, launch=index, contestant=key, done=done, total=blocks))


def test_each_step_and_launch_is_shown() -> None:
    out = io.StringIO()
    names = {BASELINE: "baseline", FAST: "fast", CHEAT: "cheat"}
    with DemoView(Console(file=out, width=140), names) as view:
        view.step(Step.RENT, "a pod from lium")
        view.step(Step.RENT, "pod-7 from lium, 1.00/h")
        view.step(Step.INSTALL, "the agent on pod-7 over SSH")
        view.step(Step.PROVISION, "pod checks, toy@r1, baseline")
        view.progress(_event(Phase.PREPARE, message="model: config.json verified"))
        view.step(Step.LAUNCHES, "B C1 C2 B")
        _launch(view, 0, "B", BASELINE)
        _launch(view, 1, "C1", FAST)
        view.progress(_event(Phase.PULL, launch=2, contestant="C2", message=CHEAT))
        view.progress(_event(Phase.FAILED, launch=2, contestant="C2", error="conformance: x"))
        _launch(view, 3, "B", BASELINE)
        view.progress(_event(Phase.SCORE, launch=3, contestant="B"))
        view.progress(_event(Phase.DONE, message="report uploaded with 4 traces"))
        view.step(Step.SCORE, "round r1: 3 verdicts")
        view.step(Step.WEIGHTS, "set at block 40: uid 2 1.000")
    lines = out.getvalue().splitlines()

    def row(start: str) -> str:
        found = [line for line in lines if line.startswith(start)]
        assert len(found) == 1, (start, lines)
        return found[0]

    assert "pod-7 from lium, 1.00/h" in row("✓ rent")
    for step in ("✓ rent", "✓ install", "✓ provision", "✓ launches"):
        assert " s " in row(step), row(step)  # how long it took
    assert "pod checks, toy@r1, baseline" in row("✓ provision")
    assert "B C1 C2 B" in row("✓ launches")
    assert "round r1: 3 verdicts" in row("✓ score")
    assert "set at block 40: uid 2 1.000" in row("✓ weights")
    assert "2/2" in row("launch 0   B baseline")
    assert "done" in row("launch 1  C1 fast")
    assert "failed: conformance: x" in row("launch 2  C2 cheat")
    assert "done" in row("launch 3  B' baseline")
    order = [line.split()[1] for line in lines if line.startswith("✓")]
    assert order == ["rent", "install", "provision", "launches", "score", "weights"]
