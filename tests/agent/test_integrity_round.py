"""Rules that cannot be gamed, in whole agent rounds on the real dockerd (issue 18).

Every contestant is a toy image pulled by digest and run under the run profile; B' scores all.
The model is the near-tie variant (`toy_lm.near_tie_seed`): it passes places where EOS is a
fraction of a nat behind the argmax, where the gate lets a server stop.

- Finding 1: the near-tie stopper cuts one answer in ten in half at such an EOS. It passes the
  gate, and its speed is no more than its honest twin's, within the twin's own launch-to-launch
  noise (a cut answer is timed at its own pace since the send, which counts its prefill once
  more), while the old rule (k = min(n_baseline, n_contestant, max_tokens)) pays it about 6%.
- Finding 3c: the leader's engine with every reported logprob nudged (up to 1e-3 nats) is
  flagged a copy of the leader; engines with their own numerics are not.
- Finding 5: an fp8-like engine (small fixed logit noise: p99 |Δlogprob| ~0.08, near-tie
  divergences in a few percent of tokens, several per long answer) gets the same verdict at
  max_tokens 128 and 256, an honest-noisy engine passes both, and a sampling server fails both,
  as does one that samples among near-ties only (each choice allowed, their rate is not).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from cacheon.agent.correctness import RunStats
from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import DockerRuntime, RunProfile, ServerSpec
from cacheon.protocol import (
    Contestant,
    ContestantResult,
    JobSpec,
    Launch,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
    TraceRecord,
    Workload,
)
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_lm import EOS, Cheat, near_tie_seed
from cacheon.testing.toy_server import Knobs, Speed
from tests.agent.agent_toys import MODEL, RecordingContext

MODEL_SEED = near_tie_seed(2)
"""A model with many near-ties of its own, where small numeric noise flips some of them."""
MAX_MODEL_LEN = 1024
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
TIMED = Speed(ttft_s=0.02, token_s=0.002)
"""The stopper and its twin: a pace whose T_k the client measures to well under a percent."""
FP8_NOISE = 0.05
HONEST_NOISE = 0.01
SAMPLING_TEMPERATURE = 0.5
TIE_SAMPLING = 0.45
"""Nats behind the argmax a near-tie sampler picks within: inside the gate's ε_tie of 0.5."""


def _workload(max_tokens: int) -> Workload:
    return Workload(
        concurrencies=(1, 4),
        prompts_per_block=30,
        blocks_per_level=1,
        warmup_requests=2,
        max_tokens=max_tokens,
        request_timeout_s=20,
    )


@dataclass(frozen=True)
class Round:
    report: RoundReport
    traces: list[list[TraceRecord]]
    gate: dict[str, RunStats]
    """The gate's numbers of each scored contestant."""

    def result(self, key: str) -> ContestantResult:
        return next(r for r in self.report.results if r.key == key)

    def launches(self, key: str) -> list[Launch]:
        return [launch for launch in self.report.launches if launch.contestant == key]


def _knobs(speed: Speed = FAST, cheat: Cheat = Cheat.NONE, scale: float = 0.0) -> Knobs:
    return Knobs(speed=speed, model_seed=MODEL_SEED, cheat=cheat, cheat_scale=scale)


CONTESTANTS: dict[str, tuple[Role, Knobs]] = {
    "B": (Role.BASELINE, _knobs()),
    "L": (Role.LEADER, _knobs()),
    "twin": (Role.CHALLENGER, _knobs(TIMED)),
    "stopper": (Role.CHALLENGER, _knobs(TIMED, Cheat.NEAR_TIE_STOP)),
    "nudged": (Role.CHALLENGER, _knobs(cheat=Cheat.NUDGED_LOGPROBS, scale=1e-3)),
    "fp8": (Role.CHALLENGER, _knobs(cheat=Cheat.LOGIT_NOISE, scale=FP8_NOISE)),
    "noisy": (Role.CHALLENGER, _knobs(cheat=Cheat.LOGIT_NOISE, scale=HONEST_NOISE)),
    "sampler": (Role.CHALLENGER, _knobs(cheat=Cheat.SAMPLING, scale=SAMPLING_TEMPERATURE)),
    "tie-sampler": (Role.CHALLENGER, _knobs(cheat=Cheat.TIE_SAMPLING, scale=TIE_SAMPLING)),
}


def _run(
    daemon: DockerDaemon,
    image: Callable[[str], str],
    root: Path,
    order: Sequence[str],
    max_tokens: int,
) -> Round:
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "generation_config.json").write_text(f'{{"eos_token_id": {EOS}}}')
    keys = list(dict.fromkeys(order))
    job = JobSpec(
        round_id=f"r-integrity-{max_tokens}",
        seed="18" * 32,
        served_model_name=MODEL,
        model_path=str(model_dir),
        max_model_len=MAX_MODEL_LEN,
        contestants=tuple(Contestant(key=k, role=CONTESTANTS[k][0], image=image(k)) for k in keys),
        launch_order=tuple(order),
        workload=_workload(max_tokens),
    )
    ctx = RecordingContext(root)
    client: docker.DockerClient = daemon.client()
    try:
        runtime = DockerRuntime(client, PROFILE, ServerSpec(MODEL, str(model_dir), MAX_MODEL_LEN))
        runner = RoundRunner(job, runtime, ctx)
        report = asyncio.run(runner.run())
    finally:
        client.close()
    gate = {k: v.gate.stats for k, v in (runner.verdicts or {}).items() if v.gate is not None}
    for key, stats in gate.items():
        print(
            f"{max_tokens} {key:<11} {stats.divergences} near-tie divergences in {stats.tokens}"
            f" tokens (p = {stats.divergence_p:.1e}, worst response p ="
            f" {stats.worst_response_p:.1e}), p99 |dlogprob| {stats.abs_delta_p99:.3f}"
        )
    for r in report.results:  # shown with -rA: what each contestant got, and why
        print(
            f"{max_tokens} {r.key:<8} {r.outcome:<12} {r.reason or '':<20} copy_of={r.copy_of} {r.detail[:110]}"
        )
    return Round(report, ctx.traces, gate)


@pytest.fixture(scope="module")
def image(docker_daemon: DockerDaemon, registry: Registry) -> Callable[[str], str]:
    pushed: dict[str, str] = {}

    def push(key: str) -> str:
        if key not in pushed:
            knobs = CONTESTANTS[key][1]
            pushed[key] = push_toy_image(docker_daemon, registry, f"integrity/{key.lower()}", knobs)
        return pushed[key]

    return push


@pytest.fixture(scope="module")
def round_128(
    docker_daemon: DockerDaemon,
    image: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Round:
    order = [
        "B",
        "L",
        "twin",
        "stopper",
        "twin",
        "nudged",
        "fp8",
        "noisy",
        "sampler",
        "tie-sampler",
    ]
    order.append("B")
    return _run(docker_daemon, image, tmp_path_factory.mktemp("r128"), order, 128)


@pytest.fixture(scope="module")
def round_256(
    docker_daemon: DockerDaemon,
    image: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Round:
    order = ["B", "fp8", "noisy", "sampler", "tie-sampler", "B"]
    return _run(docker_daemon, image, tmp_path_factory.mktemp("r256"), order, 256)


def _launch_speed(launch: Launch) -> float:
    speeds = [level.speed for level in launch.levels]
    return math.exp(sum(math.log(s) for s in speeds) / len(speeds))


def _old_rule_speed(trace: list[TraceRecord], baseline: dict[tuple[int, int, int], int]) -> float:
    """The launch's speed under the rule this issue removed: T_k at k = min(n_b, n_c, max)."""
    by_level: dict[int, list[float]] = {}
    for r in trace:
        n = len(r.token_ids)
        k = min(baseline[r.concurrency, r.block, r.prompt], n)
        by_level.setdefault(r.concurrency, []).append(math.log(r.token_ns[k - 1] / 1e9))
    means = [-sum(logs) / len(logs) for logs in by_level.values()]
    return math.exp(sum(means) / len(means))


def _traces_of(rnd: Round, key: str) -> Iterator[list[TraceRecord]]:
    return (t for t in rnd.traces if t and t[0].contestant == key)


def test_the_near_tie_stopper_passes_the_gate_and_gains_nothing(
    round_128: Round, record_property: Callable[[str, object], None]
) -> None:
    stopper = round_128.result("stopper")
    assert stopper.outcome is Outcome.PASS, stopper  # the gate allows each of its stops...
    baseline = {
        (r.concurrency, r.block, r.prompt): len(r.token_ids)
        for r in next(_traces_of(round_128, "B"))
    }
    (cut,) = _traces_of(round_128, "stopper")
    shortened = sum(len(r.token_ids) < baseline[r.concurrency, r.block, r.prompt] for r in cut)
    assert shortened >= len(cut) // 15  # ...and it did stop early, about one answer in ten

    twins = [_launch_speed(launch) for launch in round_128.launches("twin")]
    (stopper_launch,) = round_128.launches("stopper")
    noise = abs(math.log(twins[1] / twins[0]))  # the twin's own launch-to-launch spread
    gain = _launch_speed(stopper_launch) / math.sqrt(twins[0] * twins[1])
    old_twin = [_old_rule_speed(t, baseline) for t in _traces_of(round_128, "twin")]
    old_gain = _old_rule_speed(cut, baseline) / math.sqrt(old_twin[0] * old_twin[1])
    record_property("stopper_vs_twin", round(gain, 4))
    record_property("stopper_vs_twin_old_rule", round(old_gain, 4))
    record_property("twin_noise", round(noise, 4))
    print(
        f"stopper: {shortened}/{len(cut)} answers cut; speed x{gain:.4f} of its twin (twin"
        f" launch-to-launch {noise:.4f}); under the old k rule x{old_gain:.4f}"
    )
    assert math.log(gain) <= max(3 * noise, 0.015)  # it gained nothing, within noise
    assert old_gain / gain > 1.03  # what the old rule paid it, on the very same launches


def test_a_logprob_nudged_copy_of_the_leader_is_flagged(round_128: Round) -> None:
    nudged = round_128.result("nudged")
    assert nudged.outcome is Outcome.PASS, nudged  # every gate check passes a nudge of 1e-3...
    assert nudged.copy_of == "L"  # ...and it is still the leader's engine
    for other in ("fp8", "noisy"):  # engines with numerics of their own are no copies
        assert round_128.result(other).copy_of is None


@pytest.mark.parametrize(
    ("key", "outcome"),
    [
        ("fp8", Outcome.PASS),
        ("noisy", Outcome.PASS),
        ("sampler", Outcome.FAIL),
        ("tie-sampler", Outcome.FAIL),
    ],
)
def test_greedy_consistency_gives_the_same_verdict_at_any_max_tokens(
    round_128: Round, round_256: Round, key: str, outcome: Outcome
) -> None:
    short, long = round_128.result(key), round_256.result(key)
    assert short.outcome is outcome, short
    assert (long.outcome, long.reason) == (short.outcome, short.reason), (short, long)


def test_the_divergence_rate_is_what_fails_a_near_tie_sampler(
    round_128: Round, round_256: Round
) -> None:
    assert round_256.gate["fp8"].divergences > 0  # the fp8-like engine does diverge...
    assert round_256.gate["fp8"].divergence_p > 1e-3  # ...at a rate an honest engine may have
    for rnd in (round_128, round_256):
        sampler = rnd.result("tie-sampler")
        assert sampler.reason is ReasonCode.GREEDY_CONSISTENCY
        assert "near-tie divergences in" in sampler.detail, sampler.detail  # the rate, not a gap
