"""A small OpenAI-compatible streaming server for a randomly initialised Qwen2 model on a GPU.

Why it exists: the GPU check of the timing pass (issue 7) needs a real model on a real GPU whose
every streamed token the server timestamps itself, so that the agent's client-side times can be
compared with the server's. vLLM is not on the GPU machine and nothing can be downloaded there,
so this server builds a `transformers` `Qwen2ForCausalLM` from a config (sized like
Qwen2.5-0.5B by default), initialised from a fixed seed, and serves it the way an inference
engine does: greedy decoding with a KV cache, continuous batching, each token streamed as its
own server-sent event in the exact shape of the miner contract (DESIGN.md §4.2), `/health` 200
only once warmed up, and every token's write and engine time recorded to a JSON-lines file.

This file is the command line; the layers are the package `gpu/` beside it (model, runner,
engine, server: its docstring says how they fit). It runs as a script, so it needs only torch,
transformers and aiohttp, not the project installed.

    python bench/gpu_server.py --port 8000 --model-name M --timestamps ts.jsonl [--preset tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import torch
from aiohttp import web
from gpu.engine import Engine
from gpu.model import PRESETS, build_model
from gpu.runner import Qwen2Runner, self_check
from gpu.server import Server
from gpu.tokens import eos_token


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
    parser.add_argument("--timestamps", type=Path, default=Path("server-timestamps.jsonl"))
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # the engine thread holds the GIL between kernel launches
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    started = time.perf_counter()
    model = build_model(args.preset, args.seed, device, dtype)
    runner = Qwen2Runner(model, args.context, args.max_batch)
    if device.type == "cuda" and not args.no_cuda_graphs:
        with torch.inference_mode():
            runner.capture()
    check = self_check(runner, model, args.seed)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = {
        "preset": args.preset,
        "config": PRESETS[args.preset],
        "seed": args.seed,
        "device": gpu,
        "dtype": str(dtype),
        "context": args.context,
        "max_batch": args.max_batch,
        "cuda_graphs": runner.graphs,
        "torch": torch.__version__,
        "self_check": check,
        "pid": os.getpid(),
    }
    print(
        f"model {args.preset} on {gpu} ({dtype}) ready in {time.perf_counter() - started:.1f}s; "
        f"KV cache {runner.cache_bytes() / 2**30:.2f} GiB; self-check vs model.forward: {check}",
        flush=True,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine = Engine(runner, loop, eos_token(runner.vocab))
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


if __name__ == "__main__":
    main()
