"""`cacheon-miner serve-leader`: the leader of a published report, served on this machine.

The real test pushes the toy leader to the test registry, publishes a report naming it, runs the
command in its own process against the test dockerd and streams an OpenAI-style chat completion
through the published port; the container must carry the validator's run profile and be gone
after SIGTERM. `--print`'s commands are run with the docker CLI on the same engine. Bad input is
one line and a non-zero exit.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker.errors
import httpx
import pytest

from cacheon.agent.runtime import (
    LaunchFault,
    RunProfile,
    ServerSpec,
    check_pulled,
    container_options,
)
from cacheon.cli.leader_container import container_name, docker_commands, published
from cacheon.cli.miner import main
from cacheon.protocol import PublicReport, ReasonCode, Standing
from cacheon.testing.miner_cli import run_miner
from cacheon.testing.services import DockerDaemon, Registry, free_port
from cacheon.testing.toy_image import push_toy_image

MODEL = "Qwen/Qwen2.5-72B-Instruct"
"""The served model name the default settings give the container."""
DIGEST = "sha256:" + "ab" * 32
START_S = 120.0


class Reports:
    """A validator's public endpoint on loopback: path -> (status, body)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, bytes]] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = pages.get(self.path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads its own output."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, path: str, body: bytes, status: int = 200) -> str:
        self.pages[path] = (status, body)
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def reports() -> Iterator[Reports]:
    served = Reports()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


def report(leader: Standing | None) -> bytes:
    return (
        PublicReport(
            validator_hotkey="5Validator",
            validator_version="0.1.0",
            evaluation_version="e1",
            netuid=14,
            block=1234,
            published_at=time.time(),
            leader=leader,
        )
        .model_dump_json()
        .encode()
    )


def standing(image: str, digest: str | None = None) -> Standing:
    digest = digest or image.rpartition("@")[2]
    return Standing(hotkey="5Leader", uid=2, digest=digest, image=image, speed_ratio=1.9)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (report(None), "has no leader"),
        (b'{"schema_version": 1, "leader": ', "is not a Cacheon public report"),
        (report(standing(f"docker.io/someone/server@sha256:{'cd' * 32}", DIGEST)), "digest mismatch in the report"),
        (report(standing(DIGEST)), "cannot be pulled"),
    ],
    ids=["no-leader", "malformed-json", "digest-mismatch", "not-a-reference"],
)  # fmt: skip
def test_a_bad_report_is_one_line_and_exit_1(
    page: bytes,
    expected: str,
    reports: Reports,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = reports.publish("/public/latest.json", page)
    assert main(["serve-leader", "--report-url", url, "--model-path", str(tmp_path)]) == 1
    assert expected in one_error_line(capsys)


def test_an_unreachable_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/public/latest.json"
    assert main(["serve-leader", "--report-url", url, "--model-path", str(tmp_path)]) == 1
    assert f"cannot read {url}" in one_error_line(capsys)


def test_docker_unavailable_is_one_line(reports: Reports, tmp_path: Path) -> None:
    """In its own process: the docker SDK leaves a socket open when it cannot reach the engine,
    which a CLI ignores and pytest reports."""
    url = reports.publish("/r.json", report(standing(f"docker.io/a/b@{DIGEST}")))
    done = run_miner(
        "serve-leader", "--report-url", url, "--model-path", str(tmp_path),
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot use Docker")


def test_a_missing_model_dir_is_a_usage_error(
    reports: Reports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = reports.publish("/r.json", report(standing(f"docker.io/a/b@{DIGEST}")))
    missing = tmp_path / "nothing"
    assert main(["serve-leader", "--report-url", url, "--model-path", str(missing)]) == 2
    assert "not a directory" in one_error_line(capsys)


def test_the_pulled_image_must_hold_the_digest() -> None:
    hub = f"docker.io/someone/server@{DIGEST}"
    # the engine names Docker Hub images without the host
    assert check_pulled(hub, {"RepoDigests": [f"someone/server@{DIGEST}"]}).digest == DIGEST
    official = f"docker.io/library/python@{DIGEST}"
    assert check_pulled(official, {"RepoDigests": [f"python@{DIGEST}"]}).digest == DIGEST
    other = f"someone/server@sha256:{'ef' * 32}"
    with pytest.raises(LaunchFault) as raised:
        check_pulled(hub, {"RepoDigests": [other]})
    assert raised.value.reason is ReasonCode.DIGEST_MISMATCH


def test_print_writes_every_option_of_the_run_profile(tmp_path: Path) -> None:
    profile = RunProfile(
        memory_bytes=1 << 30, pids=4096, shm_bytes=1 << 28, tmpfs_bytes=1 << 26,
        memlock_bytes=-1, gpus=True,
    )  # fmt: skip
    spec = ServerSpec(MODEL, str(tmp_path), 32768)
    name = container_name(8000)
    create, run = docker_commands(
        "docker.io/a/b@" + DIGEST,
        name,
        published(container_options(profile, spec), name, "127.0.0.1", 8000),
    )
    assert create == f"docker network create {name}"
    words = shlex.split(run)
    pairs = {f"{a} {b}" for a, b in itertools.pairwise(words)}
    for flag in (
        "--network cacheon-leader-8000", "-p 127.0.0.1:8000:8000", "--gpus all",
        f"-v {tmp_path}:/model:ro", "-e HF_HUB_OFFLINE=1", f"-e SERVED_MODEL_NAME={MODEL}",
        "-e MAX_MODEL_LEN=32768", "-e PORT=8000", "-e MODEL_PATH=/model", "--cap-drop ALL",
        "--security-opt no-new-privileges", "--ulimit memlock=-1:-1", "--pids-limit 4096",
        f"--memory {1 << 30}", f"--shm-size {1 << 28}", "--log-driver json-file",
    ):  # fmt: skip
        assert flag in pairs, flag
    assert "--read-only" in words
    assert "none" not in words


# --- the real thing ------------------------------------------------------------------------------


@pytest.fixture
def leader(docker_daemon: DockerDaemon, registry: Registry) -> str:
    return push_toy_image(docker_daemon, registry, "toy/serve-leader")


def _env(docker_daemon: DockerDaemon) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": docker_daemon.host, "COLUMNS": "200"}


def _ask(base_url: str) -> tuple[str, str | None, int]:
    """An OpenAI client's streaming chat completion: (text, finish_reason, events)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something about caches."}],
        "stream": True,
        "max_tokens": 12,
        "temperature": 0,
    }
    text, finish, events = "", None, 0
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if not chunk["choices"]:
                continue  # the usage chunk
            choice = chunk["choices"][0]
            events += 1
            text += choice["delta"].get("content") or ""
            finish = choice.get("finish_reason") or finish
    return text, finish, events


def _base_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("OpenAI base URL: "):
            return line.split()[3]
    process.kill()
    pytest.fail(f"no base URL; the command printed: {''.join(seen)}{process.communicate()}")


def test_serve_leader_serves_the_leader_under_the_run_profile(
    leader: str,
    docker_daemon: DockerDaemon,
    reports: Reports,
    model_dir: Path,
) -> None:
    url = reports.publish("/cacheon/public/latest.json", report(standing(leader)))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cacheon.cli.miner", "serve-leader", "--report-url", url,
         "--model-path", str(model_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(docker_daemon),
    )  # fmt: skip
    client = docker_daemon.client()
    try:
        base_url = _base_url(process)
        assert base_url == f"http://127.0.0.1:{port}/v1"
        text, finish, events = _ask(base_url)
        assert text.strip()
        assert finish in ("stop", "length")
        assert events >= 2

        attrs = client.containers.get(container_name(port)).attrs
        host = attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["NetworkMode"] == container_name(port)
        assert host["PortBindings"] == {
            "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        }
        (model,) = (m for m in attrs["Mounts"] if m["Destination"] == "/model")
        assert (model["Source"], model["RW"]) == (str(model_dir), False)
        env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
        assert env["HF_HUB_OFFLINE"] == "1"
        assert env["SERVED_MODEL_NAME"] == MODEL
        assert attrs["Image"] == client.images.get(leader).id

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "Traceback" not in output
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(container_name(port))
        with pytest.raises(docker.errors.NotFound):
            client.networks.get(container_name(port))
    finally:
        if process.poll() is None:
            process.kill()
        client.close()


def test_print_shows_commands_that_run_the_leader(
    leader: str,
    docker_daemon: DockerDaemon,
    reports: Reports,
    model_dir: Path,
) -> None:
    url = reports.publish("/latest.json", report(standing(leader)))
    port = free_port()
    printed = subprocess.run(
        [sys.executable, "-m", "cacheon.cli.miner", "serve-leader", "--report-url", url,
         "--model-path", str(model_dir), "--port", str(port), "--print"],
        capture_output=True, text=True, env=_env(docker_daemon), timeout=120, check=True,
    )  # fmt: skip
    lines = printed.stdout.splitlines()
    assert f"image {leader}" in lines
    create, run = lines[-2:]
    env = _env(docker_daemon)
    subprocess.run(shlex.split(create), env=env, check=True, capture_output=True)
    # the CLI pulls the image itself, by the digest, as the command says
    server = subprocess.Popen(
        shlex.split(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()
        text, finish, _ = _ask(f"http://127.0.0.1:{port}/v1")
        assert text.strip()
        assert finish in ("stop", "length")
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    # `--rm`: the engine removed the container when it stopped; its network is then free
    removed = subprocess.run(
        ["docker", "network", "rm", container_name(port)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert removed.returncode == 0, removed.stderr
