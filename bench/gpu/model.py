"""The served model: seeded random weights of a Qwen2 shape, whole or as one rank's shard.

vLLM is not on the GPU machine and nothing can be downloaded there, so the model is sized like a
real one (Qwen2.5-0.5B by default, up to Qwen2.5-72B) and its weights are drawn from a fixed
seed. Every tensor is drawn whole from a generator seeded by (seed, its name) on the device that
serves it, then sliced: each tensor-parallel rank gets exactly the rows or columns of the same
whole tensor, so `--tp N` serves the same model as `--tp 1` on the same kind of device, and a
72B shard is made without ever holding the whole model (one whole tensor at a time). Small
shapes also load the whole weights into a `transformers` `Qwen2ForCausalLM`: the reference the
runner is checked against at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

INIT_STD = 0.02
"""`transformers`' `initializer_range` for Qwen2: the scale its own random init uses."""
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "qwen2.5-72b": {  # the production model (Qwen/Qwen2.5-72B-Instruct's config), TP8 in bf16
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "tiny": {  # for CPU tests: the full vocabulary, so token ids look real
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}

REFERENCE_MAX_PARAMS = 2_000_000_000
"""Shapes up to this size also build the `transformers` reference for the start-up check; a 72B
reference would not fit beside its own shard."""


@dataclass(frozen=True)
class Shape:
    """A Qwen2 shape and how one rank's share of it is cut (`rank` of `world`)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, preset: str, rank: int = 0, world: int = 1) -> Shape:
        p = PRESETS[preset]
        shape = cls(
            p["hidden_size"],
            p["intermediate_size"],
            p["num_hidden_layers"],
            p["num_attention_heads"],
            p["num_key_value_heads"],
            p["vocab_size"],
            p["tie_word_embeddings"],
            rank,
            world,
        )
        shape.check()
        return shape

    def check(self) -> None:
        """Refuse a split the layers cannot take: whole heads, whole KV heads or whole
        replicas of them, and equal slices of the MLP and the vocabulary on every rank."""
        n = self.world
        fits_kv = self.kv_heads % n == 0 or n % self.kv_heads == 0
        if self.heads % n or not fits_kv or self.intermediate % n or self.vocab % n:
            raise ValueError(
                f"tensor parallel {n} does not divide heads {self.heads} / KV heads "
                f"{self.kv_heads} / intermediate {self.intermediate} / vocab {self.vocab}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def local_heads(self) -> int:
        return self.heads // self.world

    @property
    def local_kv_heads(self) -> int:
        """KV heads on this rank; with more ranks than KV heads each rank holds a replica of the
        one its query heads read (as vLLM does), since a KV head cannot be split."""
        return max(1, self.kv_heads // self.world)

    @property
    def first_kv_head(self) -> int:
        return self.rank * self.kv_heads // self.world

    @property
    def params(self) -> int:
        d = self.head_dim
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * d * 2
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attention + mlp) + embeddings

    def hf_config(self) -> Any:
        from transformers import Qwen2Config

        return Qwen2Config(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
            rms_norm_eps=RMS_EPS,
            hidden_act="silu",
        )


@dataclass(frozen=True)
class Layer:
    """One decoder layer's share: q|k|v fused (column-parallel by heads), o (row-parallel),
    gate|up fused (column-parallel), down (row-parallel); the norms are replicated."""

    ln1: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    o_w: torch.Tensor
    ln2: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


@dataclass(frozen=True)
class Weights:
    """One rank's weights: the embedding is replicated (a lookup needs no reduction), the head is
    this rank's slice of the vocabulary."""

    shape: Shape
    layers: list[Layer]
    embed: torch.Tensor
    norm: torch.Tensor
    head: torch.Tensor


def _draw(seed: int, name: str, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The whole tensor `name`, float32: norms are ones, everything else N(0, INIT_STD)."""
    if name.endswith("norm.weight"):
        return torch.ones(size, device=device)
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:7], "little"))
    return torch.randn(size, generator=generator, device=device).mul_(INIT_STD)


def _whole(shape: Shape, seed: int, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor under its `transformers` name, whole, one at a time."""
    d, h = shape.head_dim, shape.hidden
    yield "model.embed_tokens.weight", _draw(seed, "embed", (shape.vocab, h), device)
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        sizes = {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (shape.heads * d, h),
            "self_attn.q_proj.bias": (shape.heads * d,),
            "self_attn.k_proj.weight": (shape.kv_heads * d, h),
            "self_attn.k_proj.bias": (shape.kv_heads * d,),
            "self_attn.v_proj.weight": (shape.kv_heads * d, h),
            "self_attn.v_proj.bias": (shape.kv_heads * d,),
            "self_attn.o_proj.weight": (h, shape.heads * d),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (shape.intermediate, h),
            "mlp.up_proj.weight": (shape.intermediate, h),
            "mlp.down_proj.weight": (h, shape.intermediate),
        }
        for name, size in sizes.items():
            yield p + name, _draw(seed, p + name, size, device)
    yield "model.norm.weight", _draw(seed, "model.norm.weight", (h,), device)
    if not shape.tied:
        yield "lm_head.weight", _draw(seed, "lm_head", (shape.vocab, h), device)


def _slice(tensor: torch.Tensor, index: int, width: int, dim: int = 0) -> torch.Tensor:
    return tensor.narrow(dim, index * width, width)


def build_weights(shape: Shape, seed: int, device: torch.device, dtype: torch.dtype) -> Weights:
    """This rank's shard of the seeded model, drawn on `device` and cast to `dtype`."""
    d, r = shape.head_dim, shape.rank
    q_rows = shape.local_heads * d
    kv_rows, kv_index = shape.local_kv_heads * d, shape.first_kv_head // shape.local_kv_heads
    mlp = shape.intermediate // shape.world
    vocab = shape.vocab // shape.world
    column = {  # rows of this rank, by tensor name suffix: (width, index)
        "q_proj": (q_rows, r),
        "k_proj": (kv_rows, kv_index),
        "v_proj": (kv_rows, kv_index),
        "gate_proj": (mlp, r),
        "up_proj": (mlp, r),
    }
    row = {"o_proj": q_rows, "down_proj": mlp}  # input columns of this rank
    parts: dict[str, torch.Tensor] = {}
    layers: list[Layer] = []
    embed = norm = head = None
    with torch.no_grad():
        for name, whole in _whole(shape, seed, device):
            kind = name.split(".")[-2]
            if kind in column:
                width, index = column[kind]
                part = _slice(whole, index, width)
            elif kind in row:
                part = _slice(whole, r, row[kind], dim=1)
            elif name == "lm_head.weight":
                part = _slice(whole, r, vocab)
            else:
                part = whole
            part = part.to(dtype).contiguous()
            del whole
            if name == "model.embed_tokens.weight":
                embed = part
                if shape.tied:
                    head = _slice(part, r, vocab).contiguous()
            elif name == "model.norm.weight":
                norm = part
            elif name == "lm_head.weight":
                head = part
            else:
                parts[name.split(".", 3)[3]] = part
                if name.endswith("mlp.down_proj.weight"):
                    layers.append(_layer(parts))
                    parts = {}
    assert embed is not None
    assert norm is not None
    assert head is not None
    return Weights(shape, layers, embed, norm, head)


def _layer(p: dict[str, torch.Tensor]) -> Layer:
    a = "self_attn."
    return Layer(
        ln1=p["input_layernorm.weight"],
        qkv_w=torch.cat([p[a + "q_proj.weight"], p[a + "k_proj.weight"], p[a + "v_proj.weight"]]),
        qkv_b=torch.cat([p[a + "q_proj.bias"], p[a + "k_proj.bias"], p[a + "v_proj.bias"]]),
        o_w=p[a + "o_proj.weight"],
        ln2=p["post_attention_layernorm.weight"],
        gate_up_w=torch.cat([p["mlp.gate_proj.weight"], p["mlp.up_proj.weight"]]),
        down_w=p["mlp.down_proj.weight"],
    )


def reference_model(shape: Shape, seed: int, device: torch.device, dtype: torch.dtype) -> Any:
    """The whole seeded model as a `transformers` `Qwen2ForCausalLM` (small shapes only)."""
    from transformers import Qwen2ForCausalLM

    if shape.params > REFERENCE_MAX_PARAMS:
        raise ValueError(f"{shape.params / 1e9:.0f}B parameters: too large for a reference")
    whole = Shape(**{**vars(shape), "rank": 0, "world": 1})
    with torch.device(device):
        model: Any = Qwen2ForCausalLM(whole.hf_config())  # its wrapped `.to` confuses mypy
    state = dict(_whole(whole, seed, device))
    if whole.tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(dtype=dtype).eval()
