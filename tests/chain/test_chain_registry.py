"""The registry v2 pre-screen: token flow and failures via httpx's MockTransport, then for real."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from cacheon.chain.commitments import ImageRef, parse_reference
from cacheon.chain.registry import RegistryProblem, fetch_manifest, registry_base_url
from cacheon.protocol import Digest, ReasonCode
from cacheon.testing.miner_cli import run_miner
from cacheon.testing.services import push_test_image
from tests.chain.chain_toys import Chain, assert_one_line_error

CONFIG = json.dumps({"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": ["sha256:d1"]}})
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG.encode()).hexdigest()
MANIFEST = json.dumps(
    {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": CONFIG_DIGEST, "size": 10},
        "layers": [{"digest": "sha256:l1", "size": 90}],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def _image(digest: str = DIGEST) -> ImageRef:
    return ImageRef("ghcr.io", "org/server", Digest(digest))


def _registry(*, manifest: bytes = MANIFEST, fail_first: int = 0, status: int = 200):
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.host == "auth.example":
            assert request.url.params["scope"] == "repository:org/server:pull"
            return httpx.Response(200, json={"token": "t0k"})
        if request.headers.get("Authorization") != "Bearer t0k":
            challenge = 'Bearer realm="https://auth.example/token",service="ghcr.io"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if len([c for c in calls if "/manifests/" in c]) <= fail_first:
            return httpx.Response(503)
        if request.url.path.endswith(f"/blobs/{CONFIG_DIGEST}"):
            return httpx.Response(200, content=CONFIG.encode())
        return httpx.Response(status, content=manifest)

    return httpx.MockTransport(handler), calls


def test_anonymous_token_flow_and_facts() -> None:
    transport, _ = _registry()
    found = asyncio.run(fetch_manifest(_image(), transport=transport))
    assert (found.compressed_size, found.layers, found.diff_ids) == (
        100,
        ("sha256:l1",),
        ("sha256:d1",),
    )


def test_5xx_is_retried() -> None:
    transport, calls = _registry(fail_first=2)
    assert asyncio.run(fetch_manifest(_image(), transport=transport)).digest == DIGEST
    assert len([c for c in calls if "/manifests/" in c]) >= 3


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"status": 404}, ReasonCode.MANIFEST_NOT_FOUND),
        ({"fail_first": 99}, ReasonCode.REGISTRY_UNAVAILABLE),
        ({"manifest": b'{"manifests": []}'}, ReasonCode.DIGEST_MISMATCH),
    ],
)
def test_failures_carry_reason_codes(kwargs: dict[str, object], reason: ReasonCode) -> None:
    transport, _ = _registry(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(RegistryProblem) as caught:
        asyncio.run(fetch_manifest(_image(), transport=transport))
    assert caught.value.reason is reason


def test_index_without_amd64() -> None:
    index = json.dumps(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"digest": DIGEST, "platform": {"os": "linux", "architecture": "arm64"}}],
        }
    ).encode()
    transport, _ = _registry(manifest=index)
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    with pytest.raises(RegistryProblem) as caught:
        asyncio.run(fetch_manifest(_image(digest), transport=transport))
    assert caught.value.reason is ReasonCode.NO_AMD64_PLATFORM


def test_plain_http_only_on_loopback() -> None:
    assert registry_base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_base_url("localhost:5000") == "http://localhost:5000"
    assert registry_base_url("ghcr.io") == "https://ghcr.io"
    assert registry_base_url("docker.io") == "https://registry-1.docker.io"


def test_real_registry(docker_daemon, registry) -> None:
    reference = push_test_image(docker_daemon, registry, "cacheon/chain-test")
    image = parse_reference(reference)
    assert isinstance(image, ImageRef)
    found = asyncio.run(fetch_manifest(image, deadline_s=30))
    assert found.compressed_size > 0
    assert found.layers
    missing = ImageRef(image.registry, image.repository, Digest("sha256:" + "0" * 64))
    with pytest.raises(RegistryProblem) as caught:
        asyncio.run(fetch_manifest(missing, deadline_s=30))
    assert caught.value.reason is ReasonCode.MANIFEST_NOT_FOUND


def test_miner_check_registry(chain: Chain, docker_daemon, registry) -> None:
    reference = push_test_image(docker_daemon, registry, "cacheon/chain-cli")
    args = ("--yes", "--check-registry", *chain.flags(), *chain.miner.flags())
    ok = run_miner("commit", reference, *args)
    assert ok.returncode == 0, ok.stderr
    assert "linux/amd64" in ok.stdout
    missing = reference.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    assert_one_line_error(run_miner("commit", missing, *args), "no manifest")
