"""Does a committed image exist, for linux/amd64, and how big is it? (registry HTTP API v2)

Asked before any GPU money is spent (DESIGN.md §3 step 1) and by `cacheon-miner commit
--check-registry`. Anonymous access only: a 401 with a `WWW-Authenticate: Bearer realm=…` header
is answered by fetching a token from that realm, as `docker pull` does. The manifest's bytes are
hashed and compared with the digest, so a registry cannot substitute another image. Plain HTTP is
used only for loopback hosts (test registries); everything else is HTTPS. 429 and 5xx are retried
(tenacity), all under one deadline; what remains is the registry's fault, never the miner's.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
from dataclasses import dataclass

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cacheon.chain.commitments import DOCKER_HUB, ImageRef
from cacheon.protocol import ReasonCode

DOCKER_HUB_API = "registry-1.docker.io"
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)
ATTEMPTS = 4
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryProblem(Exception):
    """The image failed a check; `reason` is the reason code a validator records."""

    def __init__(self, message: str, reason: ReasonCode) -> None:
        super().__init__(message)
        self.reason = reason


class _Retryable(Exception):
    """429, 5xx or a transport error: worth another try."""


@dataclass(frozen=True)
class ImageManifest:
    """What the registry says about an image, for the linux/amd64 platform."""

    digest: str
    media_type: str
    platform_digest: str
    """The linux/amd64 manifest's digest (the same as `digest` for a single-platform image)."""
    compressed_size: int
    """Sum of the layer blob sizes and the config blob."""
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    layer_sizes: tuple[int, ...] = ()
    """Compressed bytes of each layer, in the order of `layers` and `diff_ids`."""


def registry_base_url(registry: str) -> str:
    host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
    return f"{'http' if _is_loopback(host) else 'https'}://{host}"


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


async def fetch_manifest(
    image: ImageRef,
    *,
    deadline_s: float = 60.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ImageManifest:
    """Resolve an image's linux/amd64 manifest and config, or raise `RegistryProblem`."""
    try:
        async with (
            asyncio.timeout(deadline_s),
            httpx.AsyncClient(
                base_url=registry_base_url(image.registry),
                transport=transport,
                timeout=httpx.Timeout(min(30.0, deadline_s)),
                follow_redirects=True,
            ) as http,
        ):
            session = _Session(http, image.repository)
            return await _resolve(session, image)
    except TimeoutError:
        raise RegistryProblem(
            f"registry {image.registry} did not answer within {deadline_s:g}s",
            ReasonCode.REGISTRY_UNAVAILABLE,
        ) from None


class _Session:
    """One repository on one registry, with the anonymous bearer token once one is needed."""

    def __init__(self, http: httpx.AsyncClient, repository: str) -> None:
        self.http = http
        self.repository = repository
        self.token: str | None = None

    async def get(self, path: str, accept: str | None = None) -> httpx.Response:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_once(path, accept)
        except _Retryable as exc:
            raise RegistryProblem(str(exc), ReasonCode.REGISTRY_UNAVAILABLE) from None
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _get_once(self, path: str, accept: str | None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = await self._send(path, headers)
        if response.status_code == 401 and not self.token:
            self.token = await self._token(response.headers.get("WWW-Authenticate", ""))
            headers["Authorization"] = f"Bearer {self.token}"
            response = await self._send(path, headers)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"registry answered {response.status_code} for {path}")
        return response

    async def _send(self, url: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self.http.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise _Retryable(f"registry unreachable: {type(exc).__name__}: {exc}") from None

    async def _token(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        fields = dict(_CHALLENGE_PARAM.findall(params))
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise RegistryProblem(
                f"registry requires credentials ({scheme or 'no challenge'}); images must be public",
                ReasonCode.MANIFEST_NOT_FOUND,
            )
        query = {"scope": f"repository:{self.repository}:pull"}
        if "service" in fields:
            query["service"] = fields["service"]
        response = await self._send(str(httpx.URL(fields["realm"], params=query)), {})
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"token service answered {response.status_code}")
        if response.status_code != 200:
            raise RegistryProblem(
                f"anonymous pull token refused ({response.status_code}); images must be public",
                ReasonCode.MANIFEST_NOT_FOUND,
            )
        body = _json(response)
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryProblem(
                "token service answered without a token", ReasonCode.REGISTRY_UNAVAILABLE
            )
        return token


async def _manifest(session: _Session, digest: str) -> tuple[str, dict[str, object]]:
    response = await session.get(f"/v2/{session.repository}/manifests/{digest}", ACCEPT)
    if response.status_code in (401, 403, 404):
        raise RegistryProblem(
            f"the registry has no manifest {digest} in {session.repository}"
            f" ({response.status_code}); push the image, then commit its digest",
            ReasonCode.MANIFEST_NOT_FOUND,
        )
    if response.status_code != 200:
        raise RegistryProblem(
            f"registry answered {response.status_code} for manifest {digest}",
            ReasonCode.REGISTRY_UNAVAILABLE,
        )
    actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
    if actual != digest:
        raise RegistryProblem(
            f"the registry served a manifest hashing to {actual}, not {digest}",
            ReasonCode.DIGEST_MISMATCH,
        )
    body = _json(response)
    media_type = str(body.get("mediaType") or response.headers.get("Content-Type", ""))
    return media_type.split(";", maxsplit=1)[0].strip(), body


async def _resolve(session: _Session, image: ImageRef) -> ImageManifest:
    media_type, body = await _manifest(session, image.digest)
    platform_digest: str = image.digest
    if media_type in INDEX_TYPES or "manifests" in body:
        platform_digest = _amd64_entry(body, image)
        _, body = await _manifest(session, platform_digest)
    config = body.get("config")
    layers = body.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise RegistryProblem(
            f"manifest {platform_digest} is not an image manifest ({media_type or 'no media type'})",
            ReasonCode.MANIFEST_NOT_FOUND,
        )
    response = await session.get(f"/v2/{session.repository}/blobs/{config.get('digest')}")
    if response.status_code != 200:
        raise RegistryProblem(
            f"the image config blob is missing ({response.status_code})",
            ReasonCode.MANIFEST_NOT_FOUND,
        )
    image_config = _json(response)
    if (image_config.get("os"), image_config.get("architecture")) != ("linux", "amd64"):
        raise RegistryProblem(
            f"the image is {image_config.get('os')}/{image_config.get('architecture')};"
            " build it for linux/amd64",
            ReasonCode.NO_AMD64_PLATFORM,
        )
    rootfs = image_config.get("rootfs")
    diff_ids = rootfs.get("diff_ids", []) if isinstance(rootfs, dict) else []
    return ImageManifest(
        digest=image.digest,
        media_type=media_type,
        platform_digest=platform_digest,
        compressed_size=int(config.get("size") or 0)
        + sum(int(layer.get("size") or 0) for layer in layers if isinstance(layer, dict)),
        layers=tuple(str(layer.get("digest")) for layer in layers if isinstance(layer, dict)),
        diff_ids=tuple(str(d) for d in diff_ids),
        layer_sizes=tuple(
            int(layer.get("size") or 0) for layer in layers if isinstance(layer, dict)
        ),
    )


def _amd64_entry(index: dict[str, object], image: ImageRef) -> str:
    entries = index.get("manifests")
    for entry in entries if isinstance(entries, list) else []:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if isinstance(platform, dict) and (platform.get("os"), platform.get("architecture")) == (
            "linux",
            "amd64",
        ):
            return str(entry["digest"])
    raise RegistryProblem(
        f"{image.canonical} is a multi-platform index without linux/amd64",
        ReasonCode.NO_AMD64_PLATFORM,
    )


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise RegistryProblem(
            f"registry answered {response.request.url.path} with non-JSON",
            ReasonCode.REGISTRY_UNAVAILABLE,
        ) from None
    if not isinstance(body, dict):
        raise RegistryProblem(
            "registry answered with JSON that is not an object", ReasonCode.REGISTRY_UNAVAILABLE
        )
    return body
