"""The hostile-server catalogue: every way a contestant may break the contract or game the gate,
in one agent round on the real dockerd under the run profile, each with the reason it must FAIL
with. A fake TTFT (empty first chunks) is not a FAIL: it must gain nothing over its honest twin,
and neither may a stream padded to the contract's limits (which must not saturate the client
either). The leader's attack on a round (its second launch slower than its first) needs a
leader and its bookends: it runs in its own round (`attacks`), judged against the same round
without it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import DockerRuntime, RunProfile, ServerSpec
from cacheon.agent.workload import PromptSource, Purpose
from cacheon.protocol import (
    Contestant,
    JobSpec,
    Launch,
    Outcome,
    Phase,
    ReasonCode,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
    Workload,
)
from cacheon.testing.local_arena import Services
from cacheon.testing.reliability import attacks
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_lm import EOS, Cheat, ToyLM
from cacheon.testing.toy_server import Attack, Fault, Knobs, Speed

MODEL = "Qwen/Qwen2.5-72B-Instruct"
MAX_MODEL_LEN = 512
SEED = "7e" * 32
WORKLOAD = Workload(
    concurrencies=(1, 4),
    prompts_per_block=50,
    blocks_per_level=1,
    warmup_requests=2,
    max_tokens=24,
    request_timeout_s=4,
)
"""104 chat requests per launch, so a server that crashes on its 100th is caught measuring."""
STARTUP_DEADLINE_S = 10.0
PROFILE = RunProfile(
    memory_bytes=512 << 20,
    pids=256,
    shm_bytes=64 << 20,
    tmpfs_bytes=64 << 20,
    memlock_bytes=RunProfile.for_host().memlock_bytes,
    gpus=False,
    stop_timeout_s=5,
)
SPEED = Speed(ttft_s=0.02, token_s=0.002)
TWIN_SPEED = Speed(ttft_s=0.1, token_s=0.004)
"""The fake-TTFT server and its honest twin: a prefill long enough for empty chunks to matter."""
FAKE_TTFT_TOLERANCE = 0.10


@dataclass(frozen=True)
class Behaviour:
    name: str
    knobs: Knobs
    reason: ReasonCode | None
    """The reason it must FAIL with; None: it must PASS (the fake TTFT)."""


def catalogue(model_seed: int) -> tuple[Behaviour, ...]:
    def fault(name: str, f: Fault, reason: ReasonCode, attack: Attack | None = None) -> Behaviour:
        knobs = Knobs(speed=SPEED, fault=f, model_seed=model_seed, attack=attack or Attack())
        return Behaviour(name, knobs, reason)

    def cheat(name: str, c: Cheat, reason: ReasonCode, scale: float = 0.0) -> Behaviour:
        knobs = Knobs(speed=SPEED, cheat=c, cheat_scale=scale, model_seed=model_seed)
        return Behaviour(name, knobs, reason)

    bad, conformance = ReasonCode.BAD_RESPONSE, ReasonCode.CONFORMANCE
    return (
        fault("hang before headers", Fault.HANG, bad),
        fault("hang mid-stream", Fault.HANG_MID_STREAM, bad),
        fault("slow drip", Fault.SLOW_DRIP, bad),
        fault("never-ending stream", Fault.INFINITE_STREAM, bad),
        fault("malformed JSON", Fault.MALFORMED_SSE, bad),
        fault("invalid UTF-8", Fault.INVALID_UTF8, bad),
        fault("gigantic chunk", Fault.HUGE_CHUNK, bad),
        fault("wrong content type", Fault.WRONG_CONTENT_TYPE, bad),
        fault("HTTP 500 mid-round", Fault.HTTP_500_LATER, bad),
        fault("connection reset", Fault.CONNECTION_RESET, bad),
        fault("tokens without ids", Fault.MISSING_TOKEN_IDS, conformance),
        fault("wrong model name", Fault.WRONG_MODEL, conformance),
        fault("crash on the first request", Fault.CRASH, ReasonCode.CRASHED),
        fault("crash on the 100th request", Fault.CRASH_LATER, ReasonCode.CRASHED),
        fault("out of memory", Fault.OOM, ReasonCode.OOM),
        fault("never healthy", Fault.NEVER_HEALTHY, ReasonCode.STARTUP_TIMEOUT),
        cheat("logprobs fabricated", Cheat.FABRICATED_LOGPROBS, ReasonCode.FABRICATION),
        cheat("early EOS", Cheat.EARLY_EOS, ReasonCode.EOS_HONESTY),
        cheat("garbage after a valid prefix", Cheat.GARBAGE, ReasonCode.GARBAGE),
        cheat("answers cached across prompts", Cheat.REPLAY, ReasonCode.PLAUSIBILITY),
        cheat("ignoring temperature", Cheat.SAMPLING, ReasonCode.GREEDY_CONSISTENCY, 0.5),
        Behaviour(
            "fake TTFT (empty first chunks)",
            Knobs(speed=TWIN_SPEED, fault=Fault.FAKE_TTFT, model_seed=model_seed),
            None,
        ),
        # attacks on the round (issue 17): the contestant's own FAIL, never a void round
        fault("5,000 comments before every token", Fault.COMMENT_PADDING, bad),
        fault(
            "comment padding at the top level only",
            Fault.PADDING_AT_TOP,
            bad,
            Attack(pad_in_flight=WORKLOAD.concurrencies[-1]),
        ),
        fault("a token id outside the vocabulary", Fault.OUT_OF_VOCAB, conformance),
        fault(
            "a token id the baseline refuses",
            Fault.OUT_OF_VOCAB,
            conformance,
            Attack(bad_token_id=attacks.REFUSED_ID),
        ),
        Behaviour(
            "padding to the stream limits",
            Knobs(speed=TWIN_SPEED, fault=Fault.PADDING_WITHIN_LIMITS, model_seed=model_seed),
            None,
        ),
    )


@dataclass(frozen=True)
class HostileResult:
    name: str
    expected: str
    outcome: str
    reason: str
    seconds: float
    ok: bool
    detail: str


HOSTILE_COLUMNS = ("behaviour", "must end in", "outcome", "reason", "time to FAIL s", "ok")


def hostile_cells(r: HostileResult) -> tuple[str, ...]:
    return (r.name, r.expected, r.outcome, r.reason, f"{r.seconds:.1f}", "yes" if r.ok else "NO")


class _Recorder:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir

    def emit(self, phase: Phase, **_fields: object) -> None:
        pass

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return TraceRef(name="trace.jsonl.gz", sha256="0" * 64, size=0, records=len(records))


def model_seed(workload: Workload, seed: str) -> int:
    """A toy model under which some replies end with EOS and some run to max_tokens, so the EOS
    cheat has something to break."""
    prompts = PromptSource(workload, seed, MAX_MODEL_LEN)
    chats = [
        [{"role": role, "content": content} for role, content in prompt.messages]
        for level in workload.concurrencies
        for prompt in prompts.block(Purpose.MEASURE, level, 0, workload.prompts_per_block)
    ]
    for candidate in range(40):
        lm = ToyLM(candidate)
        stops = sum(
            list(lm.greedy(lm.chat_prompt(chat), workload.max_tokens))[-1].top[0][0] == EOS
            for chat in chats
        )
        if len(chats) // 4 <= stops <= 3 * len(chats) // 4:
            return candidate
    raise ValueError("no toy model seed ends a quarter to three quarters of the replies")


def run_catalogue(services: Services, root: Path) -> list[HostileResult]:
    """Push every behaviour's image, run the round, judge each contestant."""
    root.mkdir(parents=True, exist_ok=True)
    seed = model_seed(WORKLOAD, SEED)
    behaviours = catalogue(seed)
    push = services.docker, services.registry
    baseline = Knobs(speed=SPEED, model_seed=seed)
    twin = Knobs(speed=TWIN_SPEED, model_seed=seed)
    contestants = [
        Contestant(key="B", role=Role.BASELINE, image=push_toy_image(*push, "h/base", baseline)),
        Contestant(key="twin", role=Role.CHALLENGER, image=push_toy_image(*push, "h/twin", twin)),
    ]
    for index, b in enumerate(behaviours):
        image = push_toy_image(*push, f"h/b{index:02d}", b.knobs)
        contestants.append(Contestant(key=f"h{index:02d}", role=Role.CHALLENGER, image=image))
    attacks.model_dir(root)  # declares a vocabulary above the toy's, as Qwen2.5's config does
    keys = [c.key for c in contestants]
    job = JobSpec(
        round_id="r-hostile",
        seed=SEED,
        served_model_name=MODEL,
        model_path=str(root / "model"),
        max_model_len=MAX_MODEL_LEN,
        contestants=tuple(contestants),
        launch_order=(*keys, "B"),
        workload=WORKLOAD,
        startup_deadline_s=STARTUP_DEADLINE_S,
    )
    client = services.docker.client()
    try:
        spec = ServerSpec(MODEL, job.model_path, MAX_MODEL_LEN)
        runner = RoundRunner(job, DockerRuntime(client, PROFILE, spec), _Recorder(root))
        report = asyncio.run(runner.run())
        leftovers = len(client.containers.list(all=True))
    finally:
        client.close()
    return [*_judge(behaviours, report, leftovers), leader_attack(root / "leader")]


def leader_attack(root: Path) -> HostileResult:
    """The leader slower in its second launch: its own round, with and without the attack."""
    case = next(c for c in attacks.CASES if c.attacker is None)
    control = attacks.run_attack(None, root / "control")
    attacked = attacks.run_attack(case, root / "attacked")
    found = attacks.problems(attacked, control)
    challenger = attacked.judged.of("C")
    compared = challenger.reason.value if challenger and challenger.reason else "none"
    return HostileResult(
        case.name,
        "round not void, challenger compared",
        f"void={attacked.judged.void}",
        f"challenger {compared}",
        attacked.seconds,
        not found,
        "; ".join(found),
    )


def _judge(
    behaviours: tuple[Behaviour, ...], report: RoundReport, leftovers: int
) -> list[HostileResult]:
    results = {r.key: r for r in report.results}
    launches = {launch.contestant: launch for launch in report.launches}
    deadline = STARTUP_DEADLINE_S + WORKLOAD.request_timeout_s + 30
    out = []
    for index, b in enumerate(behaviours):
        key = f"h{index:02d}"
        result, launch = results[key], launches[key]
        seconds = (launch.ended_ns - launch.started_ns) / 1e9
        reason = result.reason.value if result.reason else ""
        if b.reason is None:
            gain = _speed(launch) / _speed(launches["twin"])
            # it must gain nothing; what it costs itself (padding is its own bytes) is its own
            ok = result.outcome is not Outcome.FAIL and gain <= 1 + FAKE_TTFT_TOLERANCE
            ok = ok and not any(level.client_saturated for level in launch.levels)
            out.append(HostileResult(b.name, f"no gain (x{gain:.3f} vs twin)",
                                     result.outcome.value, reason, seconds, ok, result.detail))  # fmt: skip
            continue
        ok = result.outcome is Outcome.FAIL and result.reason is b.reason and seconds < deadline
        out.append(HostileResult(b.name, b.reason.value, result.outcome.value, reason, seconds,
                                 ok, result.detail))  # fmt: skip
    healthy = results["B"].outcome is Outcome.PASS and leftovers == 0
    out.append(HostileResult("agent healthy after all of them", "baseline PASS, 0 containers left",
                             results["B"].outcome.value, f"{leftovers} left", 0.0, healthy, ""))  # fmt: skip
    return out


def _speed(launch: Launch) -> float:
    speeds = [level.speed for level in launch.levels if level.speed]
    return math.exp(sum(math.log(s) for s in speeds) / len(speeds)) if speeds else float("nan")
