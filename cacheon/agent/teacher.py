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

Errors, and whose they are. A request that carries only what the validator chose (the prompt's
`/tokenize`) and fails after retries is the baseline's: `BaselineError`, NO_DECISION for every
contestant not yet judged. A request that carries a contestant's tokens can also fail because of
those tokens (an id the baseline's tokenizer lacks, a sequence it cannot score), so when one
fails the teacher asks the baseline a control request, the same prompt with the baseline's own
answer to it (or bare, when it gave none): if the baseline answers that, the contestant's
request is tried once more and, failing again, is the contestant's (`ResponseRefused`, its FAIL
with the baseline's answer in the detail); if it does not, the baseline is down. Requests run
concurrently, but their failures come out one at a time, never as an `ExceptionGroup`, and the
baseline's own failure wins over a refusal seen beside it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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


class ResponseRefused(BaselineError):
    """The baseline would not score one response's tokens, twice, while it answered a control
    request between the two: the response's fault, not the baseline's. A `BaselineError` for
    callers that score only reference servers' own answers (calibration); the gate catches it
    first."""


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
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
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
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post_once(path, body)
        except _TRANSIENT as exc:
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


_TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError, _Retryable)
"""Failures worth another attempt at the same request (a reset connection, a 5xx)."""


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
    controls: Mapping[str, Sequence[int]] | None = None,
    concurrency: int = 4,
) -> list[ResponseScore]:
    """Teacher-forces the selected responses and scores each; `prompt_ids` caches tokenized
    prompts across the launches of a round (every contestant gets the same prompts), `controls`
    holds the baseline's own token ids per prompt, the control request of a refusal.

    Raises `ResponseRefused` when the baseline refuses a response's tokens but answers a control
    request, `BaselineError` when it fails on its own."""
    cache = prompt_ids if prompt_ids is not None else {}
    own = controls or {}

    async def ids_of(key: str) -> None:
        if key not in cache:
            cache[key] = await teacher.tokenize_chat(prompts[key])

    keys = dict.fromkeys(r.key for r in responses)
    await _each([functools.partial(ids_of, key) for key in keys], concurrency)
    chosen = select_scored({r.key: len(cache[r.key]) for r in responses}, thresholds, seed)
    checked = text_sample([r.key for r in responses if r.text is not None], thresholds, seed)
    teacher.cost.skipped.extend(r.key for r in responses if r.key not in chosen)

    async def one(r: Response) -> ResponseScore:
        ids = [t.token for t in r.tokens]

        async def control() -> None:
            await teacher.reference(cache[r.key], own.get(r.key, ()))

        ref = Reference((), ())
        if ids:
            ref = await _theirs(r.key, lambda: teacher.reference(cache[r.key], ids), control)
        text = None
        if r.key in checked:
            visible = _visible(ids, eos_ids)
            text = await _theirs(r.key, lambda: teacher.detokenize(visible), control)
        return score_response(r, ref, thresholds, eos_ids=eos_ids, detokenized=text)

    return await _each(
        [functools.partial(one, r) for r in responses if r.key in chosen], concurrency
    )


async def _theirs(
    key: str, request: Callable[[], Awaitable[_T]], control: Callable[[], Awaitable[None]]
) -> _T:
    """A request that carries a contestant's tokens: its failure is the baseline's unless the
    baseline answers `control` and then fails the request again."""
    try:
        return await request()
    except BaselineError as first:
        try:
            await control()
        except BaselineError as down:
            raise BaselineError(
                f"the baseline failed a control request after failing {key} ({first}): {down}"
            ) from down
        try:
            return await request()
        except BaselineError as again:
            raise ResponseRefused(
                f"the baseline refuses the tokens of response {key} twice ({again}) and"
                " answers a control request on the same prompt between the two"
            ) from again


async def _each(work: Sequence[Callable[[], Awaitable[_T]]], concurrency: int) -> list[_T]:
    """Run `work`, `concurrency` at a time (each started only once it holds the gate, so none is
    left unawaited when the rest are cancelled); the first failure cancels the rest and comes
    out as one exception: the baseline's own failure if any, else a refusal, else the first."""
    gate = asyncio.Semaphore(concurrency)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_limited(gate, w)) for w in work]
    except ExceptionGroup as grouped:  # the TaskGroup's; cancellation is not grouped
        raise _worst(grouped) from None
    return [t.result() for t in tasks]


def _worst(grouped: ExceptionGroup[Exception]) -> Exception:
    leaves = _leaves(grouped)
    for kind in (BaselineError, ResponseRefused):
        found = [e for e in leaves if type(e) is kind]
        if found:
            return found[0]
    return leaves[0]


def _leaves(grouped: ExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in grouped.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, ExceptionGroup) else [exc])
    return out


def _visible(ids: Sequence[int], eos_ids: frozenset[int]) -> list[int]:
    """The ids whose text is streamed: vLLM sends no text for a final EOS token."""
    return list(ids[:-1]) if ids and ids[-1] in eos_ids else list(ids)


async def _limited(gate: asyncio.Semaphore, work: Callable[[], Awaitable[_T]]) -> _T:
    async with gate:
        return await work()
