"""Tensor parallelism's processes: one per device, over `torch.distributed`.

Rank 0 is the server process (HTTP, scheduler, the engine); ranks 1..N-1 are workers started by
it with `python -m gpu.tp`, each building its own shard and then executing rank 0's commands
(`Qwen2Runner.serve`). NCCL joins CUDA ranks, gloo CPU ranks (the equality check runs on CPU).

A worker must never outlive rank 0 nor die before it has written its timestamps: the agent stops
a server by SIGTERM to its whole process group, so workers ignore SIGTERM and die with rank 0
(PR_SET_PDEATHSIG), and rank 0 exits at once (`os._exit`) if a worker dies under it, since a
collective with a dead peer can wait forever and a hung server must not look alive.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .model import Shape, build_weights
from .runner import Qwen2Runner

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Group:
    """This process's place in the tensor-parallel group, and the three collectives used."""

    rank: int
    world: int

    def all_reduce(self, x: torch.Tensor) -> None:
        dist.all_reduce(x)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[world, *x.shape]: every rank's x, in rank order."""
        out = x.new_empty((self.world, *x.shape))
        dist.all_gather(list(out.unbind(0)), x)
        return out

    def broadcast(self, x: torch.Tensor) -> None:
        dist.broadcast(x, src=0)


@dataclass(frozen=True)
class Spec:
    """What every rank needs to build its share of the same model."""

    preset: str
    seed: int
    device: str
    """`cuda` (rank r on GPU r) or `cpu`."""
    dtype: str
    context: int
    slots: int
    graphs: bool
    world: int
    address: str
    """The rendezvous, `tcp://127.0.0.1:PORT`."""

    def device_of(self, rank: int) -> torch.device:
        return torch.device("cuda", rank) if self.device == "cuda" else torch.device("cpu")


def rendezvous() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def join(spec: Spec, rank: int) -> Group:
    """Enter the process group: NCCL on CUDA, gloo on CPU (one thread per core per rank)."""
    device = spec.device_of(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=spec.address, rank=rank, world_size=spec.world)
    return Group(rank, spec.world)


def build_runner(spec: Spec, group: Group) -> Qwen2Runner:
    """This rank's shard and runner, its CUDA graphs captured (every rank in the same order)."""
    shape = Shape.of(spec.preset, group.rank, group.world)
    weights = build_weights(
        shape, spec.seed, spec.device_of(group.rank), getattr(torch, spec.dtype)
    )
    runner = Qwen2Runner(weights, spec.context, spec.slots, group)
    if spec.graphs:
        with torch.inference_mode():
            runner.capture()
    return runner


def start_workers(spec: Spec) -> list[subprocess.Popen[bytes]]:
    """Ranks 1..world-1, in this process's session (so they share its stdout and log)."""
    package = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package, os.environ.get("PYTHONPATH", "")])}
    payload = json.dumps(asdict(spec))
    return [
        subprocess.Popen([sys.executable, "-m", "gpu.tp", payload, str(rank)], env=env)
        for rank in range(1, spec.world)
    ]


def watch(workers: list[subprocess.Popen[bytes]]) -> None:
    """Exit at once if a worker dies: rank 0 would wait on it in the next collective."""

    def loop() -> None:
        while True:
            for rank, worker in enumerate(workers, start=1):
                if (code := worker.poll()) not in (None, 0):
                    print(f"tensor-parallel rank {rank} exited with {code}", flush=True)
                    os._exit(70)
            time.sleep(0.2)

    threading.Thread(target=loop, name="tp-watch", daemon=True).start()


def _worker(payload: str, rank: int) -> None:
    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # rank 0 died before the death signal was armed
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec = Spec(**json.loads(payload))
    group = join(spec, rank)
    runner = build_runner(spec, group)
    with torch.inference_mode():
        runner.serve()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
