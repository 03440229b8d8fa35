"""The model's forward over a slot-based KV cache, eager or replayed as CUDA graphs, on one
device or as one rank of a tensor-parallel group.

The decode loop runs the weights with a slot-based KV cache rather than calling a `transformers`
model with its cache object: one preallocated cache, sequences kept in slots 0..n-1 so that a
step reads plain views, and no dependence on the cache API, which changes between releases. On
CUDA, prefill (per prompt-length bucket) and decode (per batch-size bucket) run as CUDA graphs:
launched kernel by kernel from Python, a 0.5B step cost 10-95 ms on an H200 instead of ~3.5 ms.

Tensor parallelism (Megatron-style): q|k|v and gate|up are split by columns (whole heads, whole
MLP slices), o and down by rows with an all-reduce after each, the head by vocabulary with only
each rank's top 5 and log-sum-exp gathered. Rank 0 runs the scheduler; every step's inputs are
one command tensor (operation, sizes, token ids, positions) that rank 0 broadcasts and every
rank then executes, graphs included, so the ranks issue the same collectives in the same order.
At start-up `self_check` compares the runner's top 5 with a `transformers` reference (small
shapes) and the graphs with the eager path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .model import RMS_EPS, ROPE_THETA, Weights
from .tokens import BYTE_OFFSET

if TYPE_CHECKING:
    from .tp import Group

TOP_LOGPROBS = 5
HEADER = 4
"""Command layout: [operation, a, b, c], then `width` token ids, then `width` positions."""
STOP, PREFILL, DECODE, MOVE = range(4)

Top = list[tuple[list[int], list[float]]]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen2Runner:
    """Qwen2's forward over a slot-based KV cache; sequences live in slots 0..n-1.

    Numerically this is `Qwen2ForCausalLM.forward` (same ops in the same dtypes: RMSNorm in
    float32, RoPE as `transformers` computes it, SDPA with grouped KV heads); the projections are
    fused (q|k|v, gate|up) to launch fewer kernels per step, since a small model's decode step
    is bound by kernel launches, not by the GPU. With a `group` this is one rank's share.
    """

    def __init__(
        self, weights: Weights, context: int, slots: int, group: Group | None = None
    ) -> None:
        shape = weights.shape
        self.heads, self.kv_heads = shape.local_heads, shape.local_kv_heads
        self.head_dim = shape.head_dim
        self.context = context
        self.slots = slots
        self.vocab = shape.vocab
        self.group = group
        self.vocab_offset = shape.rank * (shape.vocab // shape.world)
        self.layers = weights.layers
        self.embed, self.norm_w, self.head_w = weights.embed, weights.norm, weights.head
        self.device, self.dtype = self.embed.device, self.embed.dtype
        d = self.head_dim
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float) / d))
        positions = torch.arange(context, dtype=torch.float32)
        emb = torch.cat((positions[:, None] * inv_freq[None, :],) * 2, dim=-1).to(self.device)
        self.cos = emb.cos().to(self.dtype)
        self.sin = emb.sin().to(self.dtype)
        cache = (len(self.layers), slots, self.kv_heads, context, d)
        self.k_cache = torch.zeros(cache, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(cache, dtype=self.dtype, device=self.device)
        self._rows = torch.arange(slots, device=self.device)
        self._positions = torch.arange(context, device=self.device)
        self.width = max(slots, context)
        self._command = torch.zeros(HEADER + 2 * self.width, dtype=torch.long, device=self.device)
        self._host = (
            torch.zeros_like(self._command, device="cpu").pin_memory()
            if self.device.type == "cuda"
            else self._command
        )
        self._ids = self._command[HEADER : HEADER + self.width]
        self._pos = self._command[HEADER + self.width :]
        self._decode_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._prefill_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graphs = False

    def cache_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    # --- the forward ---------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=RMS_EPS)
        return weight * normed.to(x.dtype)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a row-parallel layer's partial outputs."""
        if self.group is not None:
            self.group.all_reduce(x)
        return x

    def _forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [n, t, hidden] -> this rank's logits [n, vocab / world] (float32) at position `last`
        (a 1-element index tensor) of each sequence, or at its end."""
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
            x = x + self._reduce(F.linear(a, w.o_w))
            gate, up = F.linear(self._norm(x, w.ln2), w.gate_up_w).chunk(2, dim=-1)
            x = x + self._reduce(F.linear(F.silu(gate) * up, w.down_w))
        end = x[:, -1] if last is None else x.index_select(1, last)[:, 0]
        return F.linear(self._norm(end, self.norm_w), self.head_w).float()

    def _top(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, 10]: the top 5 token ids (as float64) then their log-softmax values, equal values
        lowest id first. Split by vocabulary, each rank's top 5 and log-sum-exp are gathered (11
        floats a row, not the vocabulary) and merged: the global top 5 is among the ranks' top
        5s. Logits of a bf16 head are bf16 values, so exact ties at the top are common in a
        random model; `topk` orders ties as its kernel happens to, so the greedy choice breaks
        them by the lowest id (argmax's rule) or the paths would pick different tokens."""
        if self.group is None:
            values, indices = _ordered(*logits.log_softmax(dim=-1).topk(TOP_LOGPROBS, dim=-1))
            return torch.cat([indices.double(), values.double()], dim=-1)
        values, indices = logits.topk(TOP_LOGPROBS, dim=-1)
        ids = (indices + self.vocab_offset).float()  # exact: ids stay below 2**24
        local = torch.cat([values, ids, logits.logsumexp(dim=-1, keepdim=True)], dim=-1)
        every = self.group.all_gather(local)  # [world, n, 11]
        n = logits.shape[0]
        lse = every[..., -1].logsumexp(dim=0)
        candidates = every[..., :TOP_LOGPROBS].permute(1, 0, 2).reshape(n, -1)
        candidate_ids = every[..., TOP_LOGPROBS:-1].permute(1, 0, 2).reshape(n, -1)
        best, chosen = _ordered(candidates, candidate_ids.long())
        return torch.cat([chosen.double(), (best - lse[:, None]).double()], dim=-1)

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

    # --- commands: rank 0 issues them, every rank executes them ---------------------------------

    def _issue(
        self, header: tuple[int, int, int, int], ids: Sequence[int], pos: Sequence[int]
    ) -> torch.Tensor | None:
        """Rank 0: write the command, send it to the other ranks, run it here."""
        host = self._host
        host[:HEADER] = torch.tensor(header)
        host[HEADER : HEADER + len(ids)] = torch.tensor(ids, dtype=torch.long)
        start = HEADER + self.width
        host[start : start + len(pos)] = torch.tensor(pos, dtype=torch.long)
        if host is not self._command:  # blocking: the host buffer is rewritten next step
            self._command.copy_(host)
        if self.group is not None:
            self.group.broadcast(self._command)
        return self._execute(header)

    def _execute(self, header: Sequence[int]) -> torch.Tensor | None:
        op, a, b, c = header
        if op == PREFILL:  # a tokens; b its graph's bucket, 0 for eager
            if b:
                return self._replay(self._prefill_graphs[b])
            return self._top(self._prefill(self._ids[:a], self._pos[:1], self._pos[1:2]))
        if op == DECODE:  # a sequences; b the graph's bucket, 0 for eager; c positions read
            if b:
                return self._replay(self._decode_graphs[b])
            return self._top(self._decode(self._ids[:a], self._pos[:a], c))
        if op == MOVE:  # slot a to slot b, c positions
            self.k_cache[:, b, :, :c] = self.k_cache[:, a, :, :c]
            self.v_cache[:, b, :, :c] = self.v_cache[:, a, :, :c]
        return None

    def serve(self) -> None:
        """Ranks other than 0: execute rank 0's commands until it sends STOP."""
        assert self.group is not None
        assert self.group.rank > 0
        while True:
            self.group.broadcast(self._command)
            header = self._command[:HEADER].tolist()
            if header[0] == STOP:
                return
            self._execute(header)

    def close(self) -> None:
        """Rank 0: let the other ranks' `serve` return."""
        if self.group is not None:
            self._issue((STOP, 0, 0, 0), (), ())

    def prefill_top(self, slot: int, tokens: list[int]) -> Top:
        """Greedy choice and top 5 after a prompt, prefilled into `slot`."""
        t = len(tokens)
        bucket = next(b for b in self._prefill_graphs if b >= t) if self.graphs else 0
        padded = tokens + [0] * (bucket - t)
        top = self._issue((PREFILL, t, bucket, 0), padded, (slot, t - 1))
        assert top is not None
        return _rows(top[:1])

    def decode_top(self, tokens: list[int], positions: list[int]) -> Top:
        """Greedy choice and top 5 for one decode step of slots 0..n-1."""
        n = len(tokens)
        bucket = next(b for b in self._decode_graphs if b >= n) if self.graphs else 0
        pad = [0] * (bucket - n)  # padding rows write position 0 of free slots only
        header = (DECODE, n, bucket, max(positions) + 1)
        top = self._issue(header, tokens + pad, positions + pad)
        assert top is not None
        return _rows(top[:n])

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's cache from one slot to another (keeps slots 0..n-1 dense)."""
        self._issue((MOVE, source, target, length), (), ())

    # --- CUDA graphs ---------------------------------------------------------------------------

    def capture(self) -> None:
        """Record CUDA graphs (every rank, in the same order): decode steps for batch buckets 1,
        2, 4, ... slots (attending the whole context under the mask, so one graph serves every
        length) and prefills for prompt-length buckets 16, 32, ... context. A 0.5B model's step
        is ~600 small kernels; launched one by one from Python they cost far more than the GPU
        work (10-95 ms a step on an H200 here, ~3.5 ms as a graph), which would make the server's
        Python, not the model, what is measured. The all-reduces are recorded in the graphs."""
        pool = torch.cuda.graph_pool_handle()
        ids, pos = self._ids, self._pos

        def decode_step(n: int) -> torch.Tensor:
            return self._top(self._decode(ids[:n], pos[:n], self.context))

        def prefill_step(t: int) -> torch.Tensor:
            return self._top(self._prefill(ids[:t], pos[:1], pos[1:2]))

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
        # thread-local: the process group's watchdog thread queries events during a capture
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            out = fn()
        return graph, out

    @staticmethod
    def _replay(graph: tuple[torch.cuda.CUDAGraph, torch.Tensor]) -> torch.Tensor:
        graph[0].replay()
        return graph[1]


def _buckets(low: int, high: int) -> list[int]:
    """Powers of two from `low` below `high`, then `high`."""
    out = []
    while low < high:
        out.append(low)
        low *= 2
    return [*out, high]


def _ordered(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first TOP_LOGPROBS of each row by value, highest first, equal values lowest id first
    (two stable sorts: by id, then by value)."""
    by_id = ids.argsort(dim=-1)
    values, ids = values.gather(-1, by_id), ids.gather(-1, by_id)
    order = values.argsort(dim=-1, descending=True, stable=True)[:, :TOP_LOGPROBS]
    return values.gather(-1, order), ids.gather(-1, order)


def _rows(top: torch.Tensor) -> Top:
    """One device-to-host copy; per row the ids (greedy choice first) and their logprobs."""
    return [
        ([int(i) for i in row[:TOP_LOGPROBS]], row[TOP_LOGPROBS:]) for row in top.cpu().tolist()
    ]


def _check_sequences(seed: int) -> tuple[list[list[int]], tuple[int, int], int]:
    generator = torch.Generator().manual_seed(seed)
    lengths, steps = (40, 24), 8
    seqs = [
        torch.randint(BYTE_OFFSET, BYTE_OFFSET + 256, (n + steps,), generator=generator).tolist()
        for n in lengths
    ]
    return seqs, lengths, steps


def _run_check(runner: Qwen2Runner, seqs: list[list[int]], lengths: tuple[int, ...]) -> Top:
    """Two prompts prefilled into slots 0 and 1, then teacher-forced batched decode steps."""
    rows: Top = [
        runner.prefill_top(slot, s[:n])[0]
        for slot, (s, n) in enumerate(zip(seqs, lengths, strict=True))
    ]
    for step in range(len(seqs[0]) - lengths[0]):
        positions = [n + step for n in lengths]
        rows += runner.decode_top([s[p] for s, p in zip(seqs, positions, strict=True)], positions)
    return rows


def self_check(runner: Qwen2Runner, reference: Any | None, seed: int) -> dict[str, float]:
    """Compare the eager runner with `reference` (a `transformers` model of the same weights):
    the worst |logprob difference| over each position's top 5 and the share of positions whose
    greedy choice agrees; with CUDA graphs, the same between the graphs and the eager path. Run
    on rank 0 of a group, it drives every rank (the commands are collective)."""
    seqs, lengths, steps = _check_sequences(seed)
    graphs, runner.graphs = runner.graphs, False
    try:
        eager = _run_check(runner, seqs, lengths)
    finally:
        runner.graphs = graphs
    result: dict[str, float] = {}
    if reference is not None:
        with torch.inference_mode():
            logprobs = [
                reference(input_ids=torch.tensor([s], device=runner.device))
                .logits[0]
                .float()
                .log_softmax(dim=-1)
                .cpu()
                for s in seqs
            ]
        wanted = [(0, lengths[0] - 1), (1, lengths[1] - 1)] + [
            (slot, n + step) for step in range(steps) for slot, n in enumerate(lengths)
        ]
        result.update(_agreement(eager, [logprobs[s][p] for s, p in wanted]))
    if graphs:
        graphed = _run_check(runner, seqs, lengths)
        result["graph_max_logprob_diff"] = max(
            abs(a - b)
            for g, e in zip(graphed, eager, strict=True)
            for a, b in zip(g[1], e[1], strict=True)
        )
        result["graph_top1_agreement"] = sum(
            g[0][0] == e[0][0] for g, e in zip(graphed, eager, strict=True)
        ) / len(eager)
    return result


def _agreement(rows: Top, references: list[torch.Tensor]) -> dict[str, float]:
    worst = max(
        abs(lp - float(ref[i]))
        for (ids, lps), ref in zip(rows, references, strict=True)
        for i, lp in zip(ids, lps, strict=True)
    )
    agree = sum(ids[0] == int(ref.argmax()) for (ids, _), ref in zip(rows, references, strict=True))
    return {"max_logprob_diff": worst, "top1_agreement": agree / len(rows)}
