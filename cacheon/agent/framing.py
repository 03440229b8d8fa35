"""SSE framing on the measured path, and the miner contract's limits on what a stream may cost.

The client must never be what is measured (DESIGN.md §4.3), and a contestant can only hurt
itself (§3): a stream that costs the client more than the contract allows is that contestant's
`bad_response`, never a saturated client that voids a block for everyone. So every stream is
counted as it is framed, and its cost is bounded by construction:

- the framer is linear in the bytes received: it scans each byte once (a search resumes where
  the last one stopped) and drops what it has framed once per read, never once per event;
- every event counts, whether it carries data, only comments (`:` lines) or other fields, and
  so do the lines that are not `data:` lines, the reads the stream arrived in and its bytes;
- while the stream runs, each count is capped by what `max_tokens` tokens may cost, so the work
  spent on a hostile response before it is cut off is bounded too; after the block, when the
  tokens actually streamed are known (`response.parse`), the same limits are checked against
  that number (`StreamStats.check`).

The numbers are the contract's (`cacheon/contract.py` states them to miners; a test keeps the
two equal). They leave wide room over vLLM, measured on the CPU build (`bench/stream_cost.py`):
vLLM sends one event per token or fewer (several tokens share an event under load), about 0.9
kB per token with top-5 logprobs, plus three events per response (role, usage, `[DONE]`), no
comment lines, and arrives in fewer reads than it has events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cacheon.agent.response import Event, ResponseFault
from cacheon.protocol import ReasonCode

DONE: Final = b"[DONE]"
MAX_EVENT_BYTES: Final = 1 << 20
"""A single event larger than this is a fault, whatever max_tokens allows (64 tokens with
logprobs in one event are ~60 kB)."""


@dataclass(frozen=True)
class Allowance:
    """How many of one thing a response may carry: `per_token` for each token it streams (the
    token's own chunk included), plus `per_response`."""

    name: str
    per_token: int
    per_response: int

    def of(self, tokens: int) -> int:
        return self.per_token * tokens + self.per_response

    def rule(self) -> str:
        return f"{self.per_token} a token + {self.per_response}"


EVENTS: Final = Allowance("events", 4, 16)
"""Every event counts: data, comment-only (`:`) or other fields."""
NON_DATA_LINES: Final = Allowance("lines that are not `data:` lines", 4, 16)
"""Comments (`:`), `event:`, `id:`, `retry:` and blank lines inside events."""
READS: Final = Allowance("reads", 4, 16)
"""The pieces the stream arrives in: an event written at once arrives in one read or fewer."""
BYTES: Final = Allowance("bytes", 8 << 10, 64 << 10)
ALLOWANCES: Final = (EVENTS, NON_DATA_LINES, READS, BYTES)


@dataclass
class StreamStats:
    """What one response's stream cost the client, counted as it was framed."""

    events: int = 0
    non_data_lines: int = 0
    reads: int = 0
    bytes: int = 0

    def counts(self) -> tuple[int, int, int, int]:
        """In the order of `ALLOWANCES`."""
        return self.events, self.non_data_lines, self.reads, self.bytes

    def over(self, tokens: int) -> str | None:
        """What exceeds the contract's limits for `tokens` streamed tokens, in numbers; None
        when the stream is within them."""
        excess = [
            f"{count} {allowance.name} (at most {allowance.rule()} = {allowance.of(tokens)})"
            for allowance, count in zip(ALLOWANCES, self.counts(), strict=True)
            if count > allowance.of(tokens)
        ]
        if not excess:
            return None
        return f"the stream exceeds the contract's limits for {tokens} tokens: " + ", ".join(excess)

    def check(self, tokens: int) -> None:
        """Raise the contestant's `bad_response` when the stream cost more than `tokens` allow."""
        problem = self.over(tokens)
        if problem is not None:
            raise ResponseFault(ReasonCode.BAD_RESPONSE, problem)


@dataclass
class Framer:
    """Frames one response's SSE bytes into data events, counting and capping as it goes."""

    max_tokens: int
    stats: StreamStats = field(default_factory=StreamStats)
    _buffer: bytearray = field(default_factory=bytearray)
    _scanned: int = 0
    """Bytes at the start of the buffer known to hold no event terminator."""

    def feed(self, chunk: bytes, now_ns: int, events: list[Event]) -> bool:
        """Frame one read into `events`, all stamped `now_ns`; True once `[DONE]` arrived."""
        stats = self.stats
        stats.reads += 1
        stats.bytes += len(chunk)
        self._cap(READS, stats.reads)
        self._cap(BYTES, stats.bytes)
        buffer = self._buffer
        buffer += chunk
        start = 0
        scan = max(0, self._scanned - 1)  # a terminator may straddle the previous read
        while (end := buffer.find(b"\n\n", scan)) >= 0:
            data = self._event(bytes(memoryview(buffer)[start:end]))
            start = scan = end + 2
            if data is not None:
                events.append(Event(now_ns, data))
                if data == DONE:
                    return True
        if start:
            # once per read: what is left is the tail of this read, so no byte moves twice
            del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > MAX_EVENT_BYTES:
            raise ResponseFault(
                ReasonCode.BAD_RESPONSE, f"an event exceeds {MAX_EVENT_BYTES} bytes"
            )
        return False

    def _event(self, block: bytes) -> bytes | None:
        """The data of one event, or None for an event without data lines; counts both."""
        stats = self.stats
        stats.events += 1
        self._cap(EVENTS, stats.events)
        if block.startswith(b"data: ") and b"\n" not in block:
            return block[6:]  # the one shape vLLM sends
        lines = block.split(b"\n")
        data = [line for line in lines if line.startswith(b"data:")]
        stats.non_data_lines += len(lines) - len(data)
        self._cap(NON_DATA_LINES, stats.non_data_lines)
        if not data:
            return None
        return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in data)

    def _cap(self, allowance: Allowance, count: int) -> None:
        cap = allowance.of(self.max_tokens)
        if count > cap:
            raise ResponseFault(
                ReasonCode.BAD_RESPONSE,
                f"the stream exceeds the contract's limits for max_tokens={self.max_tokens}:"
                f" more than {cap} {allowance.name} (at most {allowance.rule()})",
            )
