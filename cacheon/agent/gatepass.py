"""The correctness pass of a round: during `B'`, the baseline re-scores every contestant.

Every measured response of every launch that measured cleanly is teacher-forced through the
running baseline (`teacher.py`) and judged (`correctness.py`), one launch at a time: a contestant
fails if any of its launches fails. Challengers are also compared with the leader, response by
response, for a behavioural copy (DESIGN.md §4.6).

The baseline runs with `--network none` and is reachable only on its own loopback, so the
scoring client runs in a worker process that joins the baseline's network namespace, as the load
generator's workers do. A baseline that cannot score makes the pass NO_DECISION for everyone
scored, never a contestant's failure.
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


def baseline_lengths(launches: Sequence[LaunchOutputs]) -> dict[str, int]:
    """Output tokens per prompt in the first baseline launch that measured it."""
    lengths: dict[str, int] = {}
    for launch in launches:
        if launch.role is Role.BASELINE:
            for r in launch.responses:
                lengths.setdefault(r.key, len(r.tokens))
    return lengths


def _enter(netns_pid: int | None) -> None:
    if netns_pid is not None:
        join_network_namespace(netns_pid)


@dataclass(frozen=True)
class _Work:
    """What the scoring worker needs (it is pickled to the worker process)."""

    base_url: str
    model: str
    launches: tuple[LaunchOutputs, ...]
    prompts: Mapping[str, Messages]
    thresholds: GateThresholds
    eos_ids: frozenset[int]
    seed: str


def _score_all(work: _Work) -> tuple[list[list[ResponseScore]], Cost]:
    """Runs in the worker process; it returns what it measured and logs nothing (its stdout
    would mix with the agent's progress lines)."""

    async def main() -> tuple[list[list[ResponseScore]], Cost]:
        async with aiohttp.ClientSession() as session:
            teacher = Teacher(session, work.base_url, work.model)
            cache: dict[str, list[int]] = {}
            out = [
                await score_responses(
                    teacher,
                    launch.responses,
                    work.prompts,
                    work.thresholds,
                    eos_ids=work.eos_ids,
                    seed=f"{work.seed}/{launch.index}",
                    prompt_ids=cache,
                )
                for launch in work.launches
            ]
            return out, teacher.cost

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
        eos_ids = eos_token_ids(model_dir)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, context, _enter, (baseline.netns_pid,)) as pool:
            work = _Work(
                baseline.base_url, model, tuple(scored), prompts, thresholds, eos_ids, seed
            )
            scores, cost = await asyncio.get_running_loop().run_in_executor(pool, _score_all, work)
    except BaselineError as exc:
        log.warning("the baseline could not score", error=str(exc))
        unstable = Verdict(Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE, str(exc))
        return {launch.key: unstable for launch in scored}
    log.info(
        "teacher forcing done",
        requests=cost.requests,
        positions=cost.positions,
        megabytes=round(cost.response_bytes / 1e6, 1),
        request_s=round(cost.request_s, 2),
        parse_s=round(cost.parse_s, 2),
        skipped=len(cost.skipped),
    )
    return _verdicts(scored, scores, baseline_lengths(launches), thresholds)


def _verdicts(
    scored: Sequence[LaunchOutputs],
    scores: Sequence[Sequence[ResponseScore]],
    base_lengths: Mapping[str, int],
    thresholds: GateThresholds,
) -> dict[str, Verdict]:
    leader = next((launch for launch in scored if launch.role is Role.LEADER), None)
    verdicts: dict[str, Verdict] = {}
    for launch, launch_scores in zip(scored, scores, strict=True):
        if verdicts.get(launch.key, Verdict(Outcome.PASS)).outcome is not Outcome.PASS:
            continue  # its first failing launch speaks for it
        lengths = {r.key: len(r.tokens) for r in launch.responses}
        result = judge(launch_scores, lengths, base_lengths, thresholds)
        copy_of = verdicts.get(launch.key, Verdict(Outcome.PASS)).copy_of
        if leader is not None and launch.key != leader.key and copy_of is None:
            share = behavioural_copy_share(launch.responses, leader.responses)
            copy_of = leader.key if share >= thresholds.copy_share else None
        detail = f"launch {launch.index}: {result.detail}" if result.reason else ""
        verdicts[launch.key] = Verdict(result.outcome, result.reason, detail, copy_of, result)
    return verdicts
