"""`cacheon-agent`: the benchmark agent that runs on the GPU pod.

It must import only the base install (no bittensor, boto3, asyncssh): the pod runs hostile
containers and holds no validator secret or validator-only dependency. The validator drives it
over SSH:

    cacheon-agent run --job DIR/job.json        HMAC key on stdin; detaches, prints {"pid": N}
    cacheon-agent refresh_urls --job DIR/job.json   fresh upload slots (JSON list) on stdin
    cacheon-agent check                         the pod's GPUs and docker engine, as JSON
    cacheon-agent fetch_model --plan FILE       fetch and verify the model; progress JSON lines

and an operator runs, against a baseline already serving (DESIGN.md §4.4):

    cacheon-agent calibrate --url URL [--url URL2 ...] --model NAME --model-dir DIR
                                                the baseline's self-drift and suggested thresholds

Exit codes: 0 success, 1 the command failed, 2 bad usage or bad input (nothing started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from cacheon import __version__
from cacheon.cli.help import add_command, examples

EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cacheon-agent",
        description="Cacheon benchmark agent: runs one round's launches on a GPU pod.",
        epilog=examples(
            "cacheon-agent check",
            "cacheon-agent run --job /opt/cacheon-agent/jobs/r42/job.json < round.key",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cacheon-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = add_command(
        commands,
        "run",
        "run a job detached; the round's HMAC key is read from stdin",
        "cacheon-agent run --job /opt/cacheon-agent/jobs/r42/job.json < round.key",
    )
    run.add_argument(
        "--job", metavar="PATH", type=Path, required=True, help="the JobSpec file (job.json)"
    )
    refresh = add_command(
        commands,
        "refresh_urls",
        "replace a running job's upload URLs with those on stdin",
        "cacheon-agent refresh_urls --job /opt/cacheon-agent/jobs/r42/job.json < urls.json",
    )
    refresh.add_argument(
        "--job", metavar="PATH", type=Path, required=True, help="the running job's job.json"
    )
    add_command(
        commands,
        "check",
        "report the pod's GPUs and docker engine as JSON",
        "cacheon-agent check",
    )
    fetch = add_command(
        commands,
        "fetch_model",
        "fetch and verify the model weights",
        "cacheon-agent fetch_model --plan /opt/cacheon-agent/models/plan.json",
    )
    fetch.add_argument(
        "--plan", metavar="PATH", type=Path, required=True, help="the FetchPlan file"
    )
    _add_calibrate(commands)
    return parser


def _add_calibrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calibrate = add_command(
        commands,
        "calibrate",
        "measure the baseline's drift against itself and suggest gate thresholds",
        "cacheon-agent calibrate --url http://127.0.0.1:8000 --model Qwen/Qwen2.5-72B-Instruct"
        " --model-dir /models/qwen --max-model-len 32768",
        "cacheon-agent calibrate --url http://127.0.0.1:8000 --url http://127.0.0.1:8001"
        " --model Qwen/Qwen2.5-72B-Instruct --model-dir /models/qwen --max-model-len 32768"
        " --concurrency 1,64 --prompts 128",
    )
    calibrate.add_argument(
        "--url",
        metavar="URL",
        action="append",
        required=True,
        help="a baseline instance (repeat for other batch settings); the first one scores",
    )
    calibrate.add_argument("--model", metavar="NAME", required=True, help="the served model name")
    calibrate.add_argument(
        "--model-dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="the model, for its EOS token ids",
    )
    calibrate.add_argument(
        "--concurrency",
        metavar="LEVELS",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=(1, 16, 64),
        help="comma-separated concurrency levels (default 1,16,64)",
    )
    calibrate.add_argument(
        "--prompts", metavar="N", type=int, default=64, help="prompts per setting"
    )
    calibrate.add_argument(
        "--max-tokens", metavar="N", type=int, default=256, help="per request (default 256)"
    )
    calibrate.add_argument(
        "--max-model-len", metavar="N", type=int, required=True, help="the served context length"
    )
    calibrate.add_argument(
        "--seed", metavar="TEXT", default="calibrate", help="seed of the prompts"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from cacheon.log import configure_logging

    configure_logging("json", "info")
    handlers = {
        "run": _run,
        "refresh_urls": _refresh_urls,
        "check": _check,
        "fetch_model": _fetch_model,
        "calibrate": _calibrate,
    }
    return handlers[args.command](args)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"cacheon-agent: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    import os

    from cacheon.agent import job

    try:
        key = job.read_key()
        spec = job.load_job(args.job)
    except job.JobError as exc:
        return _fail(str(exc))
    job_dir = args.job.parent
    pid = job.detach(job_dir)
    if pid is not None:
        print(json.dumps({"pid": pid}), flush=True)
        return 0
    status = asyncio.run(job.run_job(spec, key, job_dir))
    os._exit(status.exit_code)


def _refresh_urls(args: argparse.Namespace) -> int:
    from cacheon.agent import uploads
    from cacheon.protocol import JobSpec

    try:
        spec = JobSpec.model_validate_json(args.job.read_bytes())
        slots = uploads.parse_slots(sys.stdin.buffer.read())
    except OSError as exc:
        return _fail(f"{args.job}: {exc.strerror}")
    except ValueError as exc:
        return _fail(str(exc))
    unknown = {slot.name for slot in slots} - {slot.name for slot in spec.uploads}
    if unknown:
        return _fail(f"no such upload slots in this job: {sorted(unknown)}")
    uploads.write_refreshed_slots(args.job.parent, slots)
    print(json.dumps({"refreshed": len(slots)}))
    return 0


def _check(_args: argparse.Namespace) -> int:
    from cacheon.agent.hardware import check_pod

    print(check_pod().model_dump_json())
    return 0


def _fetch_model(args: argparse.Namespace) -> int:
    from cacheon.agent.modelfetch import FetchError, fetch_model
    from cacheon.protocol import FetchPlan, ProgressEvent

    try:
        plan = FetchPlan.model_validate_json(args.plan.read_bytes())
    except OSError as exc:
        return _fail(f"{args.plan}: {exc.strerror}")
    except ValueError as exc:
        return _fail(f"{args.plan}: not a valid fetch plan: {exc}")

    def emit(event: ProgressEvent) -> None:
        print(event.model_dump_json(exclude_none=True), flush=True)

    try:
        result = asyncio.run(fetch_model(plan, emit))
    except FetchError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"{plan.dest}: {exc}", EXIT_FAILED)
    print(json.dumps({"fetched": result.fetched, "cached": result.cached}), flush=True)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from cacheon.agent.calibrate import CalibrationError, calibrate, render
    from cacheon.agent.teacher import BaselineError
    from cacheon.protocol import GateThresholds

    try:
        result = asyncio.run(
            calibrate(
                args.url,
                args.model,
                args.model_dir,
                concurrencies=args.concurrency,
                prompts=args.prompts,
                max_tokens=args.max_tokens,
                max_model_len=args.max_model_len,
                seed=args.seed,
                thresholds=GateThresholds(),
            )
        )
    except (CalibrationError, BaselineError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(render(result))
    print(result.suggested.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
