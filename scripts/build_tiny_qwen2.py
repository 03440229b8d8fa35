"""Builds the tiny Qwen2 model and tokenizer that the CPU vLLM serves in the conformance tests.

Run it with the vLLM venv's python (`.venv-vllm/bin/python scripts/build_tiny_qwen2.py OUT`):
it needs torch, tokenizers and transformers, which the agent's venv does not carry. Nothing is
downloaded. The same seed gives the same files, and OUT is rebuilt only when this script changes.

A randomly initialised model has near-uniform next-token distributions, where every position is
a near-tie and the correctness gate has nothing to tell apart. So the model is trained for a few
seconds on chat transcripts drawn from a seeded Markov chain over a small vocabulary: its
distributions are peaked where the chain is, flat where it branches evenly, and it learns to end
a reply with the chat template's EOS, which makes the gate's EOS checks meaningful.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

SEED = 14
VOCAB_SIZE = 2048
MAX_LEN = 2048
_WORD_LIST = (
    "the a cat dog bird fish tree river stone cloud sun moon rain wind fire light dark old new "
    "small big red blue green quick slow runs sleeps sings flies swims walks sees finds eats "
    "over under near far with and but then when here there today soon always never very quite"
)
WORDS = _WORD_LIST.split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAIN_STEPS = 300
BATCH = 32


def markov_chain(rng: random.Random) -> dict[str, tuple[list[str], list[float]]]:
    """Each word gets a few successors with skewed weights: some steps are near-certain."""
    chain: dict[str, tuple[list[str], list[float]]] = {}
    for word in WORDS:
        successors = rng.sample(WORDS, rng.randint(1, 4))
        weights = [rng.choice((1.0, 2.0, 8.0)) for _ in successors]
        chain[word] = (successors, weights)
    return chain


def walk(chain: dict[str, tuple[list[str], list[float]]], rng: random.Random, n: int) -> str:
    word = rng.choice(WORDS)
    out = [word]
    for _ in range(n - 1):
        successors, weights = chain[word]
        word = rng.choices(successors, weights)[0]
        out.append(word)
    return " ".join(out)


def noise_words(rng: random.Random, count: int) -> str:
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(count)
    )


def transcripts(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(prompt, reply) chats whose reply, 3 to 10 chain words, ends with EOS. Half the prompts
    start with random lowercase words, so that positions up to ~250 tokens are trained: the
    tests send English prompts, which this tokenizer splits into about three tokens a word."""
    chain = markov_chain(rng)
    texts = []
    for _ in range(count):
        user = walk(chain, rng, rng.randint(3, 12))
        if rng.random() < 0.5:
            user = f"{noise_words(rng, rng.randint(10, 60))} {user}"
        reply = walk(chain, rng, rng.randint(3, 10))
        texts.append(
            (f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", f"{reply}<|im_end|>\n")
        )
    return texts


def build_tokenizer(rng: random.Random, corpus: list[str]) -> PreTrainedTokenizerFast:
    # random lowercase "words" let BPE reach the full vocabulary, as a real tokenizer's long tail
    noise = noise_words(rng, 20000).split()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus + noise, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",  # noqa: S106 (a token name, not a password)
        pad_token="<|endoftext|>",  # noqa: S106
        model_max_length=MAX_LEN,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def train(
    model: Qwen2ForCausalLM, hf_tok: PreTrainedTokenizerFast, texts: list[tuple[str, str]]
) -> float:
    """A few hundred AdamW steps on the replies (the prompts are context, not targets);
    returns the final loss so the log shows the model learned."""
    rng = random.Random(SEED)  # noqa: S311 (seeded for reproducibility, not secrecy)
    encoded = [
        (
            hf_tok(p, add_special_tokens=False)["input_ids"],
            hf_tok(r, add_special_tokens=False)["input_ids"],
        )
        for p, r in texts
    ]
    pad = hf_tok.pad_token_id
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(TRAIN_STEPS):
        batch = rng.sample(encoded, BATCH)
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.tensor([p + r + [pad] * (width - len(p) - len(r)) for p, r in batch])
        mask = torch.tensor(
            [[1] * (len(p) + len(r)) + [0] * (width - len(p) - len(r)) for p, r in batch]
        )
        labels = torch.tensor(
            [[-100] * len(p) + r + [-100] * (width - len(p) - len(r)) for p, r in batch]
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    return loss.item()


def fingerprint() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def build(out: Path) -> None:
    hf_logging.disable_progress_bar()
    rng = random.Random(SEED)  # noqa: S311 (seeded for reproducibility, not secrecy)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # one thread keeps float reductions, and so the weights, reproducible
    torch.use_deterministic_algorithms(True)
    texts = transcripts(rng, 6000)
    hf_tok = build_tokenizer(rng, [p + r for p, r in texts])
    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 32: vLLM's CPU attention kernels start at 32
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    loss = train(model, hf_tok, texts)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_tok.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(tmp)
    (tmp / "cacheon-build.json").write_text(
        json.dumps({"script_sha256": fingerprint(), "seed": SEED, "final_loss": round(loss, 4)})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"built {out} (vocab {len(hf_tok)}, final training loss {loss:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (rebuilt if this script changed)")
    out = parser.parse_args().out
    stamp = out / "cacheon-build.json"
    if stamp.exists() and json.loads(stamp.read_text())["script_sha256"] == fingerprint():
        print(f"{out} is up to date")
        return
    build(out)


if __name__ == "__main__":
    main()
