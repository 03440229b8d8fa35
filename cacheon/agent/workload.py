"""Seeded prompts: the same for every contestant in a round, fresh in every block.

A prompt is a pure function of (round seed, generator version, purpose, level, block, index), so
every launch of a round measures the same prompts in the same blocks, the validator can
regenerate them to audit, and no two blocks (or rounds) share a prompt a server could have
cached. Every user message carries a nonce for the same reason. The built-in generator needs no
download: templated tasks over a fixed word list with a realistic mix of lengths, from short chat
to long context. An operator dataset (JSON lines of `{"messages": [...]}`), pinned by sha256,
can supply a share of the prompts.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import orjson

from cacheon.protocol import PromptDataset, Workload

WORDS_PER_TOKEN = 0.75
"""English words per tokenizer token, to keep prompts inside the model's context."""
TEMPLATE_TOKENS = 64
"""Allowance for the chat template and the task wording around the generated text."""

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "what",
    "no",
    "more",
    "out",
    "up",
    "said",
    "into",
    "time",
    "can",
    "only",
    "new",
    "some",
    "could",
    "these",
    "two",
    "may",
    "first",
    "then",
    "do",
    "any",
    "like",
    "my",
    "now",
    "over",
    "such",
    "our",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "river",
    "market",
    "engine",
    "signal",
    "harbour",
    "garden",
    "winter",
    "copper",
    "lantern",
    "ledger",
    "orbit",
    "meadow",
    "quarry",
    "thunder",
    "velvet",
    "canyon",
    "ember",
    "glacier",
    "harvest",
    "island",
    "journey",
    "kettle",
    "lagoon",
    "mirror",
    "needle",
    "ocean",
    "pepper",
    "quartz",
    "ribbon",
    "saddle",
    "timber",
    "umbrella",
    "valley",
    "willow",
    "yarn",
]

_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer directly and accurately.",
    "You are an expert technical writer who explains things step by step.",
    "You are a friendly tutor for curious students.",
)

_TASKS = (
    "Summarise the following notes in a few sentences:",
    "Explain the main idea of this passage to a beginner:",
    "Write a short story that uses these words:",
    "List the key points of the text below as bullet points:",
    "Rewrite the following paragraph in plain English:",
    "Answer the question at the end of this text:",
    "Continue the following text in the same style:",
    "Translate the following text into formal English:",
)


class Purpose(StrEnum):
    """Why a prompt is sent; each purpose draws from its own stream of prompts."""

    WARMUP = "warmup"
    MEASURE = "measure"


@dataclass(frozen=True)
class Prompt:
    """One request's content; `max_tokens` varies so output lengths are mixed."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs."""
    max_tokens: int
    seed: int


@dataclass(frozen=True)
class _LengthClass:
    share: float
    min_words: int
    max_words: int


_LENGTHS = (
    _LengthClass(0.50, 15, 80),  # short chat
    _LengthClass(0.30, 150, 600),  # a page
    _LengthClass(0.15, 1000, 3000),  # a document
    _LengthClass(0.05, 4000, 12000),  # long context, capped by max_model_len
)


def request_body(prompt: Prompt, model: str) -> bytes:
    """The one request shape of the miner contract (DESIGN.md §4.2), every field explicit."""
    return orjson.dumps(
        {
            "model": model,
            "messages": [{"role": role, "content": content} for role, content in prompt.messages],
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
    )


class PromptSource:
    """All prompts of one round, derived from its seed."""

    def __init__(self, workload: Workload, seed: str, max_model_len: int) -> None:
        self.workload = workload
        self.seed = seed
        budget = max_model_len - workload.max_tokens - TEMPLATE_TOKENS
        if budget < 16:
            raise ValueError(
                f"max_model_len {max_model_len} leaves no room for prompts next to "
                f"max_tokens {workload.max_tokens}"
            )
        self.max_words = int(budget * WORDS_PER_TOKEN)
        self.dataset = load_dataset(workload.dataset) if workload.dataset else ()

    def block(self, purpose: Purpose, level: int, block: int, count: int) -> tuple[Prompt, ...]:
        return tuple(self.prompt(purpose, level, block, i) for i in range(count))

    def prompt(self, purpose: Purpose, level: int, block: int, index: int) -> Prompt:
        key = f"{self.seed}/{self.workload.generator_version}/{purpose}/{level}/{block}/{index}"
        digest = hashlib.sha256(key.encode()).digest()
        rng = random.Random(digest)  # noqa: S311 (reproducible prompts, not secrets)
        nonce = digest[:6].hex()
        dataset = self.workload.dataset
        if self.dataset and dataset is not None and rng.random() < dataset.share:
            messages = self.dataset[rng.randrange(len(self.dataset))]
            role, content = messages[-1]
            messages = (*messages[:-1], (role, f"[{nonce}] {content}"))
        else:
            messages = self._generated(rng, nonce)
        return Prompt(messages, self._max_tokens(rng), int.from_bytes(digest[6:10], "big"))

    def _generated(self, rng: random.Random, nonce: str) -> tuple[tuple[str, str], ...]:
        length = rng.choices(_LENGTHS, weights=[c.share for c in _LENGTHS])[0]
        words = min(rng.randint(length.min_words, length.max_words), self.max_words)
        text = _sentences(rng, words)
        task = rng.choice(_TASKS)
        return (
            ("system", rng.choice(_SYSTEM_PROMPTS)),
            ("user", f"[{nonce}] {task}\n\n{text}"),
        )

    def _max_tokens(self, rng: random.Random) -> int:
        """Log-uniform between an eighth of the cap and the cap: mostly short, some long."""
        cap = self.workload.max_tokens
        low = max(1, cap // 8)
        return min(cap, round(math.exp(rng.uniform(math.log(low), math.log(cap)))))


def _sentences(rng: random.Random, words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        sentence = rng.choices(_WORDS, k=min(rng.randint(6, 18), words - len(out)))
        sentence[0] = sentence[0].capitalize()
        out.extend(sentence)
        out[-1] += "."
    return " ".join(out)


class DatasetError(ValueError):
    """The operator dataset is missing, altered or malformed."""


def load_dataset(ref: PromptDataset) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Read the pinned dataset; any byte changed since pinning refuses the whole file."""
    try:
        data = Path(ref.path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"prompt dataset {ref.path}: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.sha256:
        raise DatasetError(
            f"prompt dataset {ref.path} has sha256 {actual}, the job pins {ref.sha256}"
        )
    rows = []
    for number, line in enumerate(data.splitlines(), 1):
        if line.strip():
            rows.append(_messages(orjson.loads(line), ref.path, number))
    if not rows:
        raise DatasetError(f"prompt dataset {ref.path} holds no prompts")
    return tuple(rows)


def _messages(row: object, path: str, number: int) -> tuple[tuple[str, str], ...]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{path}:{number}: expected {{'messages': [...]}}")
    out = []
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DatasetError(f"{path}:{number}: each message needs a role and a content string")
        out.append((message["role"], message["content"]))
    return tuple(out)
