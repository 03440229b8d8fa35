"""The correctness pass of a round: during `B'`, the baseline re-scores every contestant.

Every measured response of every launch that measured cleanly is teacher-forced through the
running baseline (`teacher.py`) and judged (`correctness.py`), one launch at a time: a contestant
fails if any of its launches fails. Challengers are also compared with the leader, response by
response, for a behavioural copy (DESIGN.md §4.6).

The baseline runs with `--network none` and is reachable only on its own loopback, so the
scoring client runs in a worker process that joins the baseline's network namespace, as the load
generator's workers do.

Whose fault a failure of the pass is (DESIGN.md §3): a response whose tokens the baseline refuses
while it answers a control request (`teacher.ResponseRefused`) fails that contestant with
`conformance`, and the pass goes on with the next launch. A baseline that cannot score stops the
pass: every contestant not yet judged is NO_DECISION `baseline_unstable`, and a verdict reached
before it stands. Nothing else escapes either: a failure of the pass itself (a bug, the worker
process lost) is NO_DECISION `agent_failed` for everyone not yet judged, never a round without a
report.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cacheon.agent.correctness import (
    GateResult,
    Response,
    ResponseScore,
    behavioural_copy_share,
    judge,
)
from cacheon.agent.loadgen import BlockResult, Target, join_network_namespace
from cacheon.agent.teacher import (
    BaselineError,
    Cost,
    Messages,
    ResponseRefused,
    Teacher,
    eos_token_ids,
    response_from_stream,
    score_responses,
)
from cacheon.agent.workload import Prompt
from cacheon.log import get_logger
from cacheon.protocol import GateThresholds, Outcome, ReasonCode, Role

log = get_logger(__name__)


@dataclass(frozen=True)
class LaunchOutputs:
    """The measured responses of one clean launch, keyed by prompt (`concurrency/block/index`)."""

    index: int
    key: str
    role: Role
    responses: tuple[Response, ...]


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: ReasonCode | None = None
    detail: str = ""
    copy_of: str | None = None
    gate: GateResult | None = None
    """The gate's numbers behind the verdict, for `cacheon-miner check` to show each check."""


def launch_outputs(
    index: int,
    key: str,
    role: Role,
    blocks: Sequence[tuple[int, int, BlockResult]],
    *,
    prompts_of: Callable[[int, int], Sequence[Prompt]],
    messages: dict[str, Messages],
) -> LaunchOutputs:
    """A launch's measured responses for the gate; records each prompt's messages in `messages`."""
    responses = []
    for concurrency, block, result in blocks:
        prompts = prompts_of(concurrency, block)
        for measured in result.measured:
            if measured.response is not None:
                prompt_key = f"{concurrency}/{block}/{measured.index}"
                prompt = prompts[measured.index]
                messages[prompt_key] = prompt.messages
                responses.append(
                    response_from_stream(prompt_key, prompt.max_tokens, measured.response)
                )
    return LaunchOutputs(index, key, role, tuple(responses))


def baseline_tokens(launches: Sequence[LaunchOutputs]) -> dict[str, tuple[int, ...]]:
    """Token ids per prompt in the first baseline launch that measured it."""
    tokens: dict[str, tuple[int, ...]] = {}
    for launch in launches:
        if launch.role is Role.BASELINE:
            for r in launch.responses:
                tokens.setdefault(r.key, tuple(t.token for t in r.tokens))
    return tokens


def baseline_lengths(launches: Sequence[LaunchOutputs]) -> dict[str, int]:
    """Output tokens per prompt in the first baseline launch that measured it."""
    return {key: len(ids) for key, ids in baseline_tokens(launches).items()}


def _enter(netns_pid: int | None) -> None:
    if netns_pid is not None:
        join_network_namespace(netns_pid)


@dataclass(frozen=True)
class Work:
    """What the pass needs (it is pickled to the scoring worker process)."""

    base_url: str
    model: str
    launches: tuple[LaunchOutputs, ...]
    prompts: Mapping[str, Messages]
    thresholds: GateThresholds
    eos_ids: frozenset[int]
    seed: str
    controls: Mapping[str, Sequence[int]]
    """The baseline's own token ids per prompt: the control request of a refusal."""


@dataclass(frozen=True)
class LaunchScore:
    """One launch's part of the pass: its scores, or the refusal that fails its contestant."""

    index: int
    scores: tuple[ResponseScore, ...] = ()
    refused: str | None = None


@dataclass(frozen=True)
class Scored:
    """What the pass returns: the launches it scored, in order, and why it stopped short of the
    others (None: it scored them all)."""

    launches: tuple[LaunchScore, ...]
    cost: Cost
    stopped: Verdict | None = None


async def score_launches(teacher: Teacher, work: Work) -> Scored:
    """Score `work.launches` in order, one contestant's refusal failing only that contestant,
    the baseline's own failure (or any other) stopping the pass where it happened."""
    cache: dict[str, list[int]] = {}
    failed: set[str] = set()
    done: list[LaunchScore] = []
    for launch in work.launches:
        if launch.key in failed:
            continue  # its first failing launch speaks for it
        try:
            scores = await score_responses(
                teacher,
                launch.responses,
                work.prompts,
                work.thresholds,
                eos_ids=work.eos_ids,
                seed=f"{work.seed}/{launch.index}",
                prompt_ids=cache,
                controls=work.controls,
            )
        except ResponseRefused as exc:
            failed.add(launch.key)
            done.append(LaunchScore(launch.index, refused=str(exc)))
            continue
        except BaselineError as exc:
            stop = Verdict(Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE, str(exc))
            return Scored(tuple(done), teacher.cost, stop)
        except Exception as exc:  # a bug in scoring decides nothing for anyone
            stop = Verdict(Outcome.NO_DECISION, ReasonCode.AGENT_FAILED, f"scoring: {exc!r}")
            return Scored(tuple(done), teacher.cost, stop)
        done.append(LaunchScore(launch.index, tuple(scores)))
    return Scored(tuple(done), teacher.cost)


def _score_all(work: Work) -> Scored:
    """Runs in the worker process; it returns what it measured and logs nothing (its stdout
    would mix with the agent's progress lines)."""

    async def main() -> Scored:
        async with aiohttp.ClientSession() as session:
            return await score_launches(Teacher(session, work.base_url, work.model), work)

    return asyncio.run(main())


async def correctness_pass(
    baseline: Target,
    launches: Sequence[LaunchOutputs],
    *,
    model: str,
    model_dir: Path,
    prompts: Mapping[str, Messages],
    thresholds: GateThresholds,
    seed: str,
) -> dict[str, Verdict]:
    """A verdict per scored contestant key (the baseline is the reference, never scored)."""
    scored = [launch for launch in launches if launch.role is not Role.BASELINE]
    if not scored:
        return {}
    try:
        work = Work(
            baseline.base_url,
            model,
            tuple(scored),
            prompts,
            thresholds,
            eos_token_ids(model_dir),
            seed,
            baseline_tokens(launches),
        )
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, context, _enter, (baseline.netns_pid,)) as pool:
            done = await asyncio.get_running_loop().run_in_executor(pool, _score_all, work)
    except BaselineError as exc:
        done = Scored(
            (), Cost(), Verdict(Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE, str(exc))
        )
    except Exception as exc:  # the worker lost, say: the round still reports
        stop = Verdict(Outcome.NO_DECISION, ReasonCode.AGENT_FAILED, f"scoring: {exc!r}")
        done = Scored((), Cost(), stop)
    cost = done.cost
    log.info(
        "teacher forcing done",
        requests=cost.requests,
        positions=cost.positions,
        megabytes=round(cost.response_bytes / 1e6, 1),
        request_s=round(cost.request_s, 2),
        parse_s=round(cost.parse_s, 2),
        skipped=len(cost.skipped),
    )
    if done.stopped is not None:
        log.warning(
            "teacher forcing stopped", reason=done.stopped.reason, error=done.stopped.detail
        )
    return _verdicts(scored, done, baseline_lengths(launches), thresholds)


def _verdicts(
    scored: Sequence[LaunchOutputs],
    done: Scored,
    base_lengths: Mapping[str, int],
    thresholds: GateThresholds,
) -> dict[str, Verdict]:
    """Judge the launches the pass scored; a contestant is judged once all its launches were
    scored or one of them failed, and is the pass's `stopped` verdict otherwise."""
    leader = next((launch for launch in scored if launch.role is Role.LEADER), None)
    by_index = {launch.index: launch for launch in scored}
    verdicts: dict[str, Verdict] = {}
    for part in done.launches:
        launch = by_index[part.index]
        if verdicts.get(launch.key, Verdict(Outcome.PASS)).outcome is not Outcome.PASS:
            continue  # its first failing launch speaks for it
        if part.refused is not None:
            detail = f"launch {launch.index}: {part.refused}"
            verdicts[launch.key] = Verdict(Outcome.FAIL, ReasonCode.CONFORMANCE, detail)
            continue
        lengths = {r.key: len(r.tokens) for r in launch.responses}
        result = judge(part.scores, lengths, base_lengths, thresholds)
        copy_of = verdicts.get(launch.key, Verdict(Outcome.PASS)).copy_of
        if leader is not None and launch.key != leader.key and copy_of is None:
            share = behavioural_copy_share(
                launch.responses, leader.responses, tolerance=thresholds.copy_logprob_tolerance
            )
            copy_of = leader.key if share >= thresholds.copy_share else None
        detail = f"launch {launch.index}: {result.detail}" if result.reason else ""
        verdicts[launch.key] = Verdict(result.outcome, result.reason, detail, copy_of, result)
    if done.stopped is not None:
        judged = {part.index for part in done.launches}
        for launch in scored:
            failed = verdicts.get(launch.key, Verdict(Outcome.PASS)).outcome is Outcome.FAIL
            if launch.index not in judged and not failed:
                verdicts[launch.key] = done.stopped
    return verdicts
