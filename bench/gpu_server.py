"""A small OpenAI-compatible streaming server for a randomly initialised Qwen2 model on a GPU.

Why it exists: the GPU check of the timing pass (issue 7) needs a real model on a real GPU whose
every streamed token the server timestamps itself, so that the agent's client-side times can be
compared with the server's. vLLM is not on the GPU machine and nothing can be downloaded there,
so this server builds a `transformers` `Qwen2ForCausalLM` from a config (sized like
Qwen2.5-0.5B by default), initialised from a fixed seed, and serves it the way an inference
engine does: greedy decoding with a KV cache, continuous batching (one forward per decode step
for every active sequence; a new request is prefilled on its own and joins at the next step),
each token streamed as its own server-sent event in the exact shape of the miner contract
(DESIGN.md §4.2), `/health` 200 only once warmed up.

The decode loop drives the model's own modules' weights with a slot-based KV cache rather than
calling `model.forward` with a `transformers` cache object: one preallocated cache, sequences
kept in slots 0..n-1 so that a step reads plain views, and no dependence on the cache API, which
changes between `transformers` releases. On CUDA, prefill (per prompt-length bucket) and decode
(per batch-size bucket) run as CUDA graphs: launched kernel by kernel from Python, a 0.5B step
cost 10-95 ms on an H200 instead of ~3.5 ms. At start-up the loop's logits are checked against
`model.forward` (prefill and batched decode), and the graphs against the eager loop; the
differences are printed, so the served model is the `transformers` model.

The engine runs on a thread beside the aiohttp event loop, as in a one-process server; each
token's hand-off (its write minus the end of the engine step that made it) is recorded too, so
the server's own queueing is visible apart from the network and the client.

Prompts are tokenised without a tokenizer download: a ChatML-like template over the messages,
UTF-8 encoded, token id = byte + BYTE_OFFSET; ids outside the byte range decode to a short
placeholder. For every streamed token the server records `time.perf_counter_ns()` (CLOCK_MONOTONIC,
the clock the agent's client uses on the same machine) just before the write, and when the
engine produced it; the records go to a JSON-lines file at exit, one line per request, keyed by
the `x-request-id` header or else the sha256 of the request body.

    python bench/gpu_server.py --port 8000 --model-name M --timestamps ts.jsonl [--preset tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from aiohttp import web

try:
    import orjson

    def _dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # the server needs only torch, transformers and aiohttp

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


BYTE_OFFSET = 3
"""Token id of byte b is b + BYTE_OFFSET (ids 0-2 stay free, as in byte-level vocabularies)."""
QWEN_EOS = 151645
"""`<|im_end|>` in Qwen2.5's vocabulary: the end-of-sequence token when the vocabulary has it."""
TOP_LOGPROBS = 5
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    },
    "tiny": {  # for CPU tests: the full vocabulary, so token ids look real
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
    },
}


# --- the model -----------------------------------------------------------------------------------


def build_model(preset: str, seed: int, device: torch.device, dtype: torch.dtype) -> Any:
    """A `Qwen2ForCausalLM` with seeded random weights: reproducible without any download.

    Weights are drawn on the CPU in float32 (the same numbers whatever the device) and then moved.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **PRESETS[preset],
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
    )
    torch.manual_seed(seed)
    model: Any = Qwen2ForCausalLM(config)  # its wrapped `.to` confuses mypy
    return model.to(device=device, dtype=dtype).eval()


@dataclass(frozen=True)
class _Layer:
    ln1: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    o_w: torch.Tensor
    ln2: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen2Runner:
    """The model's forward over a slot-based KV cache; sequences live in slots 0..n-1.

    Numerically this is `Qwen2ForCausalLM.forward` (same ops in the same dtypes: RMSNorm in
    float32, RoPE from the model's `inv_freq`, SDPA with grouped KV heads); the projections are
    fused (q|k|v, gate|up) to launch fewer kernels per step, since a small model's decode step
    is bound by kernel launches, not by the GPU.
    """

    def __init__(self, model: Any, context: int, slots: int) -> None:
        config = model.config
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r}: only silu is implemented")
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.context = context
        self.slots = slots
        self.vocab = config.vocab_size
        inner = model.model
        weight = inner.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        with torch.no_grad():
            self.layers = [
                _Layer(
                    ln1=layer.input_layernorm.weight,
                    qkv_w=torch.cat(
                        [
                            layer.self_attn.q_proj.weight,
                            layer.self_attn.k_proj.weight,
                            layer.self_attn.v_proj.weight,
                        ]
                    ),
                    qkv_b=torch.cat(
                        [
                            layer.self_attn.q_proj.bias,
                            layer.self_attn.k_proj.bias,
                            layer.self_attn.v_proj.bias,
                        ]
                    ),
                    o_w=layer.self_attn.o_proj.weight,
                    ln2=layer.post_attention_layernorm.weight,
                    gate_up_w=torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                    down_w=layer.mlp.down_proj.weight,
                )
                for layer in inner.layers
            ]
            self.embed = weight
            self.norm_w = inner.norm.weight
            self.head_w = model.lm_head.weight
            rotary = inner.rotary_emb
            positions = torch.arange(context, dtype=torch.float32, device=self.device)
            freqs = positions[:, None] * rotary.inv_freq.float()[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos = (emb.cos() * rotary.attention_scaling).to(self.dtype)
            self.sin = (emb.sin() * rotary.attention_scaling).to(self.dtype)
            shape = (len(self.layers), slots, self.kv_heads, context, self.head_dim)
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._rows = torch.arange(slots, device=self.device)
            self._positions = torch.arange(context, device=self.device)
        self.graphs = False

    def cache_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return weight * normed.to(x.dtype)

    def _forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [n, t, hidden] -> logits [n, vocab] (float32) at position `last` (a 1-element
        index tensor) of each sequence, or at its end."""
        n, t = x.shape[:2]
        heads, kv = self.heads, self.kv_heads
        cos, sin = cos[:, :, None], sin[:, :, None]
        for index, w in enumerate(self.layers):
            h = self._norm(x, w.ln1)
            qkv = F.linear(h, w.qkv_w, w.qkv_b).view(n, t, heads + 2 * kv, self.head_dim)
            qk = qkv[:, :, : heads + kv]
            qk = qk * cos + _rotate_half(qk) * sin
            q = qk[:, :, :heads].transpose(1, 2)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[:, :, heads + kv :].transpose(1, 2)
            a = attend(index, q, k, v).transpose(1, 2).reshape(n, t, heads * self.head_dim)
            x = x + F.linear(a, w.o_w)
            gate, up = F.linear(self._norm(x, w.ln2), w.gate_up_w).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.down_w)
        end = x[:, -1] if last is None else x.index_select(1, last)[:, 0]
        return F.linear(self._norm(end, self.norm_w), self.head_w).float()

    def _prefill(self, ids: torch.Tensor, slot: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """ids [t] into the cache of slot `slot` (1-element tensors, so a graph can take them);
        the logits at position `last`. Positions past it (padding) write cache entries that
        decoding overwrites before any mask lets them be read."""
        t = ids.shape[0]

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k_cache[index][slot, :, :t] = k
            self.v_cache[index][slot, :, :t] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        x = F.embedding(ids[None], self.embed)
        return self._forward(x, self.cos[None, :t], self.sin[None, :t], attend, last)

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        """One step for slots 0..n-1: ids[i] sits at pos[i]; attention reads positions < span."""
        n = ids.shape[0]
        rows = self._rows[:n]
        group = self.heads // self.kv_heads
        mask = (self._positions[None, :span] <= pos[:, None])[:, None, None]

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = self.k_cache[index], self.v_cache[index]
            k_cache[rows, :, pos] = k[:, :, 0]
            v_cache[rows, :, pos] = v[:, :, 0]
            # the query heads of one KV head are adjacent (HF's repeat_kv): attend them as that
            # head's `group` query rows, so no kernel repeats the cache or needs GQA support
            grouped = q.reshape(n, self.kv_heads, group, self.head_dim)
            out = F.scaled_dot_product_attention(
                grouped, k_cache[:n, :, :span], v_cache[:n, :, :span], attn_mask=mask
            )
            return out.reshape(n, self.heads, 1, self.head_dim)

        x = F.embedding(ids[:, None], self.embed)
        return self._forward(x, self.cos[pos][:, None], self.sin[pos][:, None], attend)

    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        """Eager: run a prompt into `slot`'s cache; the logits after its last token [1, vocab]."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        meta = torch.tensor([slot, len(tokens) - 1], dtype=torch.long, device=self.device)
        return self._prefill(ids, meta[:1], meta[1:])

    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Eager: one step for the sequences in slots 0..n-1; logits [n, vocab]."""
        both = torch.tensor([tokens, positions], dtype=torch.long, device=self.device)
        return self._decode(both[0], both[1], max(positions) + 1)

    def capture(self) -> None:
        """Record CUDA graphs: decode steps for batch buckets 1, 2, 4, ... slots (attending the
        whole context under the mask, so one graph serves every length) and prefills for
        prompt-length buckets 16, 32, ... context. A 0.5B model's step is ~600 small kernels;
        launched one by one from Python they cost far more than the GPU work (10-95 ms a step on
        an H200 here, ~3.5 ms as a graph), which would make the server's Python, not the model,
        what is measured."""
        pool = torch.cuda.graph_pool_handle()
        self._host = torch.zeros(2, max(self.slots, self.context), dtype=torch.long).pin_memory()
        self._device_in = torch.zeros_like(self._host, device=self.device)
        ids, pos = self._device_in[0], self._device_in[1]

        def decode_step(n: int) -> torch.Tensor:
            return _top(self._decode(ids[:n], pos[:n], self.context))

        def prefill_step(t: int) -> torch.Tensor:
            return _top(self._prefill(ids[:t], pos[:1], pos[1:2]))

        self._decode_graphs = {
            n: self._record(functools.partial(decode_step, n), pool)
            for n in _buckets(1, self.slots)
        }
        self._prefill_graphs = {
            t: self._record(functools.partial(prefill_step, t), pool)
            for t in _buckets(16, self.context)
        }
        self.graphs = True

    def _record(
        self, fn: Callable[[], torch.Tensor], pool: Any
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        return graph, out

    def _replay(
        self, graph: tuple[torch.cuda.CUDAGraph, torch.Tensor], used: int, rows: int
    ) -> Top:
        self._device_in[:, :used].copy_(self._host[:, :used], non_blocking=True)
        graph[0].replay()
        return _rows(graph[1][:rows])

    def prefill_top(self, slot: int, tokens: list[int]) -> Top:
        """Greedy choice and top 5 after a prompt, prefilled into `slot`."""
        if not self.graphs:
            return _rows(_top(self.prefill(slot, tokens)))
        t = len(tokens)
        bucket = next(b for b in self._prefill_graphs if b >= t)
        self._host[0, :t] = torch.tensor(tokens)
        self._host[0, t:bucket] = 0
        self._host[1, :2] = torch.tensor([slot, t - 1])
        return self._replay(self._prefill_graphs[bucket], bucket, 1)

    def decode_top(self, tokens: list[int], positions: list[int]) -> Top:
        """Greedy choice and top 5 for one decode step of slots 0..n-1."""
        if not self.graphs:
            return _rows(_top(self.decode(tokens, positions)))
        n = len(tokens)
        bucket = next(b for b in self._decode_graphs if b >= n)
        pad = [0] * (bucket - n)  # padding rows write position 0 of free slots only
        self._host[:, :bucket] = torch.tensor([tokens + pad, positions + pad])
        return self._replay(self._decode_graphs[bucket], bucket, n)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's cache from one slot to another (keeps slots 0..n-1 dense)."""
        self.k_cache[:, target, :, :length] = self.k_cache[:, source, :, :length]
        self.v_cache[:, target, :, :length] = self.v_cache[:, source, :, :length]


Top = list[tuple[list[int], list[float]]]


def _buckets(low: int, high: int) -> list[int]:
    """Powers of two from `low` below `high`, then `high`."""
    out = []
    while low < high:
        out.append(low)
        low *= 2
    return [*out, high]


def _top(logits: torch.Tensor) -> torch.Tensor:
    """[n, 10]: the top 5 token ids (as float64) then their raw log-softmax values."""
    values, indices = logits.log_softmax(dim=-1).topk(TOP_LOGPROBS, dim=-1)
    return torch.cat([indices.double(), values.double()], dim=-1)


def _rows(top: torch.Tensor) -> Top:
    """One device-to-host copy; per row the ids (greedy choice first) and their logprobs."""
    return [
        ([int(i) for i in row[:TOP_LOGPROBS]], row[TOP_LOGPROBS:]) for row in top.cpu().tolist()
    ]


def self_check(runner: Qwen2Runner, model: Any, seed: int) -> dict[str, float]:
    """Compare the runner with `model.forward`: two prompts prefilled into slots 0 and 1, then
    teacher-forced batched decode steps. Returns the worst |diff| relative to the logits' spread
    and the share of positions whose argmax agrees; with CUDA graphs, also the worst logprob
    difference between the graphs and the eager path, and their top-1 agreement."""
    generator = torch.Generator().manual_seed(seed)
    lengths, steps = (40, 24), 8
    seqs = [
        torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (n + steps,), generator=generator).tolist()
        for n in lengths
    ]
    worst, agree, total = 0.0, 0, 0
    eager: Top = []

    def compare(ours: torch.Tensor, ref: torch.Tensor) -> None:
        nonlocal worst, agree, total
        worst = max(worst, float((ours - ref).abs().max() / ref.std()))
        agree += int(ours.argmax() == ref.argmax())
        total += 1
        eager.extend(_rows(_top(ours[None])))

    with torch.inference_mode():
        refs = [
            model(input_ids=torch.tensor([s], device=runner.device)).logits[0].float() for s in seqs
        ]
        for slot, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            compare(runner.prefill(slot, seq[:n])[0], refs[slot][n - 1])
        for step in range(steps):
            positions = [n + step for n in lengths]
            logits = runner.decode([s[p] for s, p in zip(seqs, positions, strict=True)], positions)
            for slot, p in enumerate(positions):
                compare(logits[slot], refs[slot][p])
        result = {"max_rel_diff": worst, "argmax_agreement": agree / total}
        if runner.graphs:
            graphed = [
                runner.prefill_top(slot, s[:n])[0]
                for slot, (s, n) in enumerate(zip(seqs, lengths, strict=True))
            ]
            for step in range(steps):
                positions = [n + step for n in lengths]
                graphed += runner.decode_top(
                    [s[p] for s, p in zip(seqs, positions, strict=True)], positions
                )
            result["graph_max_logprob_diff"] = max(
                abs(g[1][0] - e[1][0]) for g, e in zip(graphed, eager, strict=True)
            )
            result["graph_top1_agreement"] = sum(
                g[0][0] == e[0][0] for g, e in zip(graphed, eager, strict=True)
            ) / len(eager)
    return result


# --- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenOut:
    token: int
    top: tuple[list[int], list[float]]
    """The top 5 ids, the greedy choice first, and their logprobs."""
    finish: str | None
    gen_ns: int
    """perf_counter_ns when the engine had the token on the host."""


@dataclass
class Sequence:
    """One request inside the engine. `queue` receives its tokens on the event loop."""

    prompt: list[int]
    max_tokens: int
    queue: asyncio.Queue[TokenOut]
    generated: int = 0
    cached: int = 0
    last: int = 0
    cancelled: bool = False


@dataclass
class Engine:
    """Continuous batching on one thread: prefill newcomers one at a time, then one decode
    forward for all active sequences, repeat. Tokens reach the event loop with one
    `call_soon_threadsafe` per step, not per token."""

    runner: Qwen2Runner
    loop: asyncio.AbstractEventLoop
    eos: int
    pending: queue.Queue[Sequence] = field(default_factory=queue.Queue)
    active: list[Sequence] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def submit(self, seq: Sequence) -> None:
        limit = self.runner.context - seq.max_tokens
        seq.prompt = seq.prompt[-limit:]  # keep the tail: the template's assistant header
        self.pending.put(seq)

    def run(self) -> None:
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException:  # a dead engine must not leave a server that looks alive
            if self.stopping.is_set():
                return  # the event loop closed under a last step: shutting down anyway
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(70)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            while len(self.active) < self.runner.slots:
                try:
                    self._prefill(self.pending.get_nowait())
                except queue.Empty:
                    break
            if not self.active:
                with contextlib.suppress(queue.Empty):
                    self._prefill(self.pending.get(timeout=0.05))
                continue
            self._decode()

    def _emit(self, out: list[tuple[Sequence, TokenOut]]) -> None:
        self.loop.call_soon_threadsafe(_deliver, out)

    def _finish(self, seq: Sequence, token: int) -> str | None:
        if token == self.eos:
            return "stop"
        if seq.generated >= seq.max_tokens or seq.cached >= self.runner.context:
            return "length"
        return None

    def _prefill(self, seq: Sequence) -> None:
        if seq.cancelled:
            return
        slot = len(self.active)
        (top,) = self.runner.prefill_top(slot, seq.prompt)
        now = time.perf_counter_ns()
        seq.cached, seq.last, seq.generated = len(seq.prompt), top[0][0], 1
        finish = self._finish(seq, seq.last)
        self._emit([(seq, TokenOut(seq.last, top, finish, now))])
        if finish is None:
            self.active.append(seq)

    def _decode(self) -> None:
        active = self.active
        tops = self.runner.decode_top([s.last for s in active], [s.cached for s in active])
        now = time.perf_counter_ns()
        out, done = [], []
        for slot, (seq, top) in enumerate(zip(active, tops, strict=True)):
            seq.cached += 1
            seq.generated += 1
            seq.last = top[0][0]
            finish = self._finish(seq, seq.last)
            out.append((seq, TokenOut(seq.last, top, finish, now)))
            if finish is not None or seq.cancelled:
                done.append(slot)
        self._emit(out)
        for slot in reversed(done):  # highest first, so the last slot is never a finished one
            last = len(active) - 1
            if slot != last:
                self.runner.move(last, slot, active[last].cached)
                active[slot] = active[last]
            active.pop()


def _deliver(out: list[tuple[Sequence, TokenOut]]) -> None:
    for seq, token in out:
        seq.queue.put_nowait(token)


# --- the HTTP side -------------------------------------------------------------------------------


def chat_tokens(messages: list[dict[str, Any]]) -> list[int]:
    """A ChatML-like template, UTF-8 bytes shifted by BYTE_OFFSET: no tokenizer needed."""
    text = "".join(f"<|im_start|>{m.get('role')}\n{m.get('content')}<|im_end|>\n" for m in messages)
    return [b + BYTE_OFFSET for b in (text + "<|im_start|>assistant\n").encode()]


def token_text(token: int) -> str:
    byte = token - BYTE_OFFSET
    return chr(byte) if 0 <= byte < 256 else f"<{token}>"


class Server:
    """The aiohttp application: health, chat completions, and the timestamp records."""

    def __init__(self, engine: Engine, model_name: str, timestamps: Path, header: dict[str, Any]):
        self.engine = engine
        self.model_name = model_name
        self.timestamps = timestamps
        self.records: list[bytes] = [_dumps({"kind": "server", **header})]
        self.ready = False
        self.counter = 0
        self._flushed = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._cleanup)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": self.ready}, status=200 if self.ready else 503)

    async def _start(self, _app: web.Application) -> None:
        self._warmup_task = asyncio.create_task(self._warmup())

    async def _warmup(self) -> None:
        """Compile-free warm-up: a long prefill and decode steps at batch sizes up to 64, so the
        first measured requests meet initialised kernels and allocator pools."""
        started = time.perf_counter()
        byte_ids = list(range(BYTE_OFFSET, BYTE_OFFSET + 256))
        seqs = [
            Sequence((byte_ids * (1 + n // 256))[:n], 16, asyncio.Queue())
            for n in [2000, *([48] * 63)]
        ]
        for seq in seqs:
            self.engine.submit(seq)
        for seq in seqs:
            while (await seq.queue.get()).finish is None:
                pass
        self.ready = True
        print(f"warm-up done in {time.perf_counter() - started:.1f}s; healthy", flush=True)

    async def _cleanup(self, _app: web.Application) -> None:
        self.engine.stopping.set()
        self.flush()

    def flush(self) -> None:
        if self._flushed:
            return
        self._flushed = True
        self.timestamps.parent.mkdir(parents=True, exist_ok=True)
        with self.timestamps.open("wb") as out:
            out.writelines(record + b"\n" for record in self.records)
        print(f"wrote {len(self.records) - 1} request records to {self.timestamps}", flush=True)

    def _chunk(self, ident: str, created: int, choices: list[Any], **extra: Any) -> bytes:
        body = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_name,
            "choices": choices,
            **extra,
        }
        return b"data: " + _dumps(body) + b"\n\n"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        recv_ns = time.perf_counter_ns()
        raw = await request.read()
        try:
            body = json.loads(raw)
            if body.get("model") != self.model_name:
                raise ValueError(f"the model `{body.get('model')}` does not exist")
            if not body.get("stream"):
                raise ValueError("only stream=true is served")
            prompt = chat_tokens(body["messages"])
            max_tokens = int(body.get("max_tokens") or 16)
            if not 1 <= max_tokens < self.engine.runner.context:
                raise ValueError(f"max_tokens {max_tokens} is out of range")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        rid = request.headers.get("x-request-id") or hashlib.sha256(raw).hexdigest()
        self.counter += 1
        ident, created = f"chatcmpl-{self.counter}", int(time.time())
        seq = Sequence(prompt, max_tokens, asyncio.Queue())
        self.engine.submit(seq)
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        await response.write(self._chunk(ident, created, [{**role, "finish_reason": None}]))
        write_ns: list[int] = []
        gen_ns: list[int] = []
        finish = None
        try:
            while finish is None:
                out = await seq.queue.get()
                finish = out.finish
                ids, lps = out.top
                name = f"token_id:{out.token}"
                entry = {
                    "token": name,
                    "logprob": lps[0],
                    "top_logprobs": [
                        {"token": f"token_id:{i}", "logprob": lp}
                        for i, lp in zip(ids, lps, strict=True)
                    ],
                }
                choice = {
                    "index": 0,
                    "delta": {
                        "content": "" if out.token == self.engine.eos else token_text(out.token)
                    },
                    "logprobs": {"content": [entry]},
                    "finish_reason": finish,
                }
                data = self._chunk(ident, created, [choice])
                now = time.perf_counter_ns()
                await response.write(data)
                write_ns.append(now)
                gen_ns.append(out.gen_ns)
            usage = {
                "prompt_tokens": len(seq.prompt),
                "completion_tokens": len(write_ns),
                "total_tokens": len(seq.prompt) + len(write_ns),
            }
            await response.write(self._chunk(ident, created, [], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            seq.cancelled = finish is None
            self.records.append(
                _dumps(
                    {
                        "kind": "request",
                        "id": rid,
                        "recv_ns": recv_ns,
                        "prompt_tokens": len(seq.prompt),
                        "max_tokens": max_tokens,
                        "finish": finish,
                        "gen_ns": gen_ns,
                        "write_ns": write_ns,
                    }
                )
            )
        return response


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
    vocab_eos = QWEN_EOS if runner.vocab > QWEN_EOS else runner.vocab - 1
    engine = Engine(runner, loop, vocab_eos)
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
