"""Every parser of outside input, fuzzed: none may raise anything but its documented error.

Commitments (text from the chain: a Rejection, never an exception), the SSE response parser
(bytes from a contestant: `ResponseFault`), the report verifier (bytes from the pod's upload:
`ReportRejected`, never an exception), the provider API clients (answers from Targon and Lium:
`ProviderError`), and the config loader (the operator's file and environment: `ConfigError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cacheon.agent.response import Event, ResponseFault, parse
from cacheon.chain.commitments import ImageRef, Rejection, parse_commitment
from cacheon.config import ConfigError, load_settings
from cacheon.pods.api import ApiClient, RetryPolicy
from cacheon.pods.base import Offer, PodError
from cacheon.pods.lium import LiumProvider
from cacheon.pods.lium import error_text as lium_error_text
from cacheon.pods.targon import TargonProvider
from cacheon.pods.targon import error_text as targon_error_text
from cacheon.validator.handoff import ReportRejected, VerifiedReport, verify_report_bytes

MODEL = "Qwen/Qwen2.5-72B-Instruct"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


# --- commitments ---------------------------------------------------------------------------------

commitment_text = st.one_of(
    st.none(),
    st.text(max_size=400),
    st.builds(
        lambda registry, repo, digest: f"cacheon/1 {registry}/{repo}@sha256:{digest}",
        st.from_regex(r"[a-zA-Z0-9.:\-]{0,30}", fullmatch=True),
        st.from_regex(r"[a-zA-Z0-9._/\-]{0,60}", fullmatch=True),
        st.from_regex(r"[0-9a-fA-F]{0,70}", fullmatch=True) | st.text(max_size=70),
    ),
)


@FUZZ
@given(commitment_text)
def test_commitment_parser_rejects_never_raises(text: str | None) -> None:
    assert isinstance(parse_commitment(text), ImageRef | Rejection)


# --- the SSE parser of contestants' responses ----------------------------------------------------


def _token_entry(draw: st.DrawFn) -> Any:
    token = draw(
        st.one_of(
            st.builds(lambda n: f"token_id:{n}", st.integers(-5, 10**6)),
            st.builds(lambda t: f"token_id:{t}", st.text(max_size=8)),
            json_value,
        )
    )
    logprob = draw(st.one_of(st.floats(), st.integers(-100, 5), json_value))
    top = draw(
        st.lists(
            st.fixed_dictionaries({"token": st.just(token), "logprob": st.just(logprob)}),
            max_size=6,
        )
        | json_value
    )
    return {"token": token, "logprob": logprob, "top_logprobs": top}


@st.composite
def sse_event(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return b"[DONE]"
    content = draw(st.lists(st.composite(_token_entry)(), max_size=3) | json_value)
    choice = {
        "delta": {"content": draw(st.text(max_size=10))},
        "logprobs": draw(st.just({"content": content}) | json_value),
        "finish_reason": draw(st.sampled_from([None, "stop", "length", "eos", 3])),
    }
    chunk = {
        "model": draw(st.sampled_from([MODEL, "other"])),
        "choices": draw(st.just([choice]) | json_value),
    }
    return json.dumps(chunk if kind == 2 else draw(json_value)).encode()


@FUZZ
@given(st.lists(sse_event(), max_size=8), st.integers(0, 8))
def test_sse_parser_raises_only_response_fault(events: list[bytes], max_tokens: int) -> None:
    with contextlib.suppress(ResponseFault):
        parse(0, [Event(i, data) for i, data in enumerate(events)], MODEL, max_tokens)


def test_sse_parser_refuses_digits_that_are_not_ascii() -> None:
    """`'²'.isdigit()` is True but `int('²')` raises: a token id must be ASCII digits."""
    entry = {"token": "token_id:²", "logprob": -0.1, "top_logprobs": []}
    chunk = {"model": MODEL, "choices": [{"logprobs": {"content": [entry]}, "finish_reason": None}]}
    with pytest.raises(ResponseFault, match="token_id"):
        parse(0, [Event(0, json.dumps(chunk).encode())], MODEL, 4)


# --- the report verifier -------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=300), json_value.map(lambda v: json.dumps(v).encode())))
def test_report_verifier_rejects_never_raises(data: bytes) -> None:
    assert isinstance(verify_report_bytes(data, b"k" * 32, "r1"), VerifiedReport | ReportRejected)


@FUZZ
@given(json_value, json_value)
def test_report_verifier_on_report_shaped_json(report: Any, mac: Any) -> None:
    body = {"schema_version": 1, "report": report, "mac": mac}
    if isinstance(report, dict):
        report["schema_version"] = 1
    result = verify_report_bytes(json.dumps(body).encode(), b"k" * 32, "r1")
    assert isinstance(result, ReportRejected)


# --- provider API answers ------------------------------------------------------------------------

answers = st.tuples(
    st.sampled_from([200, 200, 200, 201, 204, 400, 404, 409, 422]),
    st.one_of(st.binary(max_size=80), json_value.map(lambda v: json.dumps(v).encode())),
)


def _providers(answer: tuple[int, bytes]) -> list[Any]:
    status, body = answer

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    def api(name: str, text: Any) -> ApiClient:
        return ApiClient(name, "http://provider.invalid/api", headers={}, error_text=text,
                         timeout_s=5, retry=RetryPolicy(attempts=1, backoff_s=0),
                         transport=httpx.MockTransport(handler))  # fmt: skip

    return [
        LiumProvider(api("lium", lium_error_text), "tpl"),
        TargonProvider(api("targon", targon_error_text), "img", "ssh.example", 22),
    ]


@FUZZ
@given(answers)
def test_provider_answers_raise_only_provider_errors(answer: tuple[int, bytes]) -> None:
    async def every_call() -> None:
        for provider in _providers(answer):
            offer = Offer(provider.name, "offer-1", "NVIDIA H200", 8, 20.0)
            calls = (
                lambda p=provider: p.offers("NVIDIA H200", 8, 100.0),
                lambda p=provider, o=offer: p.create(o, "cacheon-x", "ssh-ed25519 AAAA k", 1.0),
                lambda p=provider: p.get("pod-1"),
                lambda p=provider: p.list_ours("cacheon"),
                lambda p=provider: p.terminate("pod-1"),
            )
            try:
                for call in calls:
                    with contextlib.suppress(PodError):
                        await call()
            finally:
                await provider.aclose()

    asyncio.run(every_call())


# --- the config loader ---------------------------------------------------------------------------

toml_text = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda table, key, value: f"[{table}]\n{key} = {value}\n".encode(),
        st.sampled_from(["chain", "pods", "s3", "web", "validator", "workload", "x", "arena"]),
        st.sampled_from(["network", "netuid", "providers", "port", "host", "bucket", "nope"]),
        st.sampled_from(["1", "-1", '"x"', "[1, 2]", "{a = 1}", "true", "1e999", '"\\u0000"']),
    ),
)


@FUZZ
@given(toml_text, st.dictionaries(st.sampled_from(["CACHEON_CHAIN__NETUID", "CACHEON_WEB__PORT",
       "CACHEON_PODS__PROVIDERS", "CACHEON_S3__BUCKET"]), st.text(max_size=12), max_size=2))  # fmt: skip
def test_config_loader_raises_only_config_error(data: bytes, environ: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "validator.toml"
        path.write_bytes(data)
        with contextlib.suppress(ConfigError):
            load_settings(_Args(path), environ=environ)


class _Args:
    def __init__(self, config: Path) -> None:
        self.config = config
