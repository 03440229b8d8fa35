"""The example miner image (docs/examples/vllm-tuned) and `check --server`, on the test dockerd.

The pinned vLLM image cannot be pulled here, so the example is built over a stand-in base: a
toy image whose `vllm` is a shim that insists on the contract's flags and environment, then
serves the toy model. `cacheon-miner check` then runs the built image under the run profile
(read-only root, no network), and a toy server already running is checked with `--server`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cacheon.testing.local_arena import BASELINE_KNOBS, MODEL
from cacheon.testing.miner_cli import run_miner, verdict_of
from cacheon.testing.services import DockerDaemon, Registry
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_server import Knobs, Speed

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "vllm-tuned"
FAST = Knobs(speed=Speed(ttft_s=0.04, token_s=0.02))
WORKLOAD = """
[model]
name = "{model}"
max_model_len = 2048
baseline_image = "{baseline}"
[workload]
concurrencies = [1, 2]
prompts_per_block = 2
blocks_per_level = 1
level_prompts = []
level_blocks = []
warmup_requests = 1
max_tokens = 12
request_timeout_s = 20.0
startup_deadline_s = 60.0
"""
VLLM_SHIM = b"""#!/bin/sh
# stand-in for `vllm serve`: the flags must match the contract's environment
[ "$1" = serve ] || { echo "expected: vllm serve" >&2; exit 64; }
model=$2
shift 2
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --served-model-name) name=$2; shift 2 ;;
    --max-model-len) len=$2; shift 2 ;;
    *) shift ;;
  esac
done
if [ "$model" != "$MODEL_PATH" ] || [ "$len" != "$MAX_MODEL_LEN" ] || [ "$port" != "$PORT" ] \
   || [ "$name" != "$SERVED_MODEL_NAME" ] || [ "$host" != 0.0.0.0 ]; then
  echo "vllm flags do not match the contract's environment" >&2
  exit 65
fi
exec /usr/local/bin/python3 /app/toy_server.py --host "$host" --port "$port" \\
  --knobs "$(cat /etc/toy-knobs.json)"
"""


def _build_example(daemon: DockerDaemon, registry: Registry) -> str:
    stand_in = push_toy_image(
        daemon,
        registry,
        "stand-in/vllm-openai",
        FAST,
        extra_files={
            "/usr/local/bin/vllm": VLLM_SHIM,
            "/etc/toy-knobs.json": FAST.to_json().encode(),
        },
    )
    client = daemon.client()
    try:
        target = f"{registry.host}/examples/vllm-tuned"
        client.images.build(
            path=str(EXAMPLE), tag=target, buildargs={"BASE_IMAGE": stand_in}, rm=True
        )
        digest = None
        for event in client.api.push(target, tag="latest", stream=True, decode=True):
            assert "error" not in event, event
            digest = event.get("aux", {}).get("Digest", digest)
        assert digest is not None
        return f"{target}@{digest}"
    finally:
        client.close()


def _config(tmp_path: Path, baseline: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(WORKLOAD.format(model=MODEL, baseline=baseline))
    return path


def test_example_image_builds_and_passes_the_check(
    docker_daemon: DockerDaemon, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    image = _build_example(docker_daemon, registry)
    baseline = push_toy_image(docker_daemon, registry, "stand-in/baseline", BASELINE_KNOBS)
    proc = run_miner(
        "check", image, "--config", str(_config(tmp_path, baseline)),
        "--model-path", str(model_dir), "--seed", "e8", "--out", str(tmp_path / "out"),
        env={"DOCKER_HOST": docker_daemon.host},
    )  # fmt: skip
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "logs").glob("*.log"))
    assert verdict_of(proc.stdout) == ("PASS", "crowned"), proc.stdout + proc.stderr + logs
    assert "(own)" in proc.stdout  # the example adds layers to its base: no copy_of_reference


@contextmanager
def _toy_server(tmp_path: Path, knobs: Knobs) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / f"toy-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cacheon.testing.toy_server", "--host", "127.0.0.1",
         "--port", str(port), "--knobs", knobs.to_json()],
        env={"SERVED_MODEL_NAME": MODEL, "PATH": "/usr/bin:/bin"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):  # noqa: S310 (loopback)
                    break
            except OSError:
                assert time.monotonic() < deadline, "the toy server did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_check_server_measures_a_running_server(
    docker_daemon: DockerDaemon, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    baseline = push_toy_image(docker_daemon, registry, "stand-in/baseline", BASELINE_KNOBS)
    second = Knobs(speed=Speed(ttft_s=0.056, token_s=0.028))
    leader = push_toy_image(
        docker_daemon, registry, "stand-in/leader", second,
        extra_files={"/etc/cacheon-toy.json": second.to_json().encode()},
    )  # fmt: skip
    with _toy_server(tmp_path, FAST) as url:
        proc = run_miner(
            "check", "--server", url, "--leader", leader,
            "--sigma", "0.02",  # a validator's published launch noise, as a miner would give it
            "--config", str(_config(tmp_path, baseline)),
            "--model-path", str(model_dir), "--out", str(tmp_path / "out"),
            env={"DOCKER_HOST": docker_daemon.host},
        )  # fmt: skip
    assert verdict_of(proc.stdout) == ("PASS", "crowned"), proc.stdout + proc.stderr
    assert f"checking {url}" in proc.stdout
    assert "launches B L C1 L B" in proc.stdout
    assert "vs the leader" in proc.stdout  # the moat decision, beside the ratio to the baseline
    assert "vs the baseline" in proc.stdout
    assert "conformance" in proc.stdout


def test_check_refuses_neither_image_nor_server(tmp_path: Path) -> None:
    proc = run_miner("check", "--model-path", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: give exactly one of IMAGE or --server URL"


def test_the_prescreen_fails_an_unmodified_baseline_before_any_launch(
    docker_daemon: DockerDaemon, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    baseline = push_toy_image(docker_daemon, registry, "stand-in/baseline", BASELINE_KNOBS)
    proc = run_miner(
        "check", baseline, "--config", str(_config(tmp_path, baseline)),
        "--model-path", str(model_dir), "--out", str(tmp_path / "out"),
        env={"DOCKER_HOST": "unix:///nonexistent.sock"},  # nothing may be launched
    )  # fmt: skip
    assert verdict_of(proc.stdout) == ("FAIL", "copy_of_reference"), proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert not (tmp_path / "out").exists()
