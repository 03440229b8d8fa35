"""The miner server contract (DESIGN.md §4.2) as the text miners read, kept in one place.

A miner builds against words, the agent measures against code: if the two drift apart, miners
fail for reasons they were never told. So the words live here, once. `docs/miner-guide.md`
copies `CONTRACT_TEXT` verbatim (a test checks), and tests check that the example request is
byte for byte what the load generator sends and that the example chunk is what its stream parser
accepts. The stream limits are numbers here and in the agent's framer (`agent/framing.py`,
which cannot import this module: the agent imports only the protocol); a test keeps them equal.
This module is pure: no I/O.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, Final

from cacheon.protocol import CONTRACT_VERSION

EXAMPLE_MODEL: Final = "Qwen/Qwen2.5-72B-Instruct"
EXAMPLE_REQUEST: Final[dict[str, Any]] = {
    "model": EXAMPLE_MODEL,
    "messages": [{"role": "user", "content": "Name three prime numbers."}],
    "stream": True,
    "temperature": 0,
    "top_p": 1,
    "seed": 1234,
    "max_tokens": 64,
    "logprobs": True,
    "top_logprobs": 5,
    "return_tokens_as_token_ids": True,
    "stream_options": {"include_usage": True},
}
"""One request as the validator sends it (the load generator's `request_body`, pretty-printed)."""

EXAMPLE_CHUNK: Final[dict[str, Any]] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1767225600,
    "model": EXAMPLE_MODEL,
    "choices": [
        {
            "index": 0,
            "delta": {"content": " Two"},
            "logprobs": {
                "content": [
                    {
                        "token": "token_id:9043",
                        "logprob": -0.0123,
                        "top_logprobs": [
                            {"token": "token_id:9043", "logprob": -0.0123},
                            {"token": "token_id:576", "logprob": -4.61},
                            {"token": "token_id:2", "logprob": -6.2},
                            {"token": "token_id:18", "logprob": -7.05},
                            {"token": "token_id:1084", "logprob": -8.4},
                        ],
                    }
                ]
            },
            "finish_reason": None,
        }
    ],
}
"""One token event of the stream; the last token event carries `"finish_reason"` instead of null."""


EVENTS_PER_TOKEN: Final = 4
EVENTS_PER_RESPONSE: Final = 16
NON_DATA_LINES_PER_TOKEN: Final = 4
NON_DATA_LINES_PER_RESPONSE: Final = 16
READS_PER_TOKEN: Final = 4
READS_PER_RESPONSE: Final = 16
BYTES_PER_TOKEN: Final = 8 << 10
BYTES_PER_RESPONSE: Final = 64 << 10
MAX_EVENT_BYTES: Final = 1 << 20
"""What one response may cost the client (the stream limits), for n streamed tokens: at most
`X_PER_TOKEN * n + X_PER_RESPONSE` of each X, and no event above `MAX_EVENT_BYTES`."""


def _json_block(value: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(value, indent=2) + "\n```"


_STREAM_LIMITS: Final = textwrap.fill(
    "**Stream limits.** What a response may cost the validator's client is bounded, so that no"
    " server can make the client the thing measured. With n the tokens a response streams, it"
    f" may carry at most {EVENTS_PER_TOKEN}n + {EVENTS_PER_RESPONSE} events (every event"
    " counts: data, comment-only `:` events, any other field), at most"
    f" {NON_DATA_LINES_PER_TOKEN}n + {NON_DATA_LINES_PER_RESPONSE} lines that are not `data:`"
    " lines (comments, `event:`, `id:`, `retry:`) and at most"
    f" {BYTES_PER_TOKEN // 1024} KiB x n + {BYTES_PER_RESPONSE // 1024} KiB of bytes; it must"
    f" arrive in at most {READS_PER_TOKEN}n + {READS_PER_RESPONSE} reads (write each event at"
    f" once, never byte by byte); no single event may exceed {MAX_EVENT_BYTES >> 20} MiB. While"
    " a response streams, the same limits hold with n = `max_tokens`. vLLM streams one event or"
    " fewer, no comment line and about 1 kB per token. A response beyond any limit fails the"
    " launch with `bad_response`, its numbers in the detail. Every token id, streamed or among"
    " the `top_logprobs`, must be below the model's `vocab_size` (its `config.json` at"
    " `MODEL_PATH`); any other id fails the launch with `conformance`.",
    width=96,
)


CONTRACT_TEXT: Final = f"""\
### Miner server contract, version {CONTRACT_VERSION}

**Image.** A Docker image for linux/amd64, committed by digest. The validator pulls it by that
digest on an 8xH200 node and starts it with the same run profile as the baseline: all GPUs
visible, `--network none` (no egress at all: download nothing at start, bake everything into the
image), all capabilities dropped, `no-new-privileges`, a read-only root filesystem with a tmpfs
`/tmp` (and `/var/tmp`, `/root/.cache`), a large `/dev/shm`, memlock unlimited.

**Environment.** The container is given:

| variable | meaning |
|---|---|
| `PORT` | the port to listen on, on `0.0.0.0` (8000) |
| `MODEL_PATH` | the model's directory, mounted read-only, with its `tokenizer_config.json` chat template |
| `SERVED_MODEL_NAME` | the `model` field every request carries, e.g. `{EXAMPLE_MODEL}` |
| `MAX_MODEL_LEN` | the context length every request fits in |
| `HF_HUB_OFFLINE` | `1`: the weights are at `MODEL_PATH`, never on the network |

**Health.** `GET /health` returns 200 only when the server is ready to serve at full speed. It
must do so within the startup deadline (1200 s by default) and the server must stop within 30 s
of SIGTERM.

**Chat.** `POST /v1/chat/completions` with `stream: true`. Every request has the same shape and
the server must honour every field: `model`, `messages`, `temperature: 0` and `top_p: 1` (greedy
decoding), `seed`, `max_tokens`, `logprobs: true`, `top_logprobs: 5`,
`return_tokens_as_token_ids: true`, `stream_options: {{"include_usage": true}}`. There is no
separate correctness request: the responses that are timed are the ones that are checked.

{_json_block(EXAMPLE_REQUEST)}

**Stream.** Server-sent events (`data: <json>` lines), ending with `data: [DONE]`. Each generated
token appears in `choices[0].logprobs.content[]` as `{{"token": "token_id:<id>", "logprob",
"top_logprobs": [5 x {{"token": "token_id:<id>", "logprob"}}]}}`; an event may carry several
tokens; `delta.content` carries their text. The last token event carries `finish_reason`: `stop`
(the model emitted its end-of-sequence token) or `length` (exactly `max_tokens` tokens). Logprobs
are the raw log-softmax of the model's logits before any sampling processor (vLLM's default
`--logprobs-mode`). Role-only or empty chunks are allowed and time nothing.

{_json_block(EXAMPLE_CHUNK)}

{_STREAM_LIMITS}

**Measured.** The clock of a request starts when its bytes are sent. Output tokens are the token
ids received, never `usage` and never re-tokenised text.
"""
"""The contract as the miner guide states it; edit it here, then copy it into the guide."""
