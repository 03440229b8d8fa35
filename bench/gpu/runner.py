"""The model's forward over a slot-based KV cache, eager or replayed as CUDA graphs.

The decode loop drives the model's own modules' weights with a slot-based KV cache rather than
calling `model.forward` with a `transformers` cache object: one preallocated cache, sequences
kept in slots 0..n-1 so that a step reads plain views, and no dependence on the cache API, which
changes between `transformers` releases. On CUDA, prefill (per prompt-length bucket) and decode
(per batch-size bucket) run as CUDA graphs: launched kernel by kernel from Python, a 0.5B step
cost 10-95 ms on an H200 instead of ~3.5 ms. At start-up `self_check` compares the loop's logits
with `model.forward` (prefill and batched decode), and the graphs with the eager loop, so the
served model is the `transformers` model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .tokens import BYTE_OFFSET

TOP_LOGPROBS = 5


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
