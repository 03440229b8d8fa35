"""Prompts are a pure function of the seed: identical per block for everyone, unique across blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from cacheon.agent.workload import DatasetError, PromptSource, Purpose, request_body
from cacheon.protocol import PromptDataset, Workload

SEED = "ab" * 32


def test_same_seed_same_prompts_and_every_block_fresh() -> None:
    one = PromptSource(Workload(), SEED, 32768)
    two = PromptSource(Workload(), SEED, 32768)
    assert one.block(Purpose.MEASURE, 16, 0, 64) == two.block(Purpose.MEASURE, 16, 0, 64)
    texts = {
        p.messages[-1][1]
        for level in (1, 16, 64)
        for block in range(3)
        for purpose in Purpose
        for p in one.block(purpose, level, block, 64)
    }
    assert len(texts) == 3 * 3 * 2 * 64
    other = PromptSource(Workload(), "cd" * 32, 32768).block(Purpose.MEASURE, 16, 0, 64)
    assert not {p.messages[-1][1] for p in other} & texts


def test_lengths_are_mixed_and_fit_the_context() -> None:
    workload = Workload(max_tokens=256)
    prompts = PromptSource(workload, SEED, 8192).block(Purpose.MEASURE, 1, 0, 400)
    words = [len(p.messages[-1][1].split()) for p in prompts]
    assert min(words) < 100
    assert max(words) > 1000
    assert max(words) <= (8192 - 256 - 64) * 0.75 + 20
    outputs = {p.max_tokens for p in prompts}
    assert min(outputs) >= 32
    assert max(outputs) <= 256
    assert len(outputs) > 50


def test_request_has_the_contract_shape() -> None:
    prompt = PromptSource(Workload(), SEED, 4096).prompt(Purpose.MEASURE, 1, 0, 0)
    body = orjson.loads(request_body(prompt, "m"))
    assert body == {
        "model": "m",
        "messages": [{"role": r, "content": c} for r, c in prompt.messages],
        "stream": True,
        "temperature": 0,
        "top_p": 1,
        "seed": prompt.seed,
        "max_tokens": prompt.max_tokens,
        "logprobs": True,
        "top_logprobs": 5,
        "return_tokens_as_token_ids": True,
        "stream_options": {"include_usage": True},
    }


def test_dataset_is_pinned_by_hash(tmp_path: Path) -> None:
    data = b'{"messages": [{"role": "user", "content": "operator prompt"}]}\n'
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    pinned = PromptDataset(path=str(path), sha256=hashlib.sha256(data).hexdigest(), share=1.0)
    prompts = PromptSource(Workload(dataset=pinned), SEED, 4096).block(Purpose.MEASURE, 1, 0, 4)
    assert all(p.messages[-1][1].endswith("operator prompt") for p in prompts)
    assert len({p.messages[-1][1] for p in prompts}) == 4  # a nonce keeps them unique
    path.write_bytes(data.replace(b"operator", b"tampered"))
    with pytest.raises(DatasetError, match="sha256"):
        PromptSource(Workload(dataset=pinned), SEED, 4096)


def test_no_room_for_prompts_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        PromptSource(Workload(max_tokens=256), SEED, 300)
