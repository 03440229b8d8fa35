"""The agent against a real vLLM: its stream, its teacher forcing, and vLLM judged by itself.

The load generator must parse vLLM's real stream (token ids, logprobs, top-5, several tokens per
event), teacher forcing must line up vLLM's real `prompt_logprobs` with the streamed positions,
and vLLM scored by vLLM must PASS the gate, while the same real responses, tampered with as a
cheat would, must FAIL with that cheat's reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Sequence

import aiohttp
import orjson
import pytest

from cacheon.agent.correctness import GateResult, Reported, Response, judge
from cacheon.agent.loadgen import LoadGenerator, Target
from cacheon.agent.response import Event
from cacheon.agent.response import parse as parse_stream
from cacheon.agent.teacher import (
    Teacher,
    eos_token_ids,
    response_from_stream,
    score_responses,
)
from cacheon.agent.workload import Prompt, PromptSource, Purpose, request_body
from cacheon.protocol import GateThresholds, Outcome, ReasonCode, Workload
from cacheon.testing.vllm_server import VllmServer

pytestmark = pytest.mark.vllm
GATE = GateThresholds()
# the tiny tokenizer spends ~3 tokens per English word: a small context keeps prompts short
PROMPTS = PromptSource(Workload(max_tokens=96), "c0" * 32, 352).block(Purpose.MEASURE, 0, 0, 12)
MESSAGES = {f"p{i}": p.messages for i, p in enumerate(PROMPTS)}


async def _stream(vllm: VllmServer, prompts: Sequence[Prompt], concurrency: int) -> list[Response]:
    async with LoadGenerator(Target(vllm.base_url), vllm.model, 1, 120) as load:
        block = await load.run_block(prompts, concurrency)
    assert block.fault is None, block.fault
    return [
        response_from_stream(f"p{m.index}", prompts[m.index].max_tokens, m.response)
        for m in block.measured
        if m.response is not None
    ]


async def _judge(
    vllm: VllmServer, responses: list[Response], baseline: list[Response]
) -> GateResult:
    eos_ids = eos_token_ids(vllm.model_dir)
    async with aiohttp.ClientSession() as session:
        teacher = Teacher(session, vllm.base_url, vllm.model)
        scores = await score_responses(
            teacher, responses, MESSAGES, GATE, eos_ids=eos_ids, seed="s"
        )
    lengths = {r.key: len(r.tokens) for r in responses}
    return judge(scores, lengths, {r.key: len(r.tokens) for r in baseline}, GATE)


@pytest.fixture(scope="module")
def streamed(vllm: VllmServer) -> dict[int, list[Response]]:
    """The same prompts streamed alone and 6 at a time (another batch composition)."""
    return {c: asyncio.run(_stream(vllm, PROMPTS, c)) for c in (1, 6)}


def test_loadgen_parses_the_real_vllm_stream(
    vllm: VllmServer, streamed: dict[int, list[Response]]
) -> None:
    eos_ids = eos_token_ids(vllm.model_dir)
    alone = streamed[1]
    assert len(alone) == len(PROMPTS)
    for r in alone:
        assert 0 < len(r.tokens) <= r.max_tokens
        assert all(len(t.top) == 5 and t.logprob <= 0.0 for t in r.tokens)
        assert all(t.top == tuple(sorted(t.top, key=lambda p: -p[1])) for t in r.tokens)
        # greedy decoding: the sampled token is vLLM's own argmax
        assert all(t.top[0][1] == t.logprob for t in r.tokens)
        assert (r.finish_reason == "stop") == (r.tokens[-1].token in eos_ids)
    assert any(r.finish_reason == "stop" for r in alone), "the tiny model should end some replies"


def test_teacher_forcing_lines_up_with_the_stream(
    vllm: VllmServer, streamed: dict[int, list[Response]]
) -> None:
    """The reference at each output position is the distribution the stream reported there."""

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            teacher = Teacher(session, vllm.base_url, vllm.model)
            for r in streamed[1][:4]:
                ids = await teacher.tokenize_chat(MESSAGES[r.key])
                ref = await teacher.reference(ids, [t.token for t in r.tokens])
                for position, token in zip(ref.positions, r.tokens, strict=True):
                    assert position.chosen == pytest.approx(token.logprob, abs=1e-5)
                    assert [t for t, _ in position.top[:5]] == [t for t, _ in token.top]
                assert len(ref.after) == 20
            assert teacher.cost.scored_tokens == sum(len(r.tokens) for r in streamed[1][:4])

    asyncio.run(check())


def test_streamed_text_matches_the_baselines_detokenization(vllm: VllmServer) -> None:
    """The conformance check's rule (the text of the token ids, less a final EOS) holds for vLLM."""
    eos_ids = eos_token_ids(vllm.model_dir)

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            teacher = Teacher(session, vllm.base_url, vllm.model)
            for prompt in PROMPTS[:4]:
                text, ids = "", []
                url = vllm.base_url + "/v1/chat/completions"
                body = request_body(prompt, vllm.model)
                headers = {"content-type": "application/json"}
                async with session.post(url, data=body, headers=headers) as answer:
                    async for line in answer.content:
                        if line.startswith(b"data: {"):
                            for choice in orjson.loads(line[6:])["choices"]:
                                text += choice["delta"].get("content") or ""
                                for entry in (choice.get("logprobs") or {}).get("content", []):
                                    ids.append(int(entry["token"].split(":")[1]))
                visible = ids[:-1] if ids[-1] in eos_ids else ids
                assert await teacher.detokenize(visible) == text

    asyncio.run(check())


def test_vllm_against_itself_passes(vllm: VllmServer, streamed: dict[int, list[Response]]) -> None:
    result = asyncio.run(_judge(vllm, streamed[6], streamed[1]))
    assert result.outcome is Outcome.PASS, result.detail
    assert result.stats.tokens == sum(len(r.tokens) for r in streamed[6])
    assert result.stats.abs_delta_p99 < 1e-4
    assert result.stats.kl_mean < 1e-6


def test_fabricated_logprobs_on_real_responses_fail(
    vllm: VllmServer, streamed: dict[int, list[Response]]
) -> None:
    fabricated = [
        dataclasses.replace(
            r, tokens=tuple(Reported(t.token, 0.0, ((t.token, 0.0), *t.top[1:])) for t in r.tokens)
        )
        for r in streamed[1]
    ]
    result = asyncio.run(_judge(vllm, fabricated, streamed[1]))
    assert (result.outcome, result.reason) == (Outcome.FAIL, ReasonCode.FABRICATION), result.detail


async def _sampled(vllm: VllmServer, temperature: float) -> list[Response]:
    """vLLM's real stream when the server samples instead of decoding greedily."""
    out = []
    async with aiohttp.ClientSession() as session:
        for i, prompt in enumerate(PROMPTS):
            body = orjson.loads(request_body(prompt, vllm.model)) | {"temperature": temperature}
            url = vllm.base_url + "/v1/chat/completions"
            headers = {"content-type": "application/json"}
            async with session.post(url, data=orjson.dumps(body), headers=headers) as answer:
                events = [
                    Event(0, line.strip()[6:])
                    async for line in answer.content
                    if line.startswith(b"data: ")
                ]
            parsed = parse_stream(0, events, vllm.model, prompt.max_tokens)
            out.append(response_from_stream(f"p{i}", prompt.max_tokens, parsed))
    return out


def test_a_sampling_server_fails_the_token_checks(
    vllm: VllmServer, streamed: dict[int, list[Response]]
) -> None:
    """The tiny model's first reply word is a near-uniform pick among ~50, so samples often fall
    outside the top-5 (plausibility) as well as behind the argmax (greedy consistency)."""
    result = asyncio.run(_judge(vllm, asyncio.run(_sampled(vllm, 1.0)), streamed[1]))
    assert result.outcome is Outcome.FAIL
    assert result.reason in {ReasonCode.PLAUSIBILITY, ReasonCode.GREEDY_CONSISTENCY}


def test_calibrate_command_reports_drift_and_suggests_thresholds(vllm: VllmServer) -> None:
    command = [
        sys.executable,
        "-m",
        "cacheon.cli.agent",
        "calibrate",
        "--url",
        vllm.base_url,
        "--model",
        vllm.model,
        "--model-dir",
        str(vllm.model_dir),
        "--concurrency",
        "1,4",
        "--prompts",
        "8",
        "--max-tokens",
        "24",
        "--max-model-len",
        "320",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "suggested thresholds" in result.stdout
    assert f"{vllm.base_url} c=4: PASS" in result.stdout
    suggested = GateThresholds.model_validate_json(lines[-1])
    assert suggested.version == GATE.version + 1
    assert suggested.provisional
    assert 0 < suggested.delta <= GATE.delta
