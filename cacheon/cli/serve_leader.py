"""`cacheon-miner serve-leader`: the contest's product, the fastest correct server, on your machine.

A validator's public report names the leader by image digest. This reads the report (the same
fetch as `cacheon-miner status --report-url`), checks the reference against the digest, pulls it,
checks what the engine pulled against the digest again, and runs it under the validator's run
profile with its port published (`leader_container` says what differs and why), so any OpenAI
client can use it until Ctrl-C or SIGTERM stop and remove it. Every failure is one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
from docker.models.containers import Container
from rich.console import Console

from cacheon.agent.runtime import (
    LaunchFault,
    RunProfile,
    ServerSpec,
    check_pulled,
    container_options,
)
from cacheon.chain.commitments import Rejection, parse_reference
from cacheon.cli.common import EXIT_FAILED, EXIT_USAGE, add_settings_arguments
from cacheon.cli.help import examples
from cacheon.cli.leader_container import (
    LABEL,
    NETWORK_DIFFERENCE,
    container_name,
    docker_commands,
    published,
)
from cacheon.cli.report_status import ReportUnavailable, fetch_report
from cacheon.config import Settings
from cacheon.protocol import PublicReport

POLL_S = 0.5
LOG_LINES = 5
"""Lines of the server's log quoted when it fails."""

EPILOG = (
    textwrap.fill(NETWORK_DIFFERENCE, 78, break_on_hyphens=False)
    + "\n\n"
    + examples(
        "cacheon-miner serve-leader --report-url https://validator.example/cacheon/public/latest.json"
        " --model-path ~/models/Qwen2.5-72B-Instruct",
        "cacheon-miner serve-leader --report-url URL --model-path DIR --port 9000 --print",
    )
)


class ServeFailed(Exception):
    """Why the leader could not be served: one line a user can act on, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve-leader",
        help="run the current leader's image locally as an OpenAI-compatible server",
        description=(
            "Read a validator's public report, pull its leader's image by digest, check the"
            " digest, and run it with the validator's run profile; prints the OpenAI base URL"
            " and serves until Ctrl-C or SIGTERM, then stops and removes the container."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--report-url", metavar="URL", required=True, help="a validator's public/latest.json"
    )
    serve.add_argument(
        "--model-path",
        metavar="DIR",
        type=Path,
        required=True,
        help="the model's files (mounted read-only, as on the validator's pod)",
    )
    serve.add_argument(
        "--port", metavar="PORT", type=int, default=8000, help="host port (default 8000)"
    )
    serve.add_argument(
        "--address",
        metavar="ADDRESS",
        default="127.0.0.1",
        help="host address the port is published on (default 127.0.0.1: this machine only)",
    )
    serve.add_argument(
        "--print",
        action="store_true",
        help="only show the image and the equivalent docker commands",
    )
    add_settings_arguments(serve)


def serve_leader(settings: Settings, args: argparse.Namespace, out: Console) -> int:
    report = _report(args.report_url)
    image = leader_image(report)
    model = args.model_path.expanduser()
    if not model.is_dir():
        raise ServeFailed(f"--model-path {model}: not a directory of the model's files", EXIT_USAGE)
    spec = ServerSpec(settings.model.name, str(model.resolve()), settings.model.max_model_len)
    name = container_name(args.port)
    options = published(
        container_options(RunProfile.for_host(), spec), name, args.address, args.port
    )
    leader = report.leader
    out.print(
        f"leader of netuid {report.netuid} (report of block {report.block}):"
        f" {leader.hotkey if leader else '?'}\nimage {image}",
        highlight=False,
        soft_wrap=True,
    )
    if args.print:
        for line in docker_commands(image, name, options):
            out.print(line, highlight=False, soft_wrap=True, markup=False)
        return 0
    host = "127.0.0.1" if args.address == "0.0.0.0" else args.address
    base = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
    client = _docker()
    try:
        with _sigterm_interrupts():
            return _serve(
                client,
                image=image,
                name=name,
                options=options,
                base=base,
                settings=settings,
                out=out,
            )
    finally:
        client.close()


def leader_image(report: PublicReport) -> str:
    """The leader's canonical image reference, checked against the digest the report gives."""
    leader = report.leader
    if leader is None:
        raise ServeFailed(
            f"the report of block {report.block} has no leader: no server has beaten the"
            " baseline by the moat yet, so there is nothing to serve"
        )
    ref = parse_reference(leader.image)
    if isinstance(ref, Rejection):
        raise ServeFailed(f"the leader's image {leader.image!r} cannot be pulled: {ref.detail}")
    if ref.digest != leader.digest:
        raise ServeFailed(
            f"digest mismatch in the report: the leader is {leader.digest}"
            f" but its image reference is {ref.canonical}"
        )
    return ref.canonical


def _report(url: str) -> PublicReport:
    try:
        return asyncio.run(fetch_report(url))
    except ReportUnavailable as exc:
        raise ServeFailed(str(exc)) from None


def _docker() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ServeFailed(f"cannot use Docker ({exc}); start dockerd or set DOCKER_HOST") from None
    return client


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the server the way Ctrl-C does (a KeyboardInterrupt in the main thread)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(
    client: docker.DockerClient,
    *,
    image: str,
    name: str,
    options: dict[str, Any],
    base: str,
    settings: Settings,
    out: Console,
) -> int:
    try:
        _pull(client, image, out)
    except KeyboardInterrupt:
        raise ServeFailed("interrupted during the pull; nothing was started") from None
    container = _start(client, image, name, options)
    try:
        _wait_healthy(container, f"{base}/health", settings.workload.startup_deadline_s, out)
        out.print(
            f"OpenAI base URL: {base}/v1  (model {settings.model.name!r})\n"
            "serving until Ctrl-C or SIGTERM",
            highlight=False,
            soft_wrap=True,
        )
        _wait_exit(container)
    except KeyboardInterrupt:
        out.print("stopping the server …")
    finally:
        _remove(client, container, name)
    return 0


def _pull(client: docker.DockerClient, image: str, out: Console) -> None:
    """Pull in a daemon thread, so Ctrl-C ends the command at once (the engine cancels the pull
    when its client goes), then check the pulled image against the digest."""
    outcome: list[Any] = []

    def pull() -> None:
        try:
            outcome.append(client.images.pull(image))
        except docker.errors.DockerException as exc:
            outcome.append(exc)

    out.print(f"pulling {image} …", highlight=False, soft_wrap=True)
    worker = threading.Thread(target=pull, name="pull", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
    (pulled,) = outcome
    if isinstance(pulled, docker.errors.DockerException):
        raise ServeFailed(f"cannot pull {image}: {_explain(pulled)}")
    try:
        check_pulled(image, pulled.attrs)
    except LaunchFault as exc:
        raise ServeFailed(f"digest mismatch: {exc.detail}") from None


def _start(
    client: docker.DockerClient, image: str, name: str, options: dict[str, Any]
) -> Container:
    leftover = (
        f"a leftover of an earlier run? remove it: docker rm -f {name}; docker network rm {name}"
    )
    try:
        client.networks.create(name, driver="bridge", check_duplicate=True, labels={LABEL: "1"})
    except docker.errors.APIError as exc:
        raise ServeFailed(
            f"cannot create the network {name}: {_explain(exc)}; {leftover}"
        ) from None
    try:
        container: Container = client.containers.run(image, detach=True, name=name, **options)
    except docker.errors.APIError as exc:
        _remove(client, None, name)
        raise ServeFailed(f"cannot start {image}: {_explain(exc)}") from None
    return container


def _wait_healthy(container: Container, url: str, deadline_s: float, out: Console) -> None:
    """Until GET /health answers 200, the way the validator waits; fails if the server exits."""
    out.print(f"waiting for {url} (up to {deadline_s:.0f} s) …", highlight=False)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        _check_running(container)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(POLL_S)
    raise ServeFailed(f"the server was not healthy within {deadline_s:.0f} s ({url})")


def _wait_exit(container: Container) -> None:
    while True:
        _check_running(container)
        time.sleep(POLL_S * 4)


def _check_running(container: Container) -> None:
    container.reload()
    state = container.attrs["State"]
    if state.get("Running"):
        return
    tail = container.logs(tail=LOG_LINES).decode(errors="replace").strip().replace("\n", " | ")
    raise ServeFailed(
        f"the server exited with code {state.get('ExitCode')}"
        f"{' (out of memory)' if state.get('OOMKilled') else ''}; its log ends: {tail or '(empty)'}"
    )


def _remove(client: docker.DockerClient, container: Container | None, name: str) -> None:
    """Stop (SIGTERM, then SIGKILL after the contract's 30 s) and remove the container and its
    network; a second Ctrl-C or SIGTERM cannot leave them half removed."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.stop(timeout=30)
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(name, force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.networks.get(name).remove()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _explain(exc: docker.errors.DockerException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip().splitlines()[0][:300]
