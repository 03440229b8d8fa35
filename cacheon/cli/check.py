"""`cacheon-miner check`: the validator's yardstick on the miner's own machine.

It pre-screens the image as a validator's poll does, runs the validator's round locally (the
baseline, the image, the leader when given, bookended), and scores the report with the
validator's own rules, then prints the verdict a validator would reach with every number behind
it. `--server URL` checks a server that is already running instead of an image.
"""

from __future__ import annotations

import argparse
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import docker.errors
from rich.console import Console
from rich.progress import Progress

from cacheon.agent.check import (
    CONTESTANT,
    LEADER_HOTKEY,
    OWN_HOTKEY,
    CheckPlan,
    CheckRun,
    attached_image,
    local_runtime,
    run_check,
    write_trace,
)
from cacheon.arena import (
    ArenaParams,
    History,
    Judgement,
    LaunchNoise,
    Listing,
    RoundResult,
    Screened,
    Submission,
    Unlisted,
    judge,
    noise_bound,
    screen,
    with_listing,
)
from cacheon.chain.commitments import ImageRef, Rejection, parse_reference
from cacheon.cli import check_render as render
from cacheon.cli.common import EXIT_FAILED, EXIT_USAGE, add_settings_arguments
from cacheon.cli.help import add_command
from cacheon.config import ArenaSettings, Settings
from cacheon.protocol import (
    Block,
    Digest,
    GateThresholds,
    Hotkey,
    JobSpec,
    Outcome,
    Phase,
    ProgressEvent,
    ReasonCode,
    RoundReport,
    TraceRecord,
    TraceRef,
    Uid,
)
from cacheon.validator.evaluation import arena_params, workload
from cacheon.validator.launch_bars import LaunchBars, progress_display
from cacheon.validator.screening import list_image

_HEX = re.compile(r"^[0-9a-f]{1,128}$")
NOISE_PRIOR = "what a validator assumes before it has measured its pod; --sigma takes one's"
MINE = Hotkey(OWN_HOTKEY)
LEADER = Hotkey(LEADER_HOTKEY)


class CheckFailed(Exception):
    """The check could not run; one line a miner can act on, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = add_command(
        commands,
        "check",
        "run the validator's round on IMAGE locally and print the verdict it would get",
        "cacheon-miner check docker.io/alice/fast-qwen@sha256:4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f --model-path ~/models/Qwen2.5-72B-Instruct",
        "cacheon-miner check --server http://127.0.0.1:8000 --model-path ~/models/qwen --sigma 0.009",
    )
    check.add_argument("image", metavar="IMAGE", nargs="?", help="<registry>/<repo>@sha256:<hex>")
    check.add_argument("--server", metavar="URL", help="check a server already running at URL")
    check.add_argument("--baseline", metavar="IMAGE", help="default: model.baseline_image")
    check.add_argument("--baseline-server", metavar="URL", help="a baseline already running")
    check.add_argument("--leader", metavar="IMAGE", help="the current leader's image, to compare")
    check.add_argument("--seed", metavar="HEX", help="the round's seed (default: random)")
    check.add_argument(
        "--model-path", metavar="DIR", required=True, type=Path, help="the model's files"
    )
    check.add_argument(
        "--sigma",
        metavar="SIGMA",
        type=float,
        help="launch noise sigma_L, log scale (a validator's published launch_noise)",
    )
    check.add_argument(
        "--out", metavar="DIR", type=Path, default=Path("cacheon-check"), help="report and logs"
    )
    add_settings_arguments(check)


def plan(settings: Settings, args: argparse.Namespace) -> tuple[CheckPlan, dict[str, str]]:
    """The check's plan and the attached servers' URLs by their image names."""
    urls: dict[str, str] = {}
    if (args.image is None) == (args.server is None):
        raise CheckFailed("give exactly one of IMAGE or --server URL", EXIT_USAGE)
    image = args.image
    if args.server is not None:
        image = attached_image(args.server)
        urls[image] = args.server
    baseline = args.baseline or settings.model.baseline_image
    if args.baseline_server is not None:
        baseline = attached_image(args.baseline_server)
        urls[baseline] = args.baseline_server
    if not args.model_path.is_dir():
        raise CheckFailed(
            f"--model-path {args.model_path}: not a directory; give the model's files as"
            " validators mount them (config.json, tokenizer_config.json, weights)",
            EXIT_USAGE,
        )
    seed = (args.seed or secrets.token_hex(32)).lower()
    if not _HEX.match(seed):
        raise CheckFailed(f"--seed {args.seed}: give hexadecimal digits", EXIT_USAGE)
    w = settings.workload
    return (
        CheckPlan(
            contestant=image,
            baseline=baseline,
            leader=args.leader,
            seed=seed,
            served_model_name=settings.model.name,
            model_path=str(args.model_path.resolve()),
            max_model_len=settings.model.max_model_len,
            workload=workload(w),
            gate=GateThresholds(),
            startup_deadline_s=w.startup_deadline_s,
        ),
        urls,
    )


async def check(settings: Settings, args: argparse.Namespace, out: Console) -> int:
    """Run the check; returns 0 when the verdict is PASS, else 1."""
    checked, urls = plan(settings, args)
    job = checked.job()
    out.print(
        f"checking {args.server or args.image}\n"
        f"  baseline {args.baseline_server or checked.baseline}\n"
        f"  leader {checked.leader or '(none: the image is compared with the baseline)'}\n"
        f"  seed {checked.seed}\n"
        f"  launches {' '.join(job.launch_order)}; "
        + ", ".join(
            f"{w.blocks_at(c)}x{w.prompts_at(c)} prompts at concurrency {c}"
            for w in [checked.workload]
            for c in w.concurrencies
        )
        + f", max_tokens {checked.workload.max_tokens}",
        highlight=False,
        soft_wrap=True,
    )
    screened = render.Prescreen()
    if args.server is None:
        screened = await prescreen(
            checked.contestant,
            None if args.baseline_server else checked.baseline,
            checked.leader,
            settings.arena,
        )
        if screened.base_layers is not None:
            job = replace(checked, base_layers=screened.base_layers).job()
        found = screened.screened
        if found is not None and found.outcome is Outcome.FAIL:
            render.image_facts(out, screened, None)
            out.print("the validator's pre-screen fails it before any launch:")
            render.verdict_line(out, Outcome.FAIL, found.reason, found.detail)
            return EXIT_FAILED
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        run = await _run_with_progress(job, urls, args.out, out)
    except docker.errors.DockerException as exc:
        raise CheckFailed(
            f"cannot use Docker ({exc}); start dockerd or set DOCKER_HOST, or use --server URL"
        ) from None
    (args.out / "report.json").write_text(run.report.model_dump_json(indent=1))
    facts = next((r.image for r in run.report.results if r.key == CONTESTANT), None)
    render.image_facts(out, screened, facts)
    render.launches(out, job, run.report)
    render.gate_checks(out, run.gate.get(CONTESTANT), checked.gate)
    params = arena_params(settings.arena)
    noise = noise_bound((), params)
    if args.sigma is not None:
        noise = LaunchNoise.known(max(args.sigma, params.sigma_floor))
    mine = judgement(job, run.report, params, noise)
    source = "given with --sigma" if args.sigma is not None else NOISE_PRIOR
    render.verdict(out, mine, noise.core, source)
    out.print(f"report, traces and server logs: {args.out}", highlight=False)
    return 0 if mine.outcome is Outcome.PASS else EXIT_FAILED


def judgement(
    job: JobSpec,
    report: RoundReport,
    params: ArenaParams,
    noise: LaunchNoise,
    history: History | None = None,
) -> Judgement:
    """The image's judgement, by the validator's own function (`arena.judge`); the history is
    empty unless given (a check is a new submission's first round)."""
    result = RoundResult(job.round_id, report)
    mine = judge(job, result, params, noise, history or History()).of(CONTESTANT)
    if mine is None:
        raise CheckFailed(f"the round judged no {CONTESTANT}; this is a bug in the check")
    return mine


async def prescreen(
    image: str, baseline: str | None, leader: str | None, arena: ArenaSettings
) -> render.Prescreen:
    """The validator's poll-time pre-screen (`arena.screen`) of `image`, with the leader as the
    only earlier holder; `baseline` and `leader` are None where they are attached servers."""
    ref = parse_reference(image)
    if isinstance(ref, Rejection):
        mine = Submission(MINE, Uid(1), Digest("sha256:" + "0" * 64), Block(1))
        failed = Screened(Outcome.FAIL, mine, ReasonCode.BAD_COMMITMENT, ref.detail)
        return render.Prescreen(screened=failed)
    answer = await list_image(ref)
    warnings: list[str] = []
    bases = [await _listing(baseline, "baseline", warnings)]
    bases += [await _listing(public, "base image", warnings) for public in arena.base_images]
    base = None
    if all(listing is not None for listing in bases):
        base = frozenset(layer for listing in bases if listing for layer in listing.layers)
    leading = await _listing(leader, "leader", warnings)
    protected = []
    if leader is not None and leading is not None:
        digest = Digest(leader.rpartition("@")[2])
        protected.append(with_listing(Submission(LEADER, Uid(0), digest, Block(0)), leading))
    screened = screen(
        Submission(MINE, Uid(1), ref.digest, Block(1)),
        answer,
        max_bytes=int(arena.max_image_gb * 1e9),
        protected=protected,
        base_layers=base,
        tiny_bytes=int(arena.copy_tiny_mb * 1e6),
    )
    if screened.outcome is Outcome.NO_DECISION:
        warnings.append(f"a validator would wait: {screened.reason}: {screened.detail}")
    listing = answer if isinstance(answer, Listing) else None
    leader_layers = None if leading is None else frozenset(leading.layers)
    return render.Prescreen(ref, listing, base, leader_layers, screened, tuple(warnings))


async def _listing(image: str | None, role: str, warnings: list[str]) -> Listing | None:
    if image is None:
        return None
    ref = parse_reference(image)
    if not isinstance(ref, ImageRef):
        warnings.append(f"{role} {image}: {ref.detail}; copy checks skipped")
        return None
    answer = await list_image(ref)
    if isinstance(answer, Unlisted):
        warnings.append(f"{role} manifest unavailable, copy checks skipped: {answer.detail}")
        return None
    return answer


async def _run_with_progress(
    job: JobSpec, urls: dict[str, str], job_dir: Path, out: Console
) -> CheckRun:
    with progress_display(out) as progress:
        ctx = ProgressContext(job_dir, progress)
        async with local_runtime(job, urls) as runtime:
            run = await run_check(job, runtime, ctx)
        ctx.finish()
        return run


class ProgressContext:
    """The round's progress as one bar per launch (the validator's `LaunchBars`); traces are
    kept beside the report."""

    def __init__(self, job_dir: Path, progress: Progress) -> None:
        self.job_dir = job_dir
        self.bars = LaunchBars(progress)

    def emit(self, phase: Phase, **fields: object) -> None:
        self.bars.show(ProgressEvent(ts=time.time(), phase=phase, **fields))

    def finish(self) -> None:
        self.bars.finish()

    async def upload_trace(self, records: Sequence[TraceRecord]) -> TraceRef:
        return write_trace(self.job_dir, records)
