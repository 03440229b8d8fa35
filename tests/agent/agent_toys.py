"""Helpers shared by the agent tests (toy speeds, a recording job context, free ports)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from cacheon.protocol import Phase, TraceRecord, TraceRef
from cacheon.testing.toy_server import Speed

MODEL = "Qwen/Qwen2.5-72B-Instruct"

ToyImage = Callable[..., str]
"""The `toy_image` fixture: (name, knobs, push options) -> the pushed image's digest reference."""


def speed(token_ms: float) -> Speed:
    """Coarse toy speeds, TTFT scaled with the token time so T_k scales exactly with it."""
    return Speed(ttft_s=2 * token_ms / 1000, token_s=token_ms / 1000)


class RecordingContext:
    """The job runner's context, recording instead of uploading."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.events: list[tuple[Phase, dict[str, object]]] = []
        self.traces: list[list[TraceRecord]] = []

    def emit(self, phase: Phase, **fields: object) -> None:
        self.events.append((phase, fields))

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        self.traces.append(list(records))
        name = f"trace-{len(self.traces) - 1:03d}.jsonl.gz"
        return TraceRef(name=name, sha256="0" * 64, size=0, records=len(records))


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
