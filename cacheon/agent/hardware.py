"""What the pod really is: GPUs (names, driver, clocks, throttling), the docker engine and its
NVIDIA runtime. Read on the pod by the agent and reported as data; the validator decides whether
it is what was rented. A pod without GPUs says so plainly instead of failing obscurely.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import docker
import docker.errors

from cacheon.protocol import HardwareFacts, PodFacts

NVIDIA_SMI_TIMEOUT_S = 30.0
DOCKER_TIMEOUT_S = 30
_QUERY = "name,driver_version,clocks.sm,clocks.max.sm,memory.total,clocks_throttle_reasons.active"
# bit values of nvmlClocksThrottleReasons that mean the GPU runs slower than it can
_THROTTLE_BITS = {
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}


@dataclass(frozen=True)
class _Gpus:
    facts: HardwareFacts
    problem: str | None


def read_gpus() -> _Gpus:
    """Query nvidia-smi once; never raises."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return _Gpus(HardwareFacts(), "no GPU: nvidia-smi not found")
    try:
        result = subprocess.run(
            [smi, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _Gpus(HardwareFacts(), f"no GPU: nvidia-smi failed: {exc}")
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        return _Gpus(HardwareFacts(), f"no GPU: nvidia-smi: {detail[-1] if detail else 'failed'}")
    return parse_nvidia_smi(result.stdout)


def parse_nvidia_smi(text: str) -> _Gpus:
    """Parse the CSV of `_QUERY`; a row that does not parse is a problem, not a crash."""
    names: list[str] = []
    clocks: list[int] = []
    max_clocks: list[int] = []
    memory: list[int] = []
    reasons: set[str] = set()
    driver: str | None = None
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 6:
            return _Gpus(HardwareFacts(), f"nvidia-smi: unexpected line {line!r}")
        name, driver, sm, max_sm, mem, throttle = fields
        names.append(name)
        clocks.append(_int(sm))
        max_clocks.append(_int(max_sm))
        memory.append(_int(mem))
        mask = int(throttle, 16) if throttle.startswith("0x") else 0
        reasons.update(label for bit, label in _THROTTLE_BITS.items() if mask & bit)
    if not names:
        return _Gpus(HardwareFacts(), "no GPU: nvidia-smi lists none")
    facts = HardwareFacts(
        gpu_names=tuple(names),
        gpu_clocks_mhz=tuple(clocks),
        gpu_max_clocks_mhz=tuple(max_clocks),
        gpu_memory_mib=tuple(memory),
        driver_version=driver,
        throttled=bool(reasons),
        throttle_reasons=tuple(sorted(reasons)),
    )
    return _Gpus(facts, None)


def _int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0


def check_pod() -> PodFacts:
    """GPUs and the docker engine as this pod sees them."""
    gpus = read_gpus()
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
        try:
            version = str(client.version().get("Version", "unknown"))
            runtimes = tuple(sorted(client.info().get("Runtimes", {})))
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        return PodFacts(
            hardware=gpus.facts, gpu_problem=gpus.problem, docker_problem=f"docker: {exc}"
        )
    return PodFacts(
        hardware=gpus.facts,
        gpu_problem=gpus.problem,
        docker_version=version,
        runtimes=runtimes,
    )
