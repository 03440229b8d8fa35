"""Tensor-parallel equality check (issue 22): `--tp N` against the one-device path.

Why: a sharding mistake (a head cut in the wrong place, a missing all-reduce, a vocabulary slice
merged wrongly) gives a model that still streams plausible tokens, so the TP path is checked
against the plain one on the same seeded weights before any timing is trusted. Rank 0 runs both
runners on the same prompts (prefills into slots, batched greedy decode, a finished sequence
moved out mid-way, as the engine does) and compares the greedy tokens and the top-5 logprobs;
the TP runner is also checked against the `transformers` reference (`self_check`).

On CPU (gloo, float32; `make test` runs this in its vLLM phase, whose venv has torch):

    python bench/gpu_tp_check.py --tp 2 --preset tiny --device cpu

On one GPU (NCCL with one rank, bf16, CUDA graphs): `--tp 1 --preset qwen2.5-0.5b`. It prints
one JSON object and exits 1 if the tokens differ or a logprob differs by more than --tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.distributed as dist
from gpu.model import REFERENCE_MAX_PARAMS, Shape, build_weights, reference_model
from gpu.runner import Qwen2Runner, self_check
from gpu.tokens import BYTE_OFFSET
from gpu.tp import Spec, build_runner, join, rendezvous, start_workers

PROMPT_LENGTHS = (40, 24, 100, 7)


def generate(runner: Qwen2Runner, seed: int, steps: int) -> list[dict[str, list[float]]]:
    """Greedy continuations of seeded prompts, batched as the engine batches them; sequence 1
    stops half-way and the last slot moves into its place."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (n,), generator=generator).tolist()
        for n in PROMPT_LENGTHS
    ]
    out: list[dict[str, list[float]]] = [{"tokens": [], "logprobs": []} for _ in prompts]
    active = list(range(len(prompts)))
    cached = [len(p) for p in prompts]
    for slot, prompt in enumerate(prompts):
        ((ids, lps),) = runner.prefill_top(slot, prompt)
        out[slot]["tokens"].append(ids[0])
        out[slot]["logprobs"].extend(lps)
    for step in range(steps):
        if step == steps // 2:
            last = len(active) - 1
            runner.move(last, 1, cached[active[last]])
            active[1] = active.pop()
        tokens = [int(out[s]["tokens"][-1]) for s in active]
        tops = runner.decode_top(tokens, [cached[s] for s in active])
        for s, (ids, lps) in zip(active, tops, strict=True):
            cached[s] += 1
            out[s]["tokens"].append(ids[0])
            out[s]["logprobs"].extend(lps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--tolerance", type=float, default=None, help="max |logprob diff|")
    args = parser.parse_args()
    kind = torch.device(args.device).type
    dtype = args.dtype or ("bfloat16" if kind == "cuda" else "float32")
    tolerance = args.tolerance or (1e-4 if dtype == "float32" else 0.05)
    graphs = kind == "cuda" and not args.no_cuda_graphs
    started = time.perf_counter()
    spec = Spec(
        args.preset,
        args.seed,
        kind,
        dtype,
        args.context,
        args.slots,
        graphs,
        args.tp,
        rendezvous(),
    )
    workers = start_workers(spec)
    tp = build_runner(spec, join(spec, 0))
    shape = Shape.of(args.preset)
    plain = Qwen2Runner(
        build_weights(shape, args.seed, tp.device, tp.dtype), args.context, args.slots
    )
    if graphs:
        with torch.inference_mode():
            plain.capture()
    with torch.inference_mode():
        ours = generate(tp, args.seed, args.steps)
        theirs = generate(plain, args.seed, args.steps)
    reference = (
        reference_model(shape, args.seed, tp.device, tp.dtype)
        if shape.params <= REFERENCE_MAX_PARAMS
        else None
    )
    check = self_check(tp, reference, args.seed)
    tp.close()
    codes = [worker.wait() for worker in workers]
    dist.destroy_process_group()
    same_tokens = all(a["tokens"] == b["tokens"] for a, b in zip(ours, theirs, strict=True))
    diff = max(
        abs(x - y)
        for a, b in zip(ours, theirs, strict=True)
        for x, y in zip(a["logprobs"], b["logprobs"], strict=True)
    )
    result = {
        "tp": args.tp,
        "preset": args.preset,
        "device": torch.cuda.get_device_name(tp.device) if kind == "cuda" else "cpu",
        "dtype": dtype,
        "cuda_graphs": graphs,
        "backend": "nccl" if kind == "cuda" else "gloo",
        "sequences": len(ours),
        "tokens_compared": sum(len(a["tokens"]) for a in ours),
        "same_tokens": same_tokens,
        "max_logprob_diff": diff,
        "tolerance": tolerance,
        "self_check_tp": check,
        "worker_exit_codes": codes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    ok = same_tokens and diff <= tolerance and not any(codes)
    result["ok"] = ok
    print(json.dumps(result))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
