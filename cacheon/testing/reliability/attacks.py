"""Attacks on a round itself (issue 17): a contestant trying to void the round, or to move the
comparison, rather than to win it. Each runs in a real agent round (the process runtime: the
stream attacks need no isolation) of the baseline, a leader, an honest challenger that is twice
as fast as the leader, and the attacker, `B, L, C, A, L', B'`, and is judged by the one verdict
path (`arena.judge`). A contestant can only hurt itself (DESIGN.md §3): the attacker is charged
with its own reason, the round is not void, the honest challenger's evidence is recorded, and
the honest contestants' verdicts are those of the same round without the attacker.

The leader's attack is its second launch differing from its first. A server cannot remember
across containers, but it can read the clock: its knob `slow_after_epoch_s` is set to the moment
its second launch starts (the process runtime reads a server's command at its start).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cacheon.agent.round import RoundRunner
from cacheon.agent.runtime import ProcessRuntime, ServerSpec
from cacheon.arena import ArenaParams, History, RoundJudgement, RoundResult, judge, noise_bound
from cacheon.config import ArenaSettings
from cacheon.protocol import (
    Contestant,
    JobSpec,
    Outcome,
    Phase,
    ReasonCode,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
    Workload,
)
from cacheon.testing import toy_server
from cacheon.testing.toy_lm import EOS
from cacheon.testing.toy_server import Attack, Fault, Knobs, Speed
from cacheon.validator.evaluation import arena_params

MODEL = "Qwen/Qwen2.5-72B-Instruct"
MAX_MODEL_LEN = 1024
WORKLOAD = Workload(
    concurrencies=(1, 4),
    prompts_per_block=8,
    blocks_per_level=1,
    warmup_requests=2,
    max_tokens=16,
    request_timeout_s=4,
)
MODEL_VOCAB = 1024
"""What the model's config.json declares: above the toy vocabulary (512), as Qwen2.5's 152064
is above its tokenizer's 151665 ids, so an id between the two passes the parser and only the
baseline can refuse it."""
REFUSED_ID = 700
LEADER_SLOWDOWN = 3.0
HONEST = ("L", "C")


def speed(token_ms: float) -> Speed:
    return Speed(ttft_s=2 * token_ms / 1000, token_s=token_ms / 1000)


BASELINE = Knobs(speed=speed(20))
LEADER = Knobs(speed=speed(16))
CHALLENGER = Knobs(speed=speed(8))


@dataclass(frozen=True)
class AttackCase:
    name: str
    attacker: Knobs | None
    """The attacking challenger `A`; None: the leader attacks (`leader`)."""
    reason: ReasonCode | None
    """What `A` must FAIL with; None: it must not be charged (the leader's attack, or a stream
    that keeps the limits)."""
    detail: str = ""
    """What its verdict's detail must say."""
    leader: Knobs = LEADER


def _attacker(fault: Fault, attack: Attack | None = None) -> Knobs:
    return Knobs(speed=CHALLENGER.speed, fault=fault, attack=attack or Attack())


CASES: tuple[AttackCase, ...] = (
    AttackCase(
        "comment padding (5,000 empty comments before every token)",
        _attacker(Fault.COMMENT_PADDING),
        ReasonCode.BAD_RESPONSE,
        "events (at most 4 a token + 16)",
    ),
    AttackCase(
        "comment padding at the top concurrency level only",
        _attacker(Fault.PADDING_AT_TOP, Attack(pad_in_flight=WORKLOAD.concurrencies[-1])),
        ReasonCode.BAD_RESPONSE,
        "events (at most 4 a token + 16)",
    ),
    AttackCase(
        "one token id outside the vocabulary (3rd response)",
        _attacker(Fault.OUT_OF_VOCAB, Attack(bad_token_at=3)),
        ReasonCode.CONFORMANCE,
        f"token id 2000000000 is outside the model's vocabulary of {MODEL_VOCAB}",
    ),
    AttackCase(
        "one token id the baseline refuses (3rd response)",
        _attacker(Fault.OUT_OF_VOCAB, Attack(bad_token_at=3, bad_token_id=REFUSED_ID)),
        ReasonCode.CONFORMANCE,
        "the baseline refuses the tokens of response",
    ),
    AttackCase("padding to the stream limits", _attacker(Fault.PADDING_WITHIN_LIMITS), None),
    AttackCase(
        "leader slower in its second launch (the clock)",
        None,
        None,
        leader=Knobs(
            speed=LEADER.speed,
            fault=Fault.SLOW_AFTER,
            attack=Attack(slow_after_epoch_s=4e9, slow_factor=LEADER_SLOWDOWN),
        ),
    ),
)


@dataclass(frozen=True)
class AttackRound:
    case: AttackCase | None
    """None: the same round without an attacker."""
    job: JobSpec
    report: RoundReport
    judged: RoundJudgement
    seconds: float

    def verdicts(self) -> dict[str, tuple[Outcome, ReasonCode | None]]:
        return {j.key: (j.outcome, j.reason) for j in self.judged.judgements}


class _Context:
    """The job context: records nothing, and tells the leader the time of its second start."""

    def __init__(self, job_dir: Path, on_start: Mapping[int, Callable[[], None]]) -> None:
        self.job_dir = job_dir
        self.on_start = on_start

    def emit(self, phase: Phase, **fields: object) -> None:
        hook = self.on_start.get(int(str(fields.get("launch", -1))))
        if phase is Phase.START and hook is not None:
            hook()

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return TraceRef(name="trace.jsonl.gz", sha256="0" * 64, size=0, records=len(records))


def _command(knobs: Knobs) -> list[str]:
    return [sys.executable, toy_server.__file__, "--host", "127.0.0.1", "--knobs", knobs.to_json()]


def _ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def model_dir(root: Path) -> Path:
    path = root / "model"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"vocab_size": MODEL_VOCAB, "eos_token_id": EOS}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS}))
    return path


def params() -> ArenaParams:
    return arena_params(ArenaSettings())


def run_attack(case: AttackCase | None, root: Path) -> AttackRound:
    """The round with `case`'s attacker (None: without one), judged by `arena.judge`."""
    knobs: dict[str, Knobs] = {"B": BASELINE, "L": LEADER, "C": CHALLENGER}
    if case is not None:
        knobs["L"] = case.leader
        if case.attacker is not None:
            knobs["A"] = case.attacker
    images = {key: f"local/{key.lower()}@sha256:{i + 1:064x}" for i, key in enumerate(knobs)}
    commands = {images[key]: _command(k) for key, k in knobs.items()}
    roles = {"B": Role.BASELINE, "L": Role.LEADER}
    contestants = tuple(
        Contestant(
            key=key,
            role=roles.get(key, Role.CHALLENGER),
            hotkey=None if key == "B" else f"hotkey-{key}",
            image=images[key],
        )
        for key in knobs
    )
    order = ("B", "L", "C", *(["A"] if "A" in knobs else []), "L", "B")
    job = JobSpec(
        round_id=f"r-attack-{len(knobs)}",
        seed="5e" * 32,
        served_model_name=MODEL,
        model_path=str(model_dir(root)),
        max_model_len=MAX_MODEL_LEN,
        contestants=contestants,
        launch_order=order,
        workload=WORKLOAD,
        startup_deadline_s=20,
    )
    leader = knobs["L"]

    def slow_from_now() -> None:
        now = replace(leader.attack, slow_after_epoch_s=time.time())
        commands[images["L"]] = _command(replace(leader, attack=now))

    second_leader = len(order) - 2
    slow = leader.fault is Fault.SLOW_AFTER
    hooks: dict[int, Callable[[], None]] = {second_leader: slow_from_now} if slow else {}
    runtime = ProcessRuntime(commands, ServerSpec(MODEL, job.model_path, MAX_MODEL_LEN), _ports(2))
    started = time.monotonic()
    report = asyncio.run(RoundRunner(job, runtime, _Context(root, hooks)).run())
    seconds = time.monotonic() - started
    arena = params()
    judged = judge(job, RoundResult(job.round_id, report), arena, noise_bound((), arena), History())
    return AttackRound(case, job, report, judged, seconds)


def problems(attacked: AttackRound, control: AttackRound) -> list[str]:
    """What is not as the isolation principle requires; empty when the round is."""
    case = attacked.case
    if case is None:
        raise ValueError("the control round has no attack to check")
    found = []
    judged = attacked.judged
    if judged.void is not None:
        found.append(f"the round is void: {judged.void} {judged.detail}")
    honest = judged.of("C")
    launches = honest.increment.launches if honest and honest.increment else 0
    if honest is None or honest.reason not in (ReasonCode.CROWNED, ReasonCode.PENDING):
        found.append(f"the honest challenger was not compared: {honest}")
    elif launches < 1:
        found.append("the honest challenger's launch was not counted")
    mine, theirs = attacked.verdicts(), control.verdicts()
    for key in HONEST:
        if mine.get(key) != theirs.get(key):
            found.append(f"{key}: {mine.get(key)} with the attacker, {theirs.get(key)} without")
    attacker = judged.of("A")
    if case.attacker is not None and attacker is None:
        found.append("the attacker was not judged")
    elif attacker is not None and case.reason is not None:
        if (attacker.outcome, attacker.reason) != (Outcome.FAIL, case.reason):
            found.append(f"the attacker ended {attacker.outcome} {attacker.reason}")
        if case.detail not in attacker.detail:
            found.append(f"the attacker's detail does not say {case.detail!r}: {attacker.detail}")
    elif attacker is not None and (attacker.outcome is not Outcome.PASS or attacker.charged):
        found.append(
            f"a stream within the limits was charged: {attacker.outcome} {attacker.reason}"
        )
    return found


def attacker_line(attacked: AttackRound) -> tuple[str, str]:
    """(outcome, reason) of whoever attacked, for the catalogue's table."""
    key = "A" if attacked.case is not None and attacked.case.attacker is not None else "L"
    judgement = attacked.judged.of(key)
    if judgement is None:
        return "missing", ""
    return judgement.outcome.value, judgement.reason.value if judgement.reason else ""
