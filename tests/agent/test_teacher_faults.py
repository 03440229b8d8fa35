"""Every way teacher forcing can fail, and whose failure each is (DESIGN.md §3).

A toy baseline (the toy LM's vLLM answers, on loopback) scores honest contestants and one whose
response carries a token id the baseline's vocabulary lacks; the baseline is made to fail in
each way it can: refusing a request, failing the control request after a refusal, failing to
tokenize, answering nonsense, refusing once and then answering, and several of those at once
(the TaskGroup's grouped failures). A refusal the baseline repeats while it answers a control
request is that contestant's FAIL; the baseline's own failure is NO_DECISION for everyone not
yet judged; nothing escapes as an exception.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cacheon.agent import gatepass
from cacheon.agent import teacher as teacher_module
from cacheon.agent.correctness import Reported, Response
from cacheon.agent.gatepass import LaunchOutputs, Work, correctness_pass, score_launches
from cacheon.agent.loadgen import Target
from cacheon.agent.teacher import BaselineError, ResponseRefused, Teacher, score_responses
from cacheon.protocol import GateThresholds, Outcome, ReasonCode, Role
from cacheon.testing.toy_lm import EOS, ToyLM, baseline_answer

MODEL = "toy"
LM = ToyLM(3)
GATE = GateThresholds()
PROMPTS = {
    f"1/0/{i}": (("user", f"tell me about the {word}"),)
    for i, word in enumerate(("river", "stone", "cloud", "fire"))
}
OUTSIDE = LM.vocab_size + 100
"""A token id the toy baseline's vocabulary lacks: its teacher forcing raises IndexError (400)."""

Policy = Callable[[str, dict[str, Any]], int | None]
"""(path, body) -> an HTTP status to answer instead of the toy's answer; None: answer."""


@dataclass
class FakeBaseline:
    url: str
    policy: Policy = lambda _path, _body: None
    requests: list[tuple[str, int]] = field(default_factory=list)
    """(path, status) of every request, in order."""


@asynccontextmanager
async def baseline() -> AsyncIterator[FakeBaseline]:
    fake = FakeBaseline("")

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        status = fake.policy(request.path, body)
        if status == 299:  # a 200 whose body is not what vLLM sends
            fake.requests.append((request.path, 200))
            return web.json_response({"choices": [{"prompt_logprobs": None}]})
        if status is None:
            try:
                answer = baseline_answer(LM, request.path, body, MODEL)
                status = 200
            except (IndexError, KeyError, ValueError) as exc:
                answer, status = {"error": {"message": repr(exc)}}, 400
        else:
            answer = {"error": {"message": "injected"}}
        fake.requests.append((request.path, status))
        return web.json_response(answer, status=status)

    app = web.Application()
    for path in ("/tokenize", "/detokenize", "/v1/completions"):
        app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _honest(key: str, messages: tuple[tuple[str, str], ...], bad_at: int | None = None) -> Response:
    prompt = LM.chat_prompt([{"role": r, "content": c} for r, c in messages])
    tokens = []
    for position, dist in enumerate(LM.greedy(prompt, 12)):
        token, logprob = dist.top[0]
        tokens.append(Reported(OUTSIDE if position == bad_at else token, logprob, dist.top))
    finish = "stop" if tokens[-1].token == EOS else "length"
    text = LM.detokenize([t.token for t in tokens if t.token not in (EOS, OUTSIDE)])
    return Response(key, tuple(tokens), finish, 12, text if bad_at is None else None)


def _launch(index: int, key: str, role: Role, bad: str | None = None) -> LaunchOutputs:
    responses = tuple(_honest(k, m, 2 if k == bad else None) for k, m in PROMPTS.items())
    return LaunchOutputs(index, key, role, responses)


BASE = _launch(0, "B", Role.BASELINE)
HONEST = _launch(1, "C1", Role.CHALLENGER)
ATTACKER = _launch(2, "C2", Role.CHALLENGER, bad="1/0/2")
LATE = _launch(3, "C3", Role.CHALLENGER)


def _work(*launches: LaunchOutputs) -> Work:
    controls = gatepass.baseline_tokens([BASE])
    return Work("", MODEL, launches, PROMPTS, GATE, frozenset({EOS}), "s", controls)


async def _pass(fake: FakeBaseline, *launches: LaunchOutputs) -> gatepass.Scored:
    async with aiohttp.ClientSession() as session:
        return await score_launches(Teacher(session, fake.url, MODEL, attempts=1), _work(*launches))


def _verdicts(done: gatepass.Scored, *launches: LaunchOutputs) -> dict[str, gatepass.Verdict]:
    return gatepass._verdicts(launches, done, gatepass.baseline_lengths([BASE]), GATE)


def _contains(body: dict[str, Any], token: int) -> bool:
    return token in body.get("prompt", []) or token in body.get("tokens", [])


def test_honest_contestants_pass_and_a_refused_one_fails_with_the_baselines_answer() -> None:
    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            done = await _pass(fake, HONEST, ATTACKER, LATE)
            assert done.stopped is None
            refused = [s for p, s in fake.requests if s == 400]
            assert len(refused) == 2  # the refused request, then its one retry after the control
            return _verdicts(done, HONEST, ATTACKER, LATE)

    verdicts = asyncio.run(main())
    assert verdicts["C1"].outcome is Outcome.PASS, verdicts["C1"]
    assert verdicts["C3"].outcome is Outcome.PASS, verdicts["C3"]
    attacker = verdicts["C2"]
    assert (attacker.outcome, attacker.reason) == (Outcome.FAIL, ReasonCode.CONFORMANCE)
    assert "launch 2: the baseline refuses the tokens of response 1/0/2 twice" in attacker.detail
    assert "HTTP 400" in attacker.detail


def test_a_refusal_whose_control_fails_is_the_baselines_and_earlier_verdicts_stand() -> None:
    def down_after_refusal(path: str, body: dict[str, Any]) -> int | None:
        refused = any(s == 400 for _, s in fake_box[0].requests)
        return 503 if refused and path == "/v1/completions" else None

    fake_box: list[FakeBaseline] = []

    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            fake_box.append(fake)
            fake.policy = down_after_refusal
            done = await _pass(fake, HONEST, ATTACKER, LATE)
            assert done.stopped is not None
            assert "failed a control request after failing 1/0/2" in done.stopped.detail
            return _verdicts(done, HONEST, ATTACKER, LATE)

    verdicts = asyncio.run(main())
    assert verdicts["C1"].outcome is Outcome.PASS  # judged before the baseline went down
    for key in ("C2", "C3"):
        assert verdicts[key].outcome is Outcome.NO_DECISION, verdicts[key]
        assert verdicts[key].reason is ReasonCode.BASELINE_UNSTABLE


def test_a_baseline_that_cannot_tokenize_decides_nothing() -> None:
    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            fake.policy = lambda path, _body: 500 if path == "/tokenize" else None
            done = await _pass(fake, HONEST, ATTACKER)
            assert done.launches == ()
            return _verdicts(done, HONEST, ATTACKER)

    verdicts = asyncio.run(main())
    assert {v.reason for v in verdicts.values()} == {ReasonCode.BASELINE_UNSTABLE}
    assert {v.outcome for v in verdicts.values()} == {Outcome.NO_DECISION}


def test_a_nonsense_answer_to_one_response_only_is_that_contestants() -> None:
    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            fake.policy = lambda path, body: (
                299 if path == "/v1/completions" and _contains(body, OUTSIDE) else None
            )
            return _verdicts(await _pass(fake, HONEST, ATTACKER), HONEST, ATTACKER)

    verdicts = asyncio.run(main())
    assert verdicts["C1"].outcome is Outcome.PASS
    assert verdicts["C2"].reason is ReasonCode.CONFORMANCE
    assert "unexpected /v1/completions answer" in verdicts["C2"].detail


def test_a_refusal_that_does_not_repeat_fails_nobody() -> None:
    seen: list[int] = []

    def once(path: str, body: dict[str, Any]) -> int | None:
        if path == "/v1/completions" and body["prompt"][-1] != EOS and not seen:
            seen.append(1)
            return 400
        return None

    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            fake.policy = once
            return _verdicts(await _pass(fake, HONEST), HONEST)

    assert asyncio.run(main())["C1"].outcome is Outcome.PASS


def test_grouped_failures_come_out_as_one_the_baselines_first() -> None:
    """Four concurrent requests fail together inside score_responses' TaskGroup."""

    async def score(policy: Policy, launch: LaunchOutputs) -> BaseException:
        async with baseline() as fake, aiohttp.ClientSession() as session:
            fake.policy = policy
            teacher = Teacher(session, fake.url, MODEL, attempts=1)
            with pytest.raises(BaselineError) as failed:
                await score_responses(
                    teacher,
                    launch.responses,
                    PROMPTS,
                    GATE,
                    eos_ids=frozenset({EOS}),
                    seed="s",
                    controls=gatepass.baseline_tokens([BASE]),
                )
            return failed.value

    all_bad = LaunchOutputs(
        5,
        "C5",
        Role.CHALLENGER,
        tuple(_honest(k, m, bad_at=1) for k, m in PROMPTS.items()),
    )
    refused = asyncio.run(score(lambda _p, _b: None, all_bad))
    assert type(refused) is ResponseRefused  # four refusals, one exception, not a group

    def refuse_one_fail_others(path: str, body: dict[str, Any]) -> int | None:
        if path != "/v1/completions":
            return None
        return None if _contains(body, OUTSIDE) else 500

    mixed = asyncio.run(score(refuse_one_fail_others, ATTACKER))
    assert type(mixed) is BaselineError  # the baseline's own failure wins over a refusal
    assert not isinstance(mixed, BaseExceptionGroup)


def test_the_pass_never_raises_when_its_worker_breaks(tmp_path: Path) -> None:
    """The whole pass in its worker process: a refusal fails one contestant; a worker that
    cannot run (here: its work cannot be sent to it) is NO_DECISION agent_failed for all."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS}))

    async def run() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            return await correctness_pass(
                Target(fake.url),
                [BASE, HONEST, ATTACKER],
                model=MODEL,
                model_dir=tmp_path,
                prompts=PROMPTS,
                thresholds=GATE,
                seed="s",
            )

    verdicts = asyncio.run(run())
    assert verdicts["C1"].outcome is Outcome.PASS
    assert verdicts["C2"].reason is ReasonCode.CONFORMANCE

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gatepass, "_score_all", lambda work: work)  # a lambda does not pickle
        broken = asyncio.run(run())
    assert {(v.outcome, v.reason) for v in broken.values()} == {
        (Outcome.NO_DECISION, ReasonCode.AGENT_FAILED)
    }

    (tmp_path / "generation_config.json").unlink()  # no EOS id anywhere: the baseline's setup
    unset = asyncio.run(run())
    assert {v.reason for v in unset.values()} == {ReasonCode.BASELINE_UNSTABLE}


def test_a_bug_in_scoring_is_undecided_for_everyone_not_yet_judged() -> None:
    async def main() -> dict[str, gatepass.Verdict]:
        async with baseline() as fake:
            with pytest.MonkeyPatch.context() as patch:
                calls: list[int] = []

                def score(*args: Any, **kwargs: Any) -> Any:
                    calls.append(1)
                    if len(calls) > len(PROMPTS):  # the second launch's first response
                        raise ZeroDivisionError("a bug")
                    return real(*args, **kwargs)

                real = teacher_module.score_response
                patch.setattr(teacher_module, "score_response", score)
                done = await _pass(fake, HONEST, LATE)
            assert done.stopped is not None
            assert done.stopped.reason is ReasonCode.AGENT_FAILED
            return _verdicts(done, HONEST, LATE)

    verdicts = asyncio.run(main())
    assert verdicts["C1"].outcome is Outcome.PASS
    assert (verdicts["C3"].outcome, verdicts["C3"].reason) == (
        Outcome.NO_DECISION,
        ReasonCode.AGENT_FAILED,
    )
    assert "ZeroDivisionError" in verdicts["C3"].detail
