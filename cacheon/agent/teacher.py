"""Teacher forcing through the baseline: the I/O half of the correctness gate (DESIGN.md §4.4).

During `B'` the baseline's own endpoints re-score every contestant response: `/tokenize` turns
the prompt's messages into ids exactly as the baseline's chat template does, and
`/v1/completions` on prompt ids ⊕ the contestant's token ids with `prompt_logprobs: 20` and
`max_tokens: 1` returns the reference distribution at every output position (and, through
`logprobs: 20` on the one generated token, the position after the last one, where a stop without
an EOS token is judged). The pure checks live in `correctness.py`.

Cost: vLLM returns prompt_logprobs for every prompt position, about 1.5 kB of JSON per position,
built in Python on the server. Measured on the CPU engine (2 cores): 0.3-0.9 ms of request time
and 8-16 µs of client parsing per position, so responses to prompts longer than
`score_prompt_cap` tokens are scored on a seeded sample (`select_scored`), and `Cost` reports
what scoring took (the round logs it).

Errors: `BaselineError` when the baseline does not answer well after retries. That is never the
contestant's fault (the round reports NO_DECISION, baseline_unstable).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cacheon.agent import response as stream
from cacheon.agent.correctness import (
    Reference,
    RefPosition,
    Reported,
    Response,
    ResponseScore,
    TopList,
    score_response,
)
from cacheon.protocol import GateThresholds

REFERENCE_TOP = 20
"""prompt_logprobs asked of the baseline: vLLM's default `--max-logprobs`."""
TOKEN_PREFIX = "token_id:"  # noqa: S105 (a wire prefix, not a password)

_T = TypeVar("_T")
Messages = Sequence[tuple[str, str]]
"""(role, content) pairs, as the workload generates them."""


class BaselineError(Exception):
    """The baseline failed to tokenize or score; the round cannot judge correctness."""


def response_from_stream(key: str, max_tokens: int, parsed: stream.Response) -> Response:
    """The gate's view of a response the load generator parsed, its streamed text included."""
    tokens = tuple(
        Reported(token, logprob, top)
        for token, logprob, top in zip(
            parsed.token_ids, parsed.logprobs, parsed.top_logprobs, strict=True
        )
    )
    return Response(key, tokens, parsed.finish_reason, max_tokens, parsed.text)


def eos_token_ids(model_dir: Path) -> frozenset[int]:
    """The ids that end a sequence: `generation_config.json`, else `config.json` (either may
    hold one id or a list, e.g. Qwen2.5's [151645, 151643])."""
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.exists():
            value = json.loads(path.read_text()).get("eos_token_id")
            if value is not None:
                return frozenset(value if isinstance(value, list) else [value])
    raise BaselineError(f"no eos_token_id in {model_dir}/generation_config.json or config.json")


def _top_pairs(entries: Mapping[str, Any]) -> TopList:
    pairs = []
    for token, logprob in entries.items():
        tid = token[len(TOKEN_PREFIX) :] if token.startswith(TOKEN_PREFIX) else token
        pairs.append((int(tid), float(logprob)))
    return tuple(sorted(pairs, key=lambda p: -p[1]))


def parse_completion(body: bytes, prompt_len: int, output: Sequence[int]) -> Reference:
    """vLLM's `/v1/completions` answer (with `return_tokens_as_token_ids`) as a Reference.

    `prompt_logprobs[i]` maps token ids to `{"logprob", "rank", "decoded_token"}` for the top-K
    and the actual token i (which carries its own rank when outside the top-K).
    """
    try:
        choice = orjson.loads(body)["choices"][0]
        entries = choice["prompt_logprobs"]
        if len(entries) != prompt_len + len(output):
            raise BaselineError(
                f"{len(entries)} prompt_logprobs for {prompt_len} + {len(output)} tokens"
            )
        positions = []
        for t, token in enumerate(output):
            entry = entries[prompt_len + t]
            top = sorted(
                (
                    (int(k), float(v["logprob"]))
                    for k, v in entry.items()
                    if v["rank"] <= REFERENCE_TOP
                ),
                key=lambda p: -p[1],
            )
            positions.append(RefPosition(float(entry[str(token)]["logprob"]), tuple(top)))
        after = _top_pairs(choice["logprobs"]["top_logprobs"][0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BaselineError(f"unexpected /v1/completions answer: {exc!r}"[:300]) from exc
    return Reference(tuple(positions), after)


@dataclass
class Cost:
    """What teacher forcing took, so the prompt cap can be set from measurements."""

    requests: int = 0
    positions: int = 0
    """Prompt plus output positions the baseline returned logprobs for."""
    scored_tokens: int = 0
    response_bytes: int = 0
    request_s: float = 0.0
    """Wall time from send to the last byte, summed over requests."""
    parse_s: float = 0.0
    """Client CPU time spent decoding the answers."""
    skipped: list[str] = field(default_factory=list)
    """Keys of responses left unscored by the prompt cap."""


class Teacher:
    """A client of the baseline's tokenizer and teacher-forcing endpoints."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        model: str,
        *,
        timeout_s: float = 120.0,
        attempts: int = 3,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.cost = Cost()

    async def _post(self, path: str, body: Mapping[str, Any]) -> bytes:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, _Retryable)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post_once(path, body)
        except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
            raise BaselineError(f"baseline {path}: {exc!r}"[:300]) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post_once(self, path: str, body: Mapping[str, Any]) -> bytes:
        start = time.perf_counter()
        async with (
            asyncio.timeout(self.timeout_s),
            self.session.post(
                self.base_url + path,
                data=orjson.dumps(body),
                headers={"content-type": "application/json"},
            ) as answer,
        ):
            data = await answer.read()
        self.cost.request_s += time.perf_counter() - start
        if answer.status >= 500:
            raise _Retryable(f"HTTP {answer.status}: {data[:200]!r}")
        if answer.status != 200:
            raise BaselineError(f"baseline {path}: HTTP {answer.status}: {data[:300]!r}")
        return data

    async def tokenize_chat(self, messages: Messages) -> list[int]:
        body = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in messages],
            "add_generation_prompt": True,
            "add_special_tokens": False,
        }
        data = await self._post("/tokenize", body)
        try:
            return [int(t) for t in orjson.loads(data)["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"unexpected /tokenize answer: {data[:200]!r}") from exc

    async def detokenize(self, ids: Sequence[int]) -> str:
        data = await self._post("/detokenize", {"model": self.model, "tokens": list(ids)})
        try:
            return str(orjson.loads(data)["prompt"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"unexpected /detokenize answer: {data[:200]!r}") from exc

    async def reference(self, prompt_ids: Sequence[int], output: Sequence[int]) -> Reference:
        body = {
            "model": self.model,
            "prompt": [*prompt_ids, *output],
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": REFERENCE_TOP,
            "logprobs": REFERENCE_TOP,
            "return_tokens_as_token_ids": True,
        }
        data = await self._post("/v1/completions", body)
        start = time.process_time()
        ref = parse_completion(data, len(prompt_ids), output)
        self.cost.parse_s += time.process_time() - start
        self.cost.requests += 1
        self.cost.positions += len(prompt_ids) + len(output)
        self.cost.scored_tokens += len(output)
        self.cost.response_bytes += len(data)
        return ref


class _Retryable(Exception):
    """A 5xx from the baseline: worth another attempt."""


def select_scored(
    prompt_lens: Mapping[str, int], thresholds: GateThresholds, seed: str
) -> frozenset[str]:
    """Every response whose prompt fits `score_prompt_cap`, plus a seeded sample of the rest."""
    short = {k for k, n in prompt_lens.items() if n <= thresholds.score_prompt_cap}
    long = sorted(set(prompt_lens) - short)
    rng = random.Random(hashlib.sha256(f"{seed}/scored".encode()).digest())  # noqa: S311
    return frozenset(short | set(rng.sample(long, min(len(long), thresholds.long_prompt_sample))))


def text_sample(keys: Sequence[str], thresholds: GateThresholds, seed: str) -> frozenset[str]:
    rng = random.Random(hashlib.sha256(f"{seed}/text".encode()).digest())  # noqa: S311
    ordered = sorted(keys)
    return frozenset(rng.sample(ordered, min(len(ordered), thresholds.text_sample)))


async def score_responses(
    teacher: Teacher,
    responses: Sequence[Response],
    prompts: Mapping[str, Messages],
    thresholds: GateThresholds,
    *,
    eos_ids: frozenset[int],
    seed: str,
    prompt_ids: dict[str, list[int]] | None = None,
    concurrency: int = 4,
) -> list[ResponseScore]:
    """Teacher-forces the selected responses and scores each; `prompt_ids` caches tokenized
    prompts across the launches of a round (every contestant gets the same prompts)."""
    cache = prompt_ids if prompt_ids is not None else {}
    gate = asyncio.Semaphore(concurrency)

    async def ids_of(key: str) -> list[int]:
        if key not in cache:
            cache[key] = await teacher.tokenize_chat(prompts[key])
        return cache[key]

    async with asyncio.TaskGroup() as group:
        for key in {r.key for r in responses}:
            group.create_task(_limited(gate, ids_of(key)))
    chosen = select_scored({r.key: len(cache[r.key]) for r in responses}, thresholds, seed)
    checked = text_sample([r.key for r in responses if r.text is not None], thresholds, seed)
    teacher.cost.skipped.extend(r.key for r in responses if r.key not in chosen)

    async def one(r: Response) -> ResponseScore:
        ids = [t.token for t in r.tokens]
        ref = await teacher.reference(cache[r.key], ids) if ids else Reference((), ())
        text = await teacher.detokenize(_visible(ids, eos_ids)) if r.key in checked else None
        return score_response(r, ref, thresholds, eos_ids=eos_ids, detokenized=text)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_limited(gate, one(r))) for r in responses if r.key in chosen]
    return [t.result() for t in tasks]


def _visible(ids: Sequence[int], eos_ids: frozenset[int]) -> list[int]:
    """The ids whose text is streamed: vLLM sends no text for a final EOS token."""
    return list(ids[:-1]) if ids and ids[-1] in eos_ids else list(ids)


async def _limited(gate: asyncio.Semaphore, work: Awaitable[_T]) -> _T:
    async with gate:
        return await work
