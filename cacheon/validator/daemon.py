"""The validator's main loop: poll -> select -> round -> score -> persist -> publish -> weights.

One concern per step, each in its own method; a step that fails is logged with its reason and
retried on the next pass, never the end of the loop. State is loaded (and any round a previous
process left behind is resumed or resolved) before anything else, so weights never go out on an
empty memory. SIGTERM stops new work; a round in flight is left to resume after a restart when
pods are kept (`pods.keep_on_restart`), otherwise abandoned as NO_DECISION and its pod released.
A watchdog exits non-zero when the chain stops producing blocks, so systemd restarts us.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cacheon.arena import (
    ArenaParams,
    Queued,
    RoundResult,
    Selection,
    Standings,
    select_challengers,
    worth_a_round,
)
from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.errors import ChainFailure
from cacheon.chain.wallet import Wallet, hotkey_address
from cacheon.config import Settings
from cacheon.log import get_logger
from cacheon.pods.leases import PodLeases
from cacheon.protocol import (
    Digest,
    GateThresholds,
    Hotkey,
    JobSpec,
    ReasonCode,
    Role,
)
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore, ObjectStoreError
from cacheon.validator.evaluation import (
    arena_params,
    evaluation_version,
    validator_secret,
    workload,
)
from cacheon.validator.flight import Flight
from cacheon.validator.leaderboard import publish_leaderboard
from cacheon.validator.poll import Poller
from cacheon.validator.publish import build_public_report
from cacheon.validator.restore import restore_standings
from cacheon.validator.rounds import RoundPlan, RoundRunner, plan_round
from cacheon.validator.scoring import Scoring
from cacheon.validator.screening import ManifestFetcher
from cacheon.validator.state import RoundRecord, RoundState, ValidatorState
from cacheon.validator.views import next_round
from cacheon.validator.watch import RoundWatcher, Step
from cacheon.validator.web import WebServer
from cacheon.validator.weights import WeightsStep

log = get_logger("cacheon.validator")
T = TypeVar("T")

EXIT_OK = 0
EXIT_STALLED = 3


class ChainStalled(Exception):
    """No new block for two watchdog periods, reconnect included."""


@dataclass
class Watchdog:
    period_s: float
    last_block: int = -1
    last_change: float = field(default_factory=time.monotonic)
    reconnected: bool = False

    def saw(self, block: int) -> None:
        if block != self.last_block:
            self.last_block, self.last_change, self.reconnected = block, time.monotonic(), False

    def stale(self) -> bool:
        return time.monotonic() - self.last_change > self.period_s


@dataclass(frozen=True)
class Parts:
    """The daemon's collaborators, built once by the CLI (or a test) from the settings."""

    db: Database
    chain: ChainClient
    wallet: Wallet
    leases: PodLeases
    store: ObjectStore
    fetch_manifest: ManifestFetcher | None = None
    watcher: RoundWatcher | None = None
    """Who follows rounds as they happen (the demo's live view); the daemon itself only logs."""


class Daemon:
    def __init__(self, settings: Settings, parts: Parts) -> None:
        self.settings = settings
        self.parts = parts
        self.params: ArenaParams = arena_params(settings.arena)
        self.workload = workload(settings.workload)
        self.gate = GateThresholds()
        self.version = evaluation_version(settings, self.workload, self.gate)
        self.state = ValidatorState(parts.db, evaluation_version=self.version)
        self.baseline = Digest(settings.model.baseline_image.rpartition("@")[2])
        poller_args = {} if parts.fetch_manifest is None else {"fetch": parts.fetch_manifest}
        self.poller = Poller(parts.chain, self.state, settings, self.version, **poller_args)
        self.runner = RoundRunner(
            settings,
            db=parts.db,
            state=self.state,
            leases=parts.leases,
            store=parts.store,
            watcher=parts.watcher,
        )
        self.scoring = Scoring(self.state, self.params, self.baseline)
        self.weights = WeightsStep(
            parts.chain,
            parts.wallet,
            self.state,
            self.params,
            self.gate,
            settings.chain.network,
            settings.validator.weights_interval_blocks,
            settings.validator.weights_version_key,
            watcher=parts.watcher,
        )
        self.hotkey = hotkey_address(parts.wallet)
        self.flight = Flight(settings.pods.max_parallel)
        self.stopping = asyncio.Event()
        self.watchdog = Watchdog(settings.validator.watchdog_s)
        self._last_sweep = time.monotonic()
        self.loop_alive_at = 0.0
        self.web = WebServer(self)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        log.info("validator starting", hotkey=self.hotkey, evaluation_version=self.version,
                 netuid=self.settings.chain.netuid)  # fmt: skip
        try:
            await self.web.start()
            sweep = await self.parts.leases.start()
            log.info("startup sweep", report=str(sweep))
            await self._step("recover", self.recover())
            await restore_standings(
                self.state,
                self.parts.store,
                netuid=self.settings.chain.netuid,
                evaluation_version=self.version,
                url=self.settings.validator.standings_url,
            )
            while not self.stopping.is_set():
                await self._until_stopped(self.cycle())
                self.loop_alive_at = time.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.stopping.wait(), self.settings.validator.poll_interval_s
                    )
        except ChainStalled as exc:
            log.error("chain stalled; exiting for a restart", reason=str(exc))
            return EXIT_STALLED
        finally:
            await self.flight.stop(self.settings.validator.stop_grace_s)
            await self.web.stop()
            await self.parts.leases.close()
            await self.parts.chain.close()
            log.info("validator stopped")
        return EXIT_OK

    async def _until_stopped(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one pass; once a stop is asked for, give it `stop_grace_s` to finish, then cancel
        it (a round in flight is then left to resume, or abandoned as NO_DECISION)."""
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self.settings.validator.stop_grace_s)
            if not task.done():
                log.warning("stop grace period over: cancelling the pass in flight")
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            stop.cancel()

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the current step, starting no new work")
            self.stopping.set()

    async def recover(self) -> None:
        """Resume or resolve rounds no round in flight here owns: those a previous process left
        behind, or whose conclusion failed on an earlier pass. A round that was running resumes
        in flight, on its own (it may take hours); one that never started ends now.

        A write or the chain failing is retried on the next pass (the round stays unfinished);
        anything else that breaks one round's conclusion (persisted data the code cannot take)
        ends that round as NO_DECISION with the reason, so one bad round never wedges the loop.
        """
        for record in self.state.unfinished_rounds():
            if self.flight.flying(record.round_id):
                continue
            try:
                await self._recover(record)
            except (asyncio.CancelledError, ChainStalled, ChainFailure, sqlite3.Error, OSError):
                raise
            except Exception as exc:  # the loop must outlive any one round's data
                detail = f"could not be concluded: {type(exc).__name__}: {exc}"
                log.exception("round voided in recovery", round_id=record.round_id, reason=detail)
                self.state.void_round(record.round_id, ReasonCode.AGENT_FAILED, detail, ())

    async def _recover(self, record: RoundRecord) -> None:
        job = JobSpec.model_validate_json(record.job)
        if record.state is RoundState.PLANNED or self.stopping.is_set():
            failed = RoundResult(record.round_id, None, ReasonCode.ROUND_ABANDONED, "never started")
            await self._conclude(job, failed, await self.parts.chain.read_state())
            return
        log.info("resuming round", round_id=record.round_id, pod=record.pod)
        self.flight.start(record.round_id, _challengers(job), self._resume(job, record))

    async def _resume(self, job: JobSpec, record: RoundRecord) -> None:
        result = await self.runner.resume(record)
        await self._conclude(job, result, await self.parts.chain.read_state())

    async def one_pass(self) -> None:
        """One pass of the loop with its rounds run to their end, then the weights and the pods
        steps after them: the unit of work of the demo, the benches and the tests."""
        await self.cycle()
        await self.flight.wait()
        await self._step("weights", self.weights.run(await self.parts.chain.read_state()))
        await self._step("pods", self._pods())

    # --- one pass of the loop --------------------------------------------------------------

    async def cycle(self) -> None:
        """One pass: poll, put new rounds in flight while there is room, weights, pods. Rounds
        run on in flight; each is scored when it finishes."""
        _, standings = self.state.standings()
        chain = await self._step("poll", self._poll(standings))
        if chain is None:
            return
        polled, chain_state = chain
        await self._step("rounds", self._launch(polled, chain_state))
        await self._step("weights", self.weights.run(chain_state))
        await self._step("pods", self._pods())

    async def _launch(self, polled: tuple[Queued, ...], chain: ChainState) -> None:
        """Start rounds from the queue, in first-seen order, one pod each, while room is left."""
        if self.stopping.is_set():
            return
        await self.recover()  # a round an earlier pass could not conclude is settled first
        busy = self.flight.busy()
        queue = [q for q in polled if (q.submission.hotkey, q.submission.digest) not in busy]
        while self.flight.room and queue and not self.stopping.is_set():
            selection = select_challengers(
                queue, self.state.last_started(), chain.block, self._affordable(), self.params
            )
            places = self.params.max_challengers_per_round
            if not worth_a_round(len(selection.chosen), places, in_flight=len(self.flight.rounds)):
                return
            plan = await self._plan(selection, chain)
            chosen = {(s.hotkey, s.digest) for s in selection.chosen}
            self.flight.start(plan.record.round_id, chosen, self._fly(plan, chain))
            queue = [q for q in queue if (q.submission.hotkey, q.submission.digest) not in chosen]

    async def _poll(self, standings: Standings) -> tuple[tuple[Queued, ...], ChainState]:
        opponent = standings.leader.digest if standings.leader is not None else None
        holders = frozenset(
            (h.hotkey, h.digest) for h in (standings.leader, standings.runner_up) if h is not None
        )
        polled = await self.poller.poll(opponent, holders)
        self.watchdog.saw(polled.chain.block)
        if self.watchdog.stale():
            if self.watchdog.reconnected:
                raise ChainStalled(f"no new block since block {self.watchdog.last_block}")
            log.warning("no new block; reconnecting to the chain", block=polled.chain.block)
            await self.parts.chain.close()
            self.watchdog.reconnected = True
            self.watchdog.last_change = time.monotonic()
        return polled.queue, polled.chain

    async def _plan(self, selection: Selection, chain: ChainState) -> RoundPlan:
        """The round's plan, persisted (salt, seed, job, starts) and announced before it runs."""
        _, standings = self.state.standings()
        records = {
            (r.submission.hotkey, r.submission.digest): r
            for r in self.state.submissions(current_only=True)
        }
        challengers = [records[(s.hotkey, s.digest)] for s in selection.chosen]
        leader = standings.leader
        leader_record = (
            None if leader is None else self.state.submission(leader.hotkey, leader.digest)
        )
        round_id = self._round_id(chain.block)
        plan = plan_round(
            round_id=round_id,
            block=chain.block,
            block_hash=chain.block_hash,
            secret=validator_secret(self.settings, self.parts.db),
            settings=self.settings,
            workload=self.workload,
            gate=self.gate,
            leader=leader if leader_record is not None else None,
            leader_image=None if leader_record is None else leader_record.image,
            challengers=challengers,
            base_layers=self.poller.base_layers,
        )
        starts = [s for s in selection.chosen if not self.state.started(s.hotkey, s.digest)]
        self.state.begin_round(plan.record, starts)
        log.info("round planned", round_id=round_id, challengers=[c.submission.hotkey for c in challengers],
                 leader=None if leader is None else leader.hotkey, salt_hash=plan.record.salt_hash)  # fmt: skip
        await self._publish(chain, plan.record)
        return plan

    async def _fly(self, plan: RoundPlan, chain: ChainState) -> None:
        """Run one planned round on its pod and conclude it, whatever happens on the way."""
        round_id = plan.record.round_id
        try:
            result = await self.runner.run(plan)
        except asyncio.CancelledError:
            if not self._resumable(plan):
                stopped = RoundResult(
                    round_id, None, ReasonCode.ROUND_ABANDONED, "validator stopped"
                )
                await asyncio.shield(self._conclude(plan.job, stopped, chain))
            raise
        except Exception as exc:  # whatever broke (a full disk, say), the round must end
            log.exception("round failed unexpectedly", round_id=round_id)
            detail = f"{type(exc).__name__}: {exc}"
            result = RoundResult(round_id, None, ReasonCode.AGENT_FAILED, detail)
        await self._conclude(plan.job, result, await self._fresh_chain(chain))

    async def _fresh_chain(self, chain: ChainState) -> ChainState:
        """The chain now, for whom a finished round can still pay; the one it started on if the
        chain cannot be read (the metagraph changes slowly; the next pass sets weights anyway)."""
        try:
            return await self.parts.chain.read_state()
        except ChainFailure as exc:
            log.warning("chain unreadable at a round's end; scoring on its start", reason=str(exc))
            return chain

    async def _conclude(self, job: JobSpec, result: RoundResult, chain: ChainState) -> None:
        """Score and persist one finished round; rounds finishing together take turns."""
        async with self.flight.scoring:
            _, standings = self.state.standings()
            registered = {n.hotkey for n in chain.neurons}
            scored = self.scoring.score(job, result, standings, registered)
            self.state.score_round(scored)
        log.info("round scored", round_id=job.round_id, void=scored.void, detail=scored.detail,
                 verdicts=[(v.hotkey, v.outcome.value, v.reason) for v in scored.verdicts],
                 changes=[(c.kind.value, c.holder.hotkey) for c in scored.changes])  # fmt: skip
        if self.parts.watcher is not None:
            outcome = (
                f"void: {scored.detail}" if scored.void else f"{len(scored.verdicts)} verdicts"
            )
            self.parts.watcher.step(Step.SCORE, f"round {job.round_id}: {outcome}", job.round_id)
        await self._publish(chain, self.state.round(job.round_id))

    async def _publish(self, chain: ChainState, record: RoundRecord | None) -> None:
        report = build_public_report(
            self.state,
            params=self.params,
            validator_hotkey=self.hotkey,
            evaluation_version=self.version,
            netuid=chain.netuid,
            block=chain.block,
            uids={n.hotkey: n.uid for n in chain.neurons},
            last_round=record,
        )
        try:
            key = await asyncio.to_thread(self.parts.store.publish_public_report, report)
        except ObjectStoreError as exc:
            log.warning("public report not published; next round will", reason=str(exc))
            return
        log.info("public report published", key=key)
        await publish_leaderboard(self.parts.store, report, next_round(self))

    async def _pods(self) -> None:
        await self.parts.leases.release_idle()
        if time.monotonic() - self._last_sweep >= self.settings.validator.sweep_interval_s:
            self._last_sweep = time.monotonic()
            await self.parts.leases.sweep()

    # --- helpers ---------------------------------------------------------------------------

    async def _step(self, name: str, work: Coroutine[Any, Any, T]) -> T | None:
        """Run one step; a failure is logged with its reason and the loop goes on."""
        try:
            result = await work
        except (asyncio.CancelledError, ChainStalled):
            raise
        except Exception as exc:  # a failed step is retried next pass; the loop must live
            log.exception("step failed; retrying next pass", step=name, reason=str(exc))
            return None
        return result

    def _affordable(self) -> int:
        """Challengers the remaining daily budget admits: another round, only while the
        projected spend of every round in flight and this one fits."""
        pods = self.settings.pods
        round_cost = pods.max_price_per_hour * self.settings.workload.expected_round_hours
        in_flight = len(self.flight.rounds)
        return (
            self.params.max_challengers_per_round
            if self.parts.leases.budget_left() >= (in_flight + 1) * round_cost
            else 0
        )

    def _round_id(self, block: int) -> str:
        base = f"r{block:010d}"
        taken = {r.round_id for r in self.state.rounds(limit=20)}
        suffix = next(
            n for n in range(len(taken) + 1) if (f"{base}-{n}" if n else base) not in taken
        )
        return f"{base}-{suffix}" if suffix else base

    def _resumable(self, plan: RoundPlan) -> bool:
        """A round whose agent runs on a kept pod is left for the next start to resume."""
        record = self.state.round(plan.record.round_id)
        running = record is not None and record.state is RoundState.RUNNING
        if running and self.settings.pods.keep_on_restart:
            log.info(
                "round left running for the next start to resume", round_id=plan.record.round_id
            )
            return True
        return False


def _challengers(job: JobSpec) -> frozenset[tuple[Hotkey, Digest]]:
    return frozenset(
        (Hotkey(c.hotkey), Digest(c.image.rpartition("@")[2]))
        for c in job.contestants
        if c.role is Role.CHALLENGER and c.hotkey is not None
    )
