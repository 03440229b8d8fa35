"""`make demo`'s path, headless: the same code over the suite's services."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console

from cacheon.protocol import ReasonCode
from cacheon.testing.demo import run_demo_on
from cacheon.testing.fake_pods import LoopThread
from cacheon.testing.local_arena import Services, start_more_pods
from cacheon.testing.services import DockerDaemon, Registry, SeaweedS3, Sshd


@pytest.fixture
def services(
    docker_daemon: DockerDaemon, registry: Registry, pod_sshd: Sshd, s3: SeaweedS3
) -> Iterator[Services]:
    loop = LoopThread()
    try:
        yield Services(docker_daemon, registry, pod_sshd, s3, loop)
    finally:
        loop.stop()


def test_demo_prints_leaderboard_verdicts_and_weights(services: Services, tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_demo_on(services, tmp_path, Console(file=out, width=120))
    printed = out.getvalue()
    _shows_each_step(printed.splitlines())
    assert report.leader is not None
    assert report.runner_up is not None
    for reason in (ReasonCode.CROWNED, ReasonCode.COPY_OF, ReasonCode.BAD_COMMITMENT):
        assert reason.value in printed
    assert "0.800" in printed
    assert "0.200" in printed
    page = (tmp_path / "leaderboard.html").read_text()
    assert report.leader.hotkey in page


def _shows_each_step(lines: list[str]) -> None:
    """The live view, printed once at its end on a console that is not a terminal: a row per
    step with what came of it, a bar per launch (`B, C1…Cn, B'`)."""
    done = [line.split()[1] for line in lines if line.startswith("✓ ")]
    round_steps = [step for step in done if step != "weights"]
    assert round_steps == ["rent", "install", "provision", "launches", "score"], lines
    # weights are the loop's step: set to the burn uid while nobody leads, then after the round
    assert done[-1] == "weights", lines
    assert "uid 2 0.800" in next(line for line in reversed(lines) if line.startswith("✓ weights"))
    launches = [line for line in lines if line.startswith("launch ")]
    assert "B baseline" in launches[0], launches
    assert "B' baseline" in launches[-1], launches
    assert any(" fast " in line and "done" in line for line in launches), launches
    assert any(" cheat " in line and "failed: conformance" in line for line in launches), launches


def test_the_demo_on_two_pods_shows_both_rounds(
    services: Services, docker_daemon: DockerDaemon, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        more = start_more_pods(stack, docker_daemon, 1)
        two = Services(services.docker, services.registry, services.pod, services.s3,
                       services.loop, more)  # fmt: skip
        out = io.StringIO()
        report = run_demo_on(two, tmp_path, Console(file=out, width=160), pods=2)
    printed = out.getvalue()
    rounds = {line.split()[1] for line in printed.splitlines() if line.startswith("│ r0")}
    assert len(rounds) == 2, printed
    for round_id in rounds:  # each round's own rows, from rent to score
        for step in ("rent", "install", "launches", "score"):
            assert f"✓ {round_id} {step}" in printed, (round_id, step)
    pods = {line.split("│")[2].strip() for line in printed.splitlines() if line.startswith("│ r0")}
    assert len(pods) == 2, printed
    assert report.leader is not None
    assert ReasonCode.COPY_OF.value in printed
