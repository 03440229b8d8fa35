"""The load generator against toy servers run by the process runtime on loopback.

An honest server is timed as its knobs say; a server that sends empty chunks first gains
nothing; every hostile server ends in its fault reason within the request deadline.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import pytest

from cacheon.agent import metrics
from cacheon.agent.loadgen import BlockResult, LoadGenerator
from cacheon.agent.runtime import ProcessRuntime, ServerSpec
from cacheon.agent.workload import PromptSource, Purpose
from cacheon.protocol import ReasonCode, Workload
from cacheon.testing import toy_server
from cacheon.testing.toy_server import Fault, Knobs, Speed
from tests.agent.agent_toys import MODEL, free_ports

IMAGE = "local/toy@sha256:" + "0" * 64
TIMEOUT_S = 3.0


async def _measure(knobs: Knobs, tmp_path: Path, concurrency: int, count: int) -> BlockResult:
    command = [
        sys.executable,
        toy_server.__file__,
        "--host",
        "127.0.0.1",
        "--knobs",
        knobs.to_json(),
    ]
    runtime = ProcessRuntime(
        {IMAGE: command}, ServerSpec(MODEL, str(tmp_path), 4096), free_ports(1)
    )
    facts = await runtime.pull(IMAGE)
    assert facts.digest == "sha256:" + "0" * 64
    server = await runtime.start(IMAGE, "toy", tmp_path / "toy.log")
    try:
        async with LoadGenerator(server.target, MODEL, 2, TIMEOUT_S) as load:
            deadline = time.monotonic() + 20
            while await load.health() != 200:
                assert time.monotonic() < deadline, (tmp_path / "toy.log").read_text()
                await asyncio.sleep(0.1)
            prompts = PromptSource(Workload(max_tokens=32), "ab" * 32, 4096)
            return await load.run_block(prompts.block(Purpose.MEASURE, 1, 0, count), concurrency)
    finally:
        ended = await server.stop()
        assert ended.code is not None


def test_honest_server_is_timed_as_configured(tmp_path: Path) -> None:
    knobs = Knobs(speed=Speed(ttft_s=0.06, token_s=0.015, tokens_per_event=2))
    result = asyncio.run(_measure(knobs, tmp_path, concurrency=8, count=16))
    assert result.fault is None
    responses = [m.response for m in result.measured if m.response]
    assert len(responses) == 16
    ttft = statistics.median(metrics.ttft_ns(r) for r in responses) / 1e9
    itl = statistics.median(g for r in responses for g in metrics.itl_ns(r)) / 1e9
    assert 0.06 <= ttft < 0.06 * 1.5  # a shared 2-core host adds scheduling delay
    assert itl == pytest.approx(0.015, rel=0.1)  # an event of 2 tokens 30 ms apart: 2 gaps of 15
    assert all(r.events[-1].tokens <= 2 for r in responses)
    assert not result.saturated


def test_fake_ttft_gains_nothing(tmp_path: Path) -> None:
    honest = Knobs(speed=Speed(ttft_s=0.1, token_s=0.01))
    faked = Knobs(speed=honest.speed, fault=Fault.FAKE_TTFT)
    ttfts = []
    for knobs in (honest, faked):
        result = asyncio.run(_measure(knobs, tmp_path, concurrency=4, count=8))
        assert result.fault is None
        ttfts.append(
            statistics.median(metrics.ttft_ns(m.response) for m in result.measured if m.response)
        )
    assert ttfts[1] >= 0.1e9
    assert ttfts[1] == pytest.approx(ttfts[0], rel=0.1)


@pytest.mark.parametrize(
    ("fault", "reason", "message"),
    [
        (Fault.HANG, ReasonCode.BAD_RESPONSE, "no complete response within"),
        (Fault.SLOW_DRIP, ReasonCode.BAD_RESPONSE, "no complete response within"),
        (Fault.MALFORMED_SSE, ReasonCode.BAD_RESPONSE, "not JSON"),
        (Fault.INFINITE_STREAM, ReasonCode.BAD_RESPONSE, "events (at most"),
        (Fault.WRONG_MODEL, ReasonCode.CONFORMANCE, "served model"),
        (Fault.MISSING_TOKEN_IDS, ReasonCode.CONFORMANCE, "token_id"),
        (Fault.HUGE_CHUNK, ReasonCode.BAD_RESPONSE, "exceeds"),
        (Fault.CONNECTION_RESET, ReasonCode.BAD_RESPONSE, "connection failed"),
        (Fault.CRASH, ReasonCode.BAD_RESPONSE, "connection failed"),
    ],
)
def test_hostile_servers_fail_within_the_deadline(
    tmp_path: Path, fault: Fault, reason: ReasonCode, message: str
) -> None:
    knobs = Knobs(speed=Speed(ttft_s=0.01, token_s=0.002), fault=fault)
    started = time.monotonic()
    result = asyncio.run(_measure(knobs, tmp_path, concurrency=4, count=12))
    first = result.fault
    assert first is not None
    assert first.reason is reason
    assert message in first.detail
    assert time.monotonic() - started < TIMEOUT_S + 15
