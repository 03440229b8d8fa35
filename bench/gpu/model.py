"""The served model: a `transformers` `Qwen2ForCausalLM` built from a config and a seed.

vLLM is not on the GPU machine and nothing can be downloaded there, so the model is sized like
a real one (Qwen2.5-0.5B by default) and initialised from a fixed seed: reproducible, and the
reference the runner is checked against at start-up.
"""

from __future__ import annotations

from typing import Any

import torch

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
