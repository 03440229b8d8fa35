"""Cheats against the correctness gate in a whole round on the real dockerd (issue 8).

Every contestant is a toy image pulled by digest from the test registry and started with the run
profile; the last baseline launch (B') teacher-forces everyone's measured responses. Each cheat
must FAIL with its own reason code, honest variants (other concurrency, batching, tokens per
event, tiny numeric noise) must PASS, and logit noise is tried at 0.5x, 1x and 2x of the drift
the gate tolerates: 2x FAILs, 0.5x PASSes, 1x is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from cacheon.agent.correctness import percentile
from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import DockerRuntime, RunProfile, ServerSpec
from cacheon.agent.workload import PromptSource, Purpose
from cacheon.protocol import (
    Contestant,
    ContestantResult,
    GateThresholds,
    JobSpec,
    Outcome,
    Phase,
    ReasonCode,
    Role,
    TraceRecord,
    TraceRef,
    Workload,
)
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_lm import EOS, Cheat, Decoder, ToyLM
from cacheon.testing.toy_server import Knobs, Speed

MODEL = "Qwen/Qwen2.5-72B-Instruct"
MAX_MODEL_LEN = 512
SEED = "c4" * 32
WORKLOAD = Workload(
    concurrencies=(1, 4),
    prompts_per_block=8,
    blocks_per_level=1,
    warmup_requests=2,
    max_tokens=48,
    request_timeout_s=10,
)
GATE = GateThresholds()
PROFILE = RunProfile(
    memory_bytes=512 << 20,
    pids=256,
    shm_bytes=64 << 20,
    tmpfs_bytes=64 << 20,
    memlock_bytes=RunProfile.for_host().memlock_bytes,
    gpus=False,
    stop_timeout_s=5,
)
FAST = Speed(ttft_s=0.0, token_s=0.0)
NUMERIC = {ReasonCode.VALUE_CLOSENESS, ReasonCode.DISTRIBUTION, ReasonCode.GREEDY_CONSISTENCY}


def _measured_chats() -> list[list[dict[str, str]]]:
    prompts = PromptSource(WORKLOAD, SEED, MAX_MODEL_LEN)
    return [
        [{"role": role, "content": content} for role, content in prompt.messages]
        for level in WORKLOAD.concurrencies
        for prompt in prompts.block(Purpose.MEASURE, level, 0, WORKLOAD.prompts_per_block)
    ]


def _model_seed(chats: list[list[dict[str, str]]]) -> int:
    """A toy model under which some of the round's replies end with EOS and some run to
    max_tokens, so that both EOS cheats have something to break."""
    for seed in range(20):
        lm = ToyLM(seed)
        stops = sum(
            list(lm.greedy(lm.chat_prompt(chat), WORKLOAD.max_tokens))[-1].top[0][0] == EOS
            for chat in chats
        )
        if len(chats) // 4 <= stops <= 3 * len(chats) // 4:
            return seed
    raise AssertionError("no toy model seed ends a quarter to three quarters of the replies")


def _noise_at_threshold(seed: int, chats: list[list[dict[str, str]]]) -> float:
    """The logit noise whose p99 |reported - reference logprob| equals the gate's delta: the
    largest drift the gate tolerates, found on the toy model itself (no server needed)."""
    lm, probe = ToyLM(seed), 0.05
    noisy = Decoder(lm, Cheat.LOGIT_NOISE, probe, seed)
    deltas = []
    for chat in chats:
        prompt = lm.chat_prompt(chat)
        history = [EOS, EOS, *prompt]
        for step in noisy.continuation(prompt, WORKLOAD.max_tokens):
            token, claimed = step.top[0]
            deltas.append(abs(claimed - lm.next(history[-2], history[-1]).logprobs[token]))
            history.append(token)
    return probe * GATE.delta / percentile(deltas, 99)


class _Recorder:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.phases: list[Phase] = []

    def emit(self, phase: Phase, **_fields: object) -> None:
        self.phases.append(phase)

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return TraceRef(name="trace.jsonl.gz", sha256="0" * 64, size=0, records=len(records))


@pytest.fixture
def image(docker_daemon: DockerDaemon, registry: Registry) -> Callable[[str, Knobs], str]:
    pushed: dict[str, str] = {}

    def push(name: str, knobs: Knobs) -> str:
        if name not in pushed:
            pushed[name] = push_toy_image(docker_daemon, registry, f"cheat/{name.lower()}", knobs)
        return pushed[name]

    return push


def test_cheats_fail_with_their_reason_and_honest_variants_pass(
    docker_daemon: DockerDaemon,
    image: Callable[[str, Knobs], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    chats = _measured_chats()
    seed = _model_seed(chats)
    sigma = _noise_at_threshold(seed, chats)

    def knobs(**extra: Any) -> Knobs:
        return Knobs(**{"speed": FAST, "model_seed": seed, **extra})

    cases: dict[str, tuple[Knobs, Outcome, set[ReasonCode] | None]] = {
        "L": (knobs(speed=Speed(0.0, 0.0, tokens_per_event=3)), Outcome.PASS, None),
        "batch-2": (knobs(speed=Speed(0.0, 0.0, max_batch=2)), Outcome.PASS, None),
        "tiny-noise": (knobs(cheat=Cheat.LOGIT_NOISE, cheat_scale=1e-3), Outcome.PASS, None),
        "noise-0.5x": (knobs(cheat=Cheat.LOGIT_NOISE, cheat_scale=0.5 * sigma), Outcome.PASS, None),
        "noise-2x": (knobs(cheat=Cheat.LOGIT_NOISE, cheat_scale=2 * sigma), Outcome.FAIL, NUMERIC),
    }
    expected_cheats = {
        Cheat.FABRICATED_LOGPROBS: ReasonCode.FABRICATION,
        Cheat.EARLY_EOS: ReasonCode.EOS_HONESTY,
        Cheat.SKIPPED_EOS: ReasonCode.EOS_HONESTY,
        Cheat.GARBAGE: ReasonCode.GARBAGE,
        Cheat.SMALLER_MODEL: ReasonCode.DISTRIBUTION,
        Cheat.REPLAY: ReasonCode.PLAUSIBILITY,
        Cheat.SAMPLING: ReasonCode.GREEDY_CONSISTENCY,
    }
    for cheat, reason in expected_cheats.items():
        scale = 0.5 if cheat is Cheat.SAMPLING else 0.0  # temperature 0.5
        cases[cheat.value] = (knobs(cheat=cheat, cheat_scale=scale), Outcome.FAIL, {reason})
    contestants = [Contestant(key="B", role=Role.BASELINE, image=image("baseline", knobs()))]
    contestants.append(
        Contestant(key="copy", role=Role.CHALLENGER, image=image("L", cases["L"][0]))
    )
    for key, (k, _, _) in cases.items():
        role = Role.LEADER if key == "L" else Role.CHALLENGER
        contestants.append(Contestant(key=key, role=role, image=image(key, k)))
    noise_1x = knobs(cheat=Cheat.LOGIT_NOISE, cheat_scale=sigma)
    contestants.append(
        Contestant(key="noise-1x", role=Role.CHALLENGER, image=image("noise-1x", noise_1x))
    )
    keys = [c.key for c in contestants]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "generation_config.json").write_text(f'{{"eos_token_id": {EOS}}}')
    job = JobSpec(
        round_id="r-cheats",
        seed=SEED,
        served_model_name=MODEL,
        model_path=str(model_dir),
        max_model_len=MAX_MODEL_LEN,
        contestants=tuple(contestants),
        launch_order=(*keys, "L", "B"),
        workload=WORKLOAD,
        gate=GATE,
    )
    client: docker.DockerClient = docker_daemon.client()
    recorder = _Recorder(tmp_path)
    try:
        runtime = DockerRuntime(client, PROFILE, ServerSpec(MODEL, str(model_dir), MAX_MODEL_LEN))
        report = asyncio.run(RoundRunner(job, runtime, recorder).run())
    finally:
        client.close()
    results: dict[str, ContestantResult] = {r.key: r for r in report.results}
    record_property("noise_sigma_at_threshold", round(sigma, 4))
    record_property("noise_1x", f"{results['noise-1x'].outcome} {results['noise-1x'].reason}")
    for key, r in results.items():  # shown with -rA: what each contestant got, and why
        print(f"{key:<20} {r.outcome:<12} {r.reason or '':<20} copy_of={r.copy_of} {r.detail[:90]}")
    print(f"logit noise at the gate's delta: sigma={sigma:.4f}")
    assert Phase.SCORE in recorder.phases
    assert results["B"].outcome is Outcome.PASS
    for key, (_, outcome, reasons) in cases.items():
        result = results[key]
        assert result.outcome is outcome, result
        if reasons is not None:
            assert result.reason in reasons, result
    # identical engines reproduce the leader bit for bit; a different one never does
    assert results["copy"].copy_of == "L"
    assert results["batch-2"].copy_of == "L"
    assert results["tiny-noise"].copy_of is None
    assert results["L"].copy_of is None
