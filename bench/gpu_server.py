"""A small OpenAI-compatible streaming server for a seeded random Qwen2 model on GPUs.

Why it exists: the GPU check of the timing pass (issue 7) and the launch-noise bench (issue 19)
need a real model on a real GPU whose every streamed token the server timestamps itself, so that
the agent's client-side times can be compared with the server's. vLLM is not on the GPU machine
and nothing can be downloaded there, so this server draws a Qwen2 of a real shape (Qwen2.5-0.5B
by default, up to Qwen2.5-72B) from a fixed seed and serves it the way an inference engine does:
greedy decoding with a KV cache, continuous batching, CUDA graphs, optionally tensor parallel
over `--tp N` GPUs (issue 22), each token streamed as its own server-sent event in the exact
shape of the miner contract (DESIGN.md §4.2), `/health` 200 only once warmed up, and every
token's write and engine time recorded to a JSON-lines file. `--slowdown s` makes it (1 + s)
times slower (the arena's known-effect check; `gpu/engine.py` says how, and how it is measured).

This file is the command line; the layers are the package `gpu/` beside it (its docstring says
how they fit). It runs as a script, so it needs only torch, transformers and aiohttp, not the
project installed.

    python bench/gpu_server.py --port 8000 --model-name M --timestamps ts.jsonl [--preset tiny]
        [--tp N] [--slowdown 0.03]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from gpu.engine import Engine
from gpu.model import PRESETS, REFERENCE_MAX_PARAMS, Shape, build_weights, reference_model
from gpu.runner import Qwen2Runner, self_check
from gpu.server import Server
from gpu.tokens import eos_token
from gpu.tp import Spec, build_runner, join, rendezvous, start_workers, watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--model-name", default=os.environ.get("SERVED_MODEL_NAME", "random-qwen2"))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-0.5b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None)
    parser.add_argument("--context", type=int, default=4096, help="KV cache length per sequence")
    parser.add_argument("--max-batch", type=int, default=128, help="sequences decoded at once")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="launch kernels eagerly")
    parser.add_argument(
        "--tp",
        type=int,
        default=None,
        help="tensor parallel over N processes (one per GPU); without it, no torch.distributed",
    )
    parser.add_argument(
        "--slowdown", type=float, default=0.0, help="stretch every engine step to (1 + s) times"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the transformers reference in the self-check (graphs vs eager still run)",
    )
    parser.add_argument("--timestamps", type=Path, default=Path("server-timestamps.jsonl"))
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # the engine thread holds the GIL between kernel launches
    kind = torch.device(args.device).type
    dtype = args.dtype or ("bfloat16" if kind == "cuda" else "float32")
    graphs = kind == "cuda" and not args.no_cuda_graphs
    started = time.perf_counter()
    runner = _runner(args, kind, dtype, graphs)
    built = time.perf_counter()
    shape = Shape.of(args.preset)
    reference = (
        reference_model(shape, args.seed, runner.device, runner.dtype)
        if shape.params <= REFERENCE_MAX_PARAMS and not args.no_reference
        else None
    )
    check = self_check(runner, reference, args.seed)
    del reference
    gpu = torch.cuda.get_device_name(runner.device) if kind == "cuda" else "cpu"
    header = {
        "preset": args.preset,
        "config": PRESETS[args.preset],
        "seed": args.seed,
        "device": gpu,
        "dtype": dtype,
        "context": args.context,
        "max_batch": args.max_batch,
        "cuda_graphs": runner.graphs,
        "tp": args.tp,
        "slowdown": args.slowdown,
        "torch": torch.__version__,
        "self_check": check,
        "pid": os.getpid(),
    }
    print(
        f"model {args.preset} on {gpu} ({dtype}, tp {args.tp}) ready in "
        f"{time.perf_counter() - started:.1f}s (weights and graphs {built - started:.1f}s); KV cache {runner.cache_bytes() / 2**30:.2f} GiB "
        f"per rank; self-check: {check}",
        flush=True,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine = Engine(runner, loop, eos_token(runner.vocab), args.slowdown)
    threading.Thread(target=engine.run, name="engine", daemon=True).start()
    server = Server(engine, args.model_name, args.timestamps, header)
    try:
        web.run_app(
            server.app(),
            host=args.host,
            port=args.port,
            loop=loop,
            shutdown_timeout=1.0,
            print=None,
            access_log=None,
        )
    finally:
        server.flush()
        if args.tp is not None:
            # the engine thread may sit in a collective that will never complete: skip the
            # interpreter's teardown; the workers die with this process (tp.py)
            sys.stdout.flush()
            os._exit(0)


def _runner(args: Any, kind: str, dtype: str, graphs: bool) -> Qwen2Runner:
    """One device without torch.distributed, or rank 0 of `--tp N` (its workers started)."""
    if args.tp is None:
        weights = build_weights(
            Shape.of(args.preset), args.seed, torch.device(args.device), getattr(torch, dtype)
        )
        runner = Qwen2Runner(weights, args.context, args.max_batch)
        if graphs:
            with torch.inference_mode():
                runner.capture()
        return runner
    spec = Spec(
        args.preset,
        args.seed,
        kind,
        dtype,
        args.context,
        args.max_batch,
        graphs,
        args.tp,
        rendezvous(),
    )
    watch(start_workers(spec))
    return build_runner(spec, join(spec, 0))


if __name__ == "__main__":
    main()
