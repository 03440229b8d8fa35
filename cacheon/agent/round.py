"""One round on the pod: every launch of the job's order, measured and reported raw.

The order comes from the JobSpec (`B, L, C1..Cn, L', B'`, plus any extra interleaved launches the
validator asks for): the baseline and the leader are bookended so that drift can be interpolated
out (DESIGN.md §4.5). Each launch pulls by digest, starts with the run profile, waits for health,
warms up, measures every block of every level with the same prompts for every contestant, and
stops. A launch that breaks the contract ends with the contestant's reason code; later launches
of that contestant are skipped.

No image is pulled while a launch measures: a multi-GB pull beside some launches and not others
(the leader's L ran beside the next image's pull, its L' did not) is noise a contestant could
even tell apart and exploit. The next image is pulled while the current server starts (the
start-up deadline is stretched by the time the two overlapped, so another contestant's pull
never costs a contestant its start-up), and measuring waits until that pull has finished. A
block measured while the client saturated on streams within the contract's limits is measured
again over more workers (`remeasure`); a launch's measured window (first measured block's start
to the last one's end) places it in time for the arena's interpolation.

The agent computes no verdict: the report carries per-block speeds (geometric mean of 1/T_k with
k = the baseline's length for that prompt capped at max_tokens, which needs the baseline's token
counts, so speeds are computed once all launches ran), the client's own load, image facts,
enforced limits, and a trace per launch. `arena` turns them into ratios and decisions on the
validator.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import docker

from cacheon.agent import gatepass, metrics
from cacheon.agent.hardware import read_gpus
from cacheon.agent.loadgen import BlockResult, LoadGenerator, Measured, WorkerLost, workers_for
from cacheon.agent.remeasure import core_count, measure_block
from cacheon.agent.response import read_vocab_size
from cacheon.agent.runtime import (
    DockerRuntime,
    LaunchFault,
    RunProfile,
    Runtime,
    Server,
    ServerSpec,
)
from cacheon.agent.teacher import Messages
from cacheon.agent.workload import Prompt, PromptSource, Purpose
from cacheon.log import get_logger
from cacheon.protocol import (
    Attribution,
    Contestant,
    ContestantResult,
    HardwareFacts,
    ImageFacts,
    JobSpec,
    Launch,
    LevelMeasurement,
    Outcome,
    Phase,
    ReasonCode,
    Role,
    RoundReport,
    TraceRecord,
    TraceRef,
)

HEALTH_POLL_S = 0.5
EXIT_GRACE_S = 2.0
"""After a fault, how long the engine gets to notice that the server died (crash, OOM)."""
DETAIL_CHARS = 1000

log = get_logger(__name__)

_NOT_THE_CONTESTANT = {
    ReasonCode.REGISTRY_UNAVAILABLE: Attribution.REGISTRY,
    ReasonCode.AGENT_FAILED: Attribution.VALIDATOR,
    ReasonCode.CLIENT_SATURATED: Attribution.VALIDATOR,
}


class Context(Protocol):
    """What a job kind gets from the job runner (`cacheon.agent.job.JobContext`)."""

    @property
    def job_dir(self) -> Path: ...

    def emit(self, phase: Phase, **fields: object) -> None: ...

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef: ...


@dataclass
class _LaunchRun:
    index: int
    key: str
    started_ns: int
    ended_ns: int = 0
    blocks: list[tuple[int, int, BlockResult]] = field(default_factory=list)
    fault: LaunchFault | None = None
    remeasured: dict[tuple[int, int], int] = field(default_factory=dict)
    """(concurrency, block) -> times it was measured again after the client saturated."""
    measured_from_ns: int | None = None
    measured_to_ns: int | None = None


async def run_round(spec: JobSpec, ctx: Context) -> RoundReport:
    """The `round` job kind: the docker runtime with this host's run profile."""
    server = ServerSpec(
        spec.served_model_name, spec.model_path, spec.max_model_len, frozenset(spec.base_layers)
    )
    client = docker.from_env(timeout=600)
    try:
        runtime = DockerRuntime(client, RunProfile.for_host(), server)
        report = await RoundRunner(spec, runtime, ctx).run()
    finally:
        client.close()
    gpus = read_gpus().facts
    return report.model_copy(
        update={
            "hardware": gpus.model_copy(update={"enforced_limits": report.hardware.enforced_limits})
        }
    )


class RoundRunner:
    def __init__(self, spec: JobSpec, runtime: Runtime, ctx: Context) -> None:
        contestants = {c.key: c for c in spec.contestants}
        unknown = sorted(set(spec.launch_order) - set(contestants))
        if unknown:
            raise ValueError(f"launch order names unknown contestants: {unknown}")
        self.spec = spec
        self.runtime = runtime
        self.ctx = ctx
        self.contestants = contestants
        self.prompts = PromptSource(spec.workload, spec.seed, spec.max_model_len)
        self.facts: dict[str, ImageFacts] = {}
        self.failed: dict[str, LaunchFault] = {}
        self.enforced: dict[str, str] = {}
        self._pulls: dict[str, asyncio.Task[ImageFacts]] = {}
        self.log_dir = ctx.job_dir / "logs"
        self.runs: list[_LaunchRun] = []
        baselines = [
            i for i, k in enumerate(spec.launch_order) if contestants[k].role is Role.BASELINE
        ]
        self.scoring_index = baselines[-1] if baselines else None
        """The last baseline launch (B') scores every contestant's outputs (DESIGN.md §4.4)."""
        self.verdicts: dict[str, gatepass.Verdict] | None = None
        self.vocab_size = read_vocab_size(Path(spec.model_path))
        if self.vocab_size is None:
            log.warning("the model declares no vocab_size: token ids are not range-checked")
        self.cores = core_count()

    async def run(self) -> RoundReport:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        removed = await self.runtime.remove_leftovers()
        if removed:
            log.warning("removed leftover servers", count=removed)
        runs = self.runs
        order = self.spec.launch_order
        try:
            for index, key in enumerate(order):
                if key in self.failed:
                    continue
                run = await self._launch(index, self.contestants[key])
                runs.append(run)
                if run.fault is not None:
                    self.failed[key] = run.fault
        finally:
            for task in self._pulls.values():
                task.cancel()
        launches = self._launches(runs)
        for index, run in enumerate(runs):
            await self.ctx.upload_trace(self._trace(run, launches[index]))
        return RoundReport(
            round_id=self.spec.round_id,
            launches=tuple(launches),
            results=tuple(self._result(key) for key in dict.fromkeys(order)),
            hardware=HardwareFacts(enforced_limits=self.enforced),
        )

    def _pull(self, image: str) -> asyncio.Task[ImageFacts]:
        if image not in self._pulls:
            self._pulls[image] = asyncio.create_task(self.runtime.pull(image))
        return self._pulls[image]

    def _prefetch(self, index: int) -> None:
        """Start pulling the image of the launch after `index` (while launch `index` starts)."""
        later = [k for k in self.spec.launch_order[index + 1 :] if k not in self.failed]
        if later:
            self._pull(self.contestants[later[0]].image)

    def _pulling(self) -> bool:
        return any(not task.done() for task in self._pulls.values())

    async def _pulls_done(self) -> None:
        """Wait for every pull in flight, without raising: a pull's failure is its own
        contestant's, and comes out when that contestant's launch awaits it."""
        pending = [task for task in self._pulls.values() if not task.done()]
        if pending:
            await asyncio.wait(pending)

    async def _launch(self, index: int, contestant: Contestant) -> _LaunchRun:
        key = contestant.key
        run = _LaunchRun(index, key, time.perf_counter_ns())
        try:
            self.ctx.emit(Phase.PULL, contestant=key, launch=index, message=contestant.image)
            self.facts[key] = await self._pull(contestant.image)
            self.ctx.emit(Phase.START, contestant=key, launch=index)
            log_file = self.log_dir / f"launch-{index:02d}-{_safe(key)}.log"
            name = f"cacheon-{_safe(self.spec.round_id)}-{index:02d}"
            server = await self.runtime.start(contestant.image, name, log_file)
            self._prefetch(index)
            try:
                if not self.enforced:
                    self.enforced = await server.enforced_limits()
                await self._measure(server, run)
                if index == self.scoring_index:
                    run.ended_ns = time.perf_counter_ns()  # scoring is not part of its timing
                    await self._score(server, run)
            except (WorkerLost, OSError) as lost:  # ours, unless the server died under it
                raise await _blame(
                    server, LaunchFault(ReasonCode.AGENT_FAILED, str(lost))
                ) from None
            except LaunchFault as fault:
                raise await _blame(server, fault) from None
            finally:
                ended = await server.stop()
                log.info("launch ended", key=key, launch=index, exit=ended.code, oom=ended.oom)
        except LaunchFault as fault:
            run.fault = fault
            detail = fault.detail
            log.warning("launch failed", key=key, launch=index, reason=fault.reason, detail=detail)
            self.ctx.emit(
                Phase.FAILED, contestant=key, launch=index, error=f"{fault.reason}: {detail}"
            )
        run.ended_ns = run.ended_ns or time.perf_counter_ns()
        return run

    async def _score(self, server: Server, scorer: _LaunchRun) -> None:
        self.ctx.emit(Phase.SCORE, contestant=scorer.key, launch=scorer.index)
        messages: dict[str, Messages] = {}
        outputs = [
            gatepass.launch_outputs(
                r.index,
                r.key,
                self.contestants[r.key].role,
                r.blocks,
                prompts_of=self._block,
                messages=messages,
            )
            for r in [*self.runs, scorer]
            if r.fault is None
        ]
        self.verdicts = await gatepass.correctness_pass(
            server.target,
            outputs,
            model=self.spec.served_model_name,
            model_dir=Path(self.spec.model_path),
            prompts=messages,
            thresholds=self.spec.gate,
            seed=self.spec.seed,
        )

    async def _measure(self, server: Server, run: _LaunchRun) -> None:
        workload = self.spec.workload
        model = self.spec.served_model_name
        workers = max(workers_for(c) for c in workload.concurrencies)

        def more_workers(count: int) -> LoadGenerator:
            return LoadGenerator(
                server.target, model, count, workload.request_timeout_s, vocab_size=self.vocab_size
            )

        async with more_workers(workers) as load:
            await self._wait_healthy(server, load)
            await self._pulls_done()
            total = sum(workload.blocks_at(c) for c in workload.concurrencies)
            for concurrency in workload.concurrencies:
                if workload.warmup_requests:
                    self.ctx.emit(Phase.WARMUP, contestant=run.key, launch=run.index)
                    # at least one request per stream, so every connection the level uses is
                    # open before it is measured
                    count = max(workload.warmup_requests, concurrency)
                    warmup = self.prompts.block(Purpose.WARMUP, concurrency, 0, count)
                    _raise_fault(await load.run_block(warmup, concurrency))
                for block in range(workload.blocks_at(concurrency)):
                    prompts = self._block(concurrency, block)
                    began = time.perf_counter_ns()
                    measured = await measure_block(
                        load, prompts, concurrency, more_workers=more_workers, cores=self.cores
                    )
                    result = measured.result
                    run.measured_from_ns = run.measured_from_ns or began
                    run.measured_to_ns = time.perf_counter_ns()
                    run.blocks.append((concurrency, block, result))
                    if measured.remeasured:
                        run.remeasured[concurrency, block] = measured.remeasured
                    _raise_fault(result)
                    self.ctx.emit(
                        Phase.MEASURE,
                        contestant=run.key,
                        launch=run.index,
                        done=len(run.blocks),
                        total=total,
                    )

    async def _wait_healthy(self, server: Server, load: LoadGenerator) -> None:
        deadline = time.monotonic() + self.spec.startup_deadline_s
        while (tick := time.monotonic()) < deadline:
            if (ended := await server.exited()) is not None:
                reason = ReasonCode.OOM if ended.oom else ReasonCode.CRASHED
                raise LaunchFault(reason, f"exited with code {ended.code} before it was healthy")
            if await load.health() == 200:
                return
            pulling = self._pulling()
            await asyncio.sleep(HEALTH_POLL_S)
            if pulling:  # the start-up shared the host with another image's pull
                deadline += time.monotonic() - tick
        raise LaunchFault(
            ReasonCode.STARTUP_TIMEOUT,
            f"not healthy within startup_deadline_s={self.spec.startup_deadline_s:g}",
        )

    def _block(self, concurrency: int, block: int) -> tuple[Prompt, ...]:
        count = self.spec.workload.prompts_at(concurrency)
        return self.prompts.block(Purpose.MEASURE, concurrency, block, count)

    def _launches(self, runs: Sequence[_LaunchRun]) -> list[Launch]:
        baseline = _baseline_counts(
            run for run in runs if self.contestants[run.key].role is Role.BASELINE
        )
        return [
            Launch(
                index=run.index,
                contestant=run.key,
                started_ns=run.started_ns,
                ended_ns=run.ended_ns,
                measured_from_ns=None if run.fault else run.measured_from_ns,
                measured_to_ns=None if run.fault else run.measured_to_ns,
                levels=()
                if run.fault
                else tuple(
                    self._level(c, b, result, baseline).model_copy(
                        update={"remeasured": run.remeasured.get((c, b), 0)}
                    )
                    for c, b, result in run.blocks
                ),
                outcome=Outcome.FAIL if run.fault else None,
                reason=run.fault.reason if run.fault else None,
                detail=run.fault.detail[-DETAIL_CHARS:] if run.fault else "",
            )
            for run in runs
        ]

    def _level(
        self,
        concurrency: int,
        block: int,
        result: BlockResult,
        baseline: dict[tuple[int, int, int], int],
    ) -> LevelMeasurement:
        prompts = self._block(concurrency, block)
        responses = [m.response for m in result.measured if m.response is not None]
        times = []
        for measured in result.measured:
            if measured.response is None:
                continue  # only in a faulted block, whose launch reports no levels
            n = metrics.output_tokens(measured.response)
            n_baseline = baseline.get((concurrency, block, measured.index), n)
            k = metrics.speed_k(n_baseline, prompts[measured.index].max_tokens)
            times.append(metrics.time_to_token_ns(measured.response, k))
        itl = [gap for r in responses for gap in metrics.itl_ns(r)]
        return LevelMeasurement(
            concurrency=concurrency,
            block=block,
            speed=metrics.speed(times),
            requests=len(times),
            client_saturated=result.saturated,
            ttft_s=statistics.median(metrics.ttft_ns(r) for r in responses) / 1e9,
            itl_s=statistics.median(itl) / 1e9 if itl else None,
            e2e_s=statistics.median(metrics.e2e_ns(r) for r in responses) / 1e9,
            output_tokens=sum(metrics.output_tokens(r) for r in responses),
            throughput_tok_s=metrics.throughput(responses),
            client_cpu_share=max(c.cpu_share for c in result.clients),
            client_lag_p99_s=max(c.lag_p99_ns for c in result.clients) / 1e9,
        )

    def _result(self, key: str) -> ContestantResult:
        fault = self.failed.get(key)
        if fault is None and self.contestants[key].role is not Role.BASELINE:
            verdict = self._verdict(key)
            return ContestantResult(
                key=key,
                image=self.facts.get(key),
                outcome=verdict.outcome,
                reason=verdict.reason,
                detail=verdict.detail[-DETAIL_CHARS:],
                copy_of=verdict.copy_of,
            )
        if fault is None:
            return ContestantResult(key=key, image=self.facts.get(key), outcome=Outcome.PASS)
        outcome = Outcome.NO_DECISION if fault.reason in _NOT_THE_CONTESTANT else Outcome.FAIL
        return ContestantResult(
            key=key,
            image=self.facts.get(key),
            outcome=outcome,
            reason=fault.reason,
            detail=fault.detail[-DETAIL_CHARS:],
        )

    def _verdict(self, key: str) -> gatepass.Verdict:
        if self.verdicts is None:  # no baseline launch scored: correctness is undecided
            return gatepass.Verdict(
                Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE, "no baseline launch scored"
            )
        return self.verdicts.get(
            key,
            gatepass.Verdict(
                Outcome.NO_DECISION, ReasonCode.BASELINE_UNSTABLE, "measured after B' scored"
            ),
        )

    def _trace(self, run: _LaunchRun, launch: Launch) -> list[TraceRecord]:
        records = []
        for concurrency, block, result in run.blocks:
            for measured in result.measured:
                records.append(_record(launch, concurrency, block, measured))
        return records


def _raise_fault(result: BlockResult) -> None:
    fault = result.fault
    if fault is not None and fault.reason is not None:
        raise LaunchFault(fault.reason, fault.detail)


async def _blame(server: Server, fault: LaunchFault) -> LaunchFault:
    """A server that died explains the fault its clients saw: it crashed, or ran out of memory."""
    deadline = time.monotonic() + EXIT_GRACE_S
    while True:
        ended = await server.exited()
        if ended is not None:
            reason = ReasonCode.OOM if ended.oom else ReasonCode.CRASHED
            return LaunchFault(reason, f"exited with code {ended.code}: {fault.detail}")
        if time.monotonic() >= deadline or fault.reason is ReasonCode.STARTUP_TIMEOUT:
            return fault
        await asyncio.sleep(0.1)


def _baseline_counts(runs: Iterable[_LaunchRun]) -> dict[tuple[int, int, int], int]:
    """Output tokens of the first baseline launch that measured each prompt."""
    counts: dict[tuple[int, int, int], int] = {}
    for run in runs:
        if run.fault is not None:
            continue
        for concurrency, block, result in run.blocks:
            for measured in result.measured:
                if measured.response is not None:
                    counts.setdefault(
                        (concurrency, block, measured.index),
                        metrics.output_tokens(measured.response),
                    )
    return counts


def _record(launch: Launch, concurrency: int, block: int, measured: Measured) -> TraceRecord:
    response = measured.response
    return TraceRecord(
        launch=launch.index,
        contestant=launch.contestant,
        concurrency=concurrency,
        block=block,
        prompt=measured.index,
        sent_ns=measured.sent_ns,
        token_ns=response.token_ns if response else (),
        token_ids=response.token_ids if response else (),
        finish_reason=response.finish_reason if response else None,
        error=f"{measured.reason}: {measured.detail}" if measured.reason else None,
    )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60]
