"""The commitment format: a table of malformed references, and properties of the pure parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheon.chain.commitments import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    ImageRef,
    Rejection,
    Submission,
    commitment_fields,
    encode_commitment,
    parse_commitment,
    parse_reference,
    parse_submission,
    split_fields,
)
from cacheon.protocol import Block, Digest, Hotkey, ReasonCode, Uid

HEX = "0123456789abcdef" * 4
GOOD = f"docker.io/miner/server@sha256:{HEX}"


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"ghcr.io/org/team/server@sha256:{HEX}",
        f"127.0.0.1:5000/server@sha256:{HEX}",
        f"localhost/server@sha256:{HEX}",
        f"docker.io/library/ubuntu@sha256:{HEX}",
        f"registry.example.com:443/a.b/c_d/e--f@sha256:{HEX}",
    ],
)
def test_canonical_references_parse(text: str) -> None:
    parsed = parse_reference(text)
    assert isinstance(parsed, ImageRef)
    assert parsed.canonical == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("docker.io/miner/server:v1", "no digest"),
        ("docker.io/miner/server:latest", "no digest"),
        (f"docker.io/miner/server:latest@sha256:{HEX}", "tag"),
        (f"docker.io/miner/server@sha256:{HEX[:-1]}", "63 hex digits"),
        (f"docker.io/miner/server@sha256:{HEX}0", "65 hex digits"),
        (f"docker.io/miner/server@sha256:{HEX[:-1]}g", "not hex"),
        (f"docker.io/miner/server@sha256:{HEX.upper()}", "lowercase hex"),
        (f"docker.io/miner/server@SHA256:{HEX}", "lowercase"),
        (f"docker.io/miner/server@sha512:{HEX}", "sha512"),
        (f"docker.io/Miner/server@sha256:{HEX}", "lowercase"),
        (f"Docker.io/miner/server@sha256:{HEX}", "lowercase"),
        (f" {GOOD}", "whitespace"),
        (f"{GOOD} ", "whitespace"),
        (f"docker.io/miner/ser ver@sha256:{HEX}", "whitespace"),
        (f"docker.io/miner/sérver@sha256:{HEX}", "non-ASCII"),
        (f"miner/server@sha256:{HEX}", "no registry host"),
        (f"server@sha256:{HEX}", "no registry host"),
        (f"index.docker.io/miner/server@sha256:{HEX}", "docker.io"),
        (f"docker.io/ubuntu@sha256:{HEX}", "library/ubuntu"),
        (f"docker.io/miner/server@sha256:{HEX}@sha256:{HEX}", "more than one '@'"),
        (f"docker.io/miner//server@sha256:{HEX}", "not valid"),
        (f"docker.io/miner/-server@sha256:{HEX}", "not valid"),
        (f"host.io:99999/server@sha256:{HEX}", "out of range"),
        (f"docker.io/{'a' * 300}@sha256:{HEX}", "longer than"),
    ],
)
def test_malformed_references_are_rejected_with_a_reason(text: str, says: str) -> None:
    parsed = parse_reference(text)
    assert isinstance(parsed, Rejection)
    assert parsed.reason is ReasonCode.BAD_COMMITMENT
    assert says in parsed.detail
    assert "\n" not in parsed.detail


def test_allowlist_restricts_registry_hosts() -> None:
    assert isinstance(parse_reference(GOOD, ["docker.io"]), ImageRef)
    rejected = parse_reference(GOOD, ["ghcr.io"])
    assert isinstance(rejected, Rejection)
    assert "not allowed" in rejected.detail


def test_commitment_needs_the_contract_prefix() -> None:
    assert isinstance(parse_commitment(f"cacheon/1 {GOOD}"), ImageRef)
    for text in (None, "", GOOD, f"cacheon/2 {GOOD}", f"cacheon/1  {GOOD}", f"cacheon/1\t{GOOD}"):
        assert isinstance(parse_commitment(text), Rejection)


def test_over_three_fields_is_rejected() -> None:
    long_repo = "/".join(["abcdefghij" * 3] * 12)
    image = ImageRef("docker.io", long_repo, Digest(f"sha256:{HEX}"))
    fields = commitment_fields(image)
    assert isinstance(fields, Rejection)
    assert "at most 384" in fields.detail


def test_submission_carries_chain_facts() -> None:
    parsed = parse_submission(f"cacheon/1 {GOOD}", hotkey=Hotkey("5F"), uid=Uid(3), block=Block(9))
    assert isinstance(parsed, Submission)
    assert (parsed.uid, parsed.block, parsed.image.canonical) == (3, 9, GOOD)


_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_host = st.from_regex(r"[a-z0-9]{1,10}\.(io|com|net)(:[1-9][0-9]{0,3})?", fullmatch=True)
images = st.builds(
    lambda host, parts, digest: ImageRef(host, "/".join(parts), Digest(f"sha256:{digest}")),
    _host,
    st.lists(_component, min_size=1, max_size=4),
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)


@given(images)
def test_encode_then_parse_round_trips(image: ImageRef) -> None:
    text = encode_commitment(image)
    fields = split_fields(text)
    assert not isinstance(fields, Rejection)
    assert 1 <= len(fields) <= MAX_FIELDS
    assert all(1 <= len(f) <= MAX_FIELD_BYTES for f in fields)
    assert parse_commitment(b"".join(fields).decode()) == image


@given(st.text(max_size=500))
def test_parser_is_total(text: str) -> None:
    assert isinstance(parse_commitment(text), ImageRef | Rejection)
    assert isinstance(parse_reference(text), ImageRef | Rejection)
    assert isinstance(split_fields(text), tuple | Rejection)


@given(images, st.sampled_from(["upper", "space", "tag"]))
def test_variants_of_a_good_reference_are_never_normalised(image: ImageRef, how: str) -> None:
    text = image.canonical
    variant = {
        "upper": text.upper(),
        "space": f"{text}\n",
        "tag": text.replace("@", ":latest@", 1),
    }[how]
    assert isinstance(parse_reference(variant), Rejection)
