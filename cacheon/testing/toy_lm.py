"""The toy language model behind the toy server, and the ways a cheating server bends it.

`ToyLM` is a small deterministic second-order model with real log-softmax probabilities (peaked,
not uniform); the correctness gate's tests use it as the reference a contestant is scored against,
and `baseline_answer` gives vLLM's `/tokenize`, `/detokenize` and teacher-forcing answers from it
so a toy can act as the baseline. `Decoder` is what a server streams: the greedy continuation, or a
`Cheat` on it. Standard library only: the toy image carries this module beside the server.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

EOS = 0
"""The end-of-sequence token id; `finish_reason` is `stop` when the model picks it."""
TOP_LOGPROBS = 5
NEAR_TIE_SEEDS = 1 << 20
"""Seeds from here on build the near-tie variant of a model (`near_tie_seed`). The toy server
hands its model nothing but a seed and a vocabulary size, so the variant is a range of seeds;
seeds below it are the models every earlier test was written against, unchanged."""
EOS_TIE_SHARE = 0.08
"""In the near-tie variant, the share of contexts where EOS is a near-tie (where it does not
already lead)."""
EOS_TIE_GAP = (0.25, 0.45)
"""How far behind the argmax such an EOS is, in nats: inside the gate's default ε_tie of 0.5, so
a server may stop there although the reference goes on."""
STOP_SHARE = 0.1
"""The share of responses the near-tie stopper (`Cheat.NEAR_TIE_STOP`) cuts short."""
STOP_TIE = 0.5
"""Where the near-tie stopper may stop: EOS within this many nats of the argmax (the gate's ε_tie)."""


class Cheat(StrEnum):
    """A way to game the correctness gate while keeping the stream's shape (DESIGN.md §4.4);
    `Knobs.cheat_scale` sets the strength where one applies."""

    NONE = "none"
    FABRICATED_LOGPROBS = "fabricated_logprobs"  # greedy tokens, every logprob reported as 0
    EARLY_EOS = "early_eos"  # EOS after 3 tokens, wherever the model stands
    SKIPPED_EOS = "skipped_eos"  # the runner-up token wherever the model would stop
    GARBAGE = "garbage"  # after 4 honest tokens, the least likely non-EOS token at every step
    SMALLER_MODEL = "smaller_model"  # flatter logits, as a distilled model: scale 0.6
    REPLAY = "replay"  # the first answer replayed for every later prompt
    SAMPLING = "sampling"  # ignores temperature 0: samples at temperature = scale, top_p 0.8
    LOGIT_NOISE = "logit_noise"  # a fixed gaussian perturbation of the logits, sd = scale
    NEAR_TIE_STOP = "near_tie_stop"  # one response in ten stops at a near-tie EOS, half-way
    NUDGED_LOGPROBS = "nudged_logprobs"  # greedy tokens, every logprob moved by up to ±scale
    TIE_SAMPLING = "tie_sampling"  # samples among the tokens within scale nats of the argmax


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "du", "ga", "ri", "zo", "be")


@dataclass(frozen=True)
class Distribution:
    """The model's next-token distribution at one position."""

    top: tuple[tuple[int, float], ...]
    """The TOP_LOGPROBS most likely (token id, logprob), most likely first."""
    logprobs: tuple[float, ...]
    """Log-softmax over the whole vocabulary."""


class ToyLM:
    """A second-order model: the logits at a position are A[x-1] + B[x-2].

    A gives every token a strongly preferred successor, so the distribution is peaked (the argmax
    usually holds most of the mass) and greedy text is varied rather than cyclic after a few
    tokens; B adds a weaker dependence on the token before. EOS leads in about 1% of contexts.

    The near-tie variant (a seed from `NEAR_TIE_SEEDS` on) is the same model with EOS moved to a
    fraction of a nat behind the argmax in `EOS_TIE_SHARE` of the other contexts: greedy text is
    unchanged, but it passes places where a server could stop and still pass the gate's EOS check.
    """

    def __init__(self, seed: int = 0, vocab_size: int = 512) -> None:
        base = seed % NEAR_TIE_SEEDS
        rng = random.Random(base)  # noqa: S311 (a reproducible model, not a secret)
        self.seed = base
        self.eos_ties = seed >= NEAR_TIE_SEEDS
        self.vocab_size = vocab_size
        self.words = ("<eos>", *(self._word(i, rng) for i in range(1, vocab_size)))
        self._ids = {word: i for i, word in enumerate(self.words)}
        self._a = [[rng.gauss(0.0, 1.5) for _ in range(vocab_size)] for _ in range(vocab_size)]
        self._b = [[rng.gauss(0.0, 0.7) for _ in range(vocab_size)] for _ in range(vocab_size)]
        for row in self._a:
            row[rng.randrange(1, vocab_size)] += 7.0
            row[EOS] -= 3.0
        for row in rng.sample(self._b, max(1, vocab_size // 100)):
            row[EOS] += 14.0

    @staticmethod
    def _word(i: int, rng: random.Random) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(1 + i % 3)) + str(i % 7)

    def tokenize(self, text: str) -> list[int]:
        """Known words map to their ids; any other word to a stable hash of it."""
        out = []
        for word in text.split():
            known = self._ids.get(word)
            if known is None:
                digest = hashlib.sha256(word.encode()).digest()
                known = 1 + int.from_bytes(digest[:4], "big") % (self.vocab_size - 1)
            out.append(known)
        return out

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat template: every message's words, then two tokens that digest all of them.

        The digest tokens make the continuation depend on the whole prompt, not only on its last
        two words, while keeping the model a function of the token sequence alone.
        """
        ids = [
            token
            for message in messages
            for token in self.tokenize(f"{message.get('role', '')} {message.get('content', '')}")
        ]
        digest = hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).digest()
        tail = [
            1 + int.from_bytes(digest[i : i + 4], "big") % (self.vocab_size - 1) for i in (0, 4)
        ]
        return ids + tail

    def detokenize(self, ids: list[int]) -> str:
        return "".join(" " + self.words[i] for i in ids)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one model per process, lives as long)
    def next(self, prev2: int, prev1: int) -> Distribution:
        a, b = self._a[prev1], self._b[prev2]
        logits = [x + y for x, y in zip(a, b, strict=True)]
        if self.eos_ties:
            self._tie_eos(logits, prev2, prev1)
        peak = max(logits)
        log_z = peak + math.log(math.fsum(math.exp(x - peak) for x in logits))
        logprobs = tuple(x - log_z for x in logits)
        order = sorted(range(self.vocab_size), key=logprobs.__getitem__, reverse=True)
        return Distribution(tuple((i, logprobs[i]) for i in order[:TOP_LOGPROBS]), logprobs)

    def _tie_eos(self, logits: list[float], prev2: int, prev1: int) -> None:
        """Put EOS just behind the argmax in a fixed `EOS_TIE_SHARE` of the contexts where it
        does not lead."""
        best = max(logits[1:])
        if logits[EOS] >= best:
            return
        digest = hashlib.sha256(struct.pack("<3I", self.seed, prev2, prev1)).digest()
        u = int.from_bytes(digest[:8], "big") / (1 << 64)
        if u < EOS_TIE_SHARE:
            low, high = EOS_TIE_GAP
            logits[EOS] = best - (low + (high - low) * u / EOS_TIE_SHARE)

    def greedy(self, prompt: list[int], max_tokens: int) -> Iterator[Distribution]:
        """The distributions of the greedy continuation; its tokens are their argmaxes."""
        prev2, prev1 = ([EOS, EOS, *prompt])[-2:]
        for _ in range(max_tokens):
            dist = self.next(prev2, prev1)
            yield dist
            if dist.top[0][0] == EOS:
                return
            prev2, prev1 = prev1, dist.top[0][0]


def near_tie_seed(seed: int) -> int:
    """The seed of model `seed`'s near-tie variant: the same model with near-tie EOS positions."""
    return NEAR_TIE_SEEDS + seed % NEAR_TIE_SEEDS


def eos_near_tie(dist: Distribution, within: float) -> bool:
    """EOS is not the argmax here but within `within` nats of it: a stop the gate lets pass."""
    return dist.top[0][0] != EOS and dist.top[0][1] - dist.logprobs[EOS] <= within


def _top_of(logprobs: Sequence[float], k: int) -> tuple[tuple[int, float], ...]:
    return tuple(
        (i, logprobs[i]) for i in heapq.nlargest(k, range(len(logprobs)), logprobs.__getitem__)
    )


def _log_softmax(logits: Sequence[float]) -> tuple[float, ...]:
    peak = max(logits)
    log_z = peak + math.log(math.fsum(math.exp(x - peak) for x in logits))
    return tuple(x - log_z for x in logits)


class Decoder:
    """The server's decoding: ToyLM's greedy continuation, or a cheat on it (`Cheat`).

    Each step yields the Distribution the stream reports: its first entry is the token sent and
    the logprob claimed for it, the other four the reported runners-up.
    """

    def __init__(self, lm: ToyLM, cheat: Cheat, scale: float, seed: int) -> None:
        self.lm, self.cheat, self.scale, self.seed = lm, cheat, scale, seed
        self.replayed: list[Distribution] | None = None
        self.owed = 0.0
        """Cuts the near-tie stopper owes: it cuts one request in ten, not a random tenth."""

    def continuation(self, prompt: list[int], max_tokens: int) -> Iterator[Distribution]:
        if self.cheat is Cheat.NONE:
            return self.lm.greedy(prompt, max_tokens)
        if self.cheat is Cheat.REPLAY and self.replayed is not None:
            return iter(self.replayed[:max_tokens])
        if self.cheat is Cheat.REPLAY:  # one long answer, cut to each later request's max_tokens
            self.replayed = list(self._steps(prompt, 4096))
            return iter(self.replayed[:max_tokens])
        if self.cheat is Cheat.NEAR_TIE_STOP:
            return iter(self._near_tie_stop(prompt, max_tokens))
        if self.cheat is Cheat.NUDGED_LOGPROBS:
            return self._nudged(prompt, max_tokens)
        return self._steps(prompt, max_tokens)

    def _near_tie_stop(self, prompt: list[int], max_tokens: int) -> list[Distribution]:
        """The honest answer, except that one in ten (`STOP_SHARE`) stops at the near-tie EOS
        nearest half its length: every stop is one the gate's EOS check allows, and the output
        stays inside the length band, so only the speed rule can take the gain away."""
        honest = list(self.lm.greedy(prompt, max_tokens))
        ties = [t for t, dist in enumerate(honest) if t > 0 and eos_near_tie(dist, STOP_TIE)]
        self.owed += STOP_SHARE  # a cut owed is paid at the next answer with a near-tie
        if self.owed < 1.0 or not ties:
            return honest
        self.owed -= 1.0
        cut = min(ties, key=lambda t: abs(t - len(honest) / 2))
        dist = honest[cut]
        others = [pair for pair in dist.top if pair[0] != EOS][: TOP_LOGPROBS - 1]
        return [*honest[:cut], Distribution(((EOS, dist.logprobs[EOS]), *others), dist.logprobs)]

    def _nudged(self, prompt: list[int], max_tokens: int) -> Iterator[Distribution]:
        """The greedy answer of the same model with every reported logprob moved by between a
        tenth of `scale` and `scale`, either way: a copy of the leader that no longer matches it
        bit for bit, while every gate check still passes."""
        rng = random.Random(f"{self.seed}/nudge/{prompt}")  # noqa: S311 (a reproducible cheat)
        for dist in self.lm.greedy(prompt, max_tokens):
            top = tuple(
                (token, lp + rng.choice((-1, 1)) * self.scale * rng.uniform(0.1, 1.0))
                for token, lp in dist.top
            )
            yield Distribution(top, dist.logprobs)

    def _steps(self, prompt: list[int], max_tokens: int) -> Iterator[Distribution]:
        rng = random.Random(f"{self.seed}/{prompt}")  # noqa: S311 (a reproducible cheat)
        prev2, prev1 = ([EOS, EOS, *prompt])[-2:]
        for position in range(max_tokens):
            logprobs = self._reported(self.lm.next(prev2, prev1).logprobs, prev2, prev1)
            top = _top_of(logprobs, TOP_LOGPROBS + 1)
            token = self._choose(position, logprobs, top, rng)
            claimed = 0.0 if self.cheat is Cheat.FABRICATED_LOGPROBS else logprobs[token]
            others = [pair for pair in top if pair[0] != token][: TOP_LOGPROBS - 1]
            yield Distribution(((token, claimed), *others), logprobs)
            if token == EOS:
                return
            prev2, prev1 = prev1, token

    def _reported(self, logprobs: tuple[float, ...], prev2: int, prev1: int) -> tuple[float, ...]:
        if self.cheat is Cheat.SMALLER_MODEL:
            return _log_softmax([x * 0.6 for x in logprobs])
        if self.cheat is Cheat.LOGIT_NOISE:
            noise = random.Random(f"{self.seed}/{prev2}/{prev1}")  # noqa: S311 (fixed per context)
            return _log_softmax([x + noise.gauss(0.0, self.scale) for x in logprobs])
        return logprobs

    def _choose(
        self,
        position: int,
        logprobs: Sequence[float],
        top: tuple[tuple[int, float], ...],
        rng: random.Random,
    ) -> int:
        best = top[0][0]
        if self.cheat is Cheat.EARLY_EOS and position == 3:
            return EOS
        if self.cheat is Cheat.SKIPPED_EOS and best == EOS:
            return top[1][0]
        if self.cheat is Cheat.GARBAGE and position >= 4:
            return min(range(1, len(logprobs)), key=logprobs.__getitem__)  # never EOS
        if self.cheat is Cheat.TIE_SAMPLING and best != EOS:
            # every choice a near-tie, so only how often it leaves the argmax gives it away
            ties = [t for t, lp in top if t != EOS and top[0][1] - lp <= self.scale]
            return rng.choice(ties)
        if self.cheat is Cheat.SAMPLING:
            ranked = sorted(range(len(logprobs)), key=logprobs.__getitem__, reverse=True)
            weights = [math.exp(logprobs[i] / self.scale) for i in ranked]
            total, mass, nucleus = sum(weights), 0.0, 0
            while mass < 0.8 * total:
                mass += weights[nucleus]
                nucleus += 1
            return rng.choices(ranked[:nucleus], weights[:nucleus])[0]
        return best


def baseline_answer(lm: ToyLM, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    """vLLM's answers to /tokenize, /detokenize and a teacher-forcing /v1/completions
    (`prompt` as ids, `prompt_logprobs`, `logprobs`, `return_tokens_as_token_ids`), so a toy
    can act as the baseline that scores contestants."""
    if path == "/tokenize":
        tokens = lm.chat_prompt(body["messages"])
        return {"count": len(tokens), "max_model_len": 1 << 20, "tokens": tokens}
    if path == "/detokenize":
        return {"prompt": lm.detokenize(body["tokens"])}
    ids, k = [int(t) for t in body["prompt"]], int(body.get("prompt_logprobs") or 0)
    history = [EOS, EOS, *ids]
    prompt_logprobs: list[dict[str, Any] | None] = [None]
    for i in range(1, len(ids)):
        logprobs = lm.next(history[i], history[i + 1]).logprobs
        entry = {
            str(t): {"logprob": lp, "rank": rank, "decoded_token": ""}
            for rank, (t, lp) in enumerate(_top_of(logprobs, k), start=1)
        }
        if str(ids[i]) not in entry:
            rank = 1 + sum(1 for x in logprobs if x > logprobs[ids[i]])
            entry[str(ids[i])] = {"logprob": logprobs[ids[i]], "rank": rank, "decoded_token": ""}
        prompt_logprobs.append(entry)
    after = _top_of(lm.next(history[-2], history[-1]).logprobs, int(body.get("logprobs") or 1))
    choice = {
        "index": 0,
        "text": lm.detokenize([after[0][0]]),
        "logprobs": {
            "text_offset": [0],
            "token_logprobs": [after[0][1]],
            "tokens": [f"token_id:{after[0][0]}"],
            "top_logprobs": [{f"token_id:{t}": lp for t, lp in after}],
        },
        "finish_reason": "length",
        "prompt_logprobs": prompt_logprobs,
    }
    return {"id": "cmpl-toy", "object": "text_completion", "model": model, "choices": [choice]}
