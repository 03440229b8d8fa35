"""The on-chain commitment format, contract `cacheon/1` (DESIGN.md §4.1): encode, split, parse.

What the chain holds is what counts, so a reference that is not already canonical is rejected
with a reason rather than normalised: a validator that quietly fixed up `Foo:latest` would judge
an image the miner never named. The same parser runs in the miner CLI (before anything is signed)
and in the validator (on every poll), so a miner sees exactly the verdict a validator will reach.

Pure and total: every function returns a value for every input and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cacheon.protocol import Block, Digest, Hotkey, ReasonCode, Uid

CONTRACT = "cacheon/1"
MAX_FIELDS = 3
"""The Commitments pallet's `MaxFields`."""
MAX_FIELD_BYTES = 128
"""The largest `Raw<n>` variant."""
MAX_COMMITMENT_BYTES = MAX_FIELDS * MAX_FIELD_BYTES
MAX_REPOSITORY_CHARS = 255
"""The distribution spec's limit on a repository name."""

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset(
    {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::(?P<port>[0-9]{{1,5}}))?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_LOOSE_DIGEST = re.compile(r"(?i)[a-z0-9]+:\s*[0-9a-z]*\s*")


@dataclass(frozen=True)
class ImageRef:
    """A canonical image reference: `<registry>/<repository>@sha256:<hex>`."""

    registry: str
    repository: str
    digest: Digest

    @property
    def canonical(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Rejection:
    """Why a reference or commitment is not acceptable; `detail` is one line a miner can act on."""

    detail: str
    reason: ReasonCode = ReasonCode.BAD_COMMITMENT


@dataclass(frozen=True)
class Submission:
    """A parsed commitment as the chain holds it: who, at which block, which image."""

    hotkey: Hotkey
    uid: Uid | None
    block: Block
    image: ImageRef


def parse_reference(text: str, allowlist: Sequence[str] = ()) -> ImageRef | Rejection:
    """Parse a canonical image reference, or say what is wrong with it.

    `allowlist`, when not empty, lists the registry hosts (with port, if any) a reference may name.
    """
    if not text:
        return Rejection("the image reference is empty")
    if not text.isascii():
        return Rejection("the image reference contains non-ASCII characters")
    if text != text.strip() or any(ch.isspace() for ch in text):
        return Rejection("the image reference contains whitespace")
    if text.count("@") != 1:
        if "@" not in text:
            return Rejection(
                "the image reference has no digest; give <registry>/<repository>@sha256:<64 hex>"
                " (tags such as :latest are not accepted)"
            )
        return Rejection("the image reference contains more than one '@'")
    name, digest = text.split("@")
    digest_problem = _digest_problem(digest)
    if digest_problem is not None:
        return Rejection(digest_problem)
    if "/" not in name:
        return Rejection(
            f"'{name}' names no registry host; write it in full, e.g. docker.io/<user>/{name}"
        )
    registry, repository = name.split("/", 1)
    registry_problem = _registry_problem(registry, name)
    if registry_problem is not None:
        return Rejection(registry_problem)
    repository_problem = _repository_problem(registry, repository)
    if repository_problem is not None:
        return Rejection(repository_problem)
    if allowlist and registry not in allowlist:
        return Rejection(
            f"registry {registry} is not allowed by this validator; allowed: {', '.join(allowlist)}"
        )
    return ImageRef(registry=registry, repository=repository, digest=Digest(digest))


def encode_commitment(image: ImageRef) -> str:
    """The exact string a miner commits for an image."""
    return f"{CONTRACT} {image.canonical}"


def split_fields(commitment: str) -> tuple[bytes, ...] | Rejection:
    """Split a commitment into consecutive `Raw` field payloads of at most 128 bytes each."""
    if not commitment.isascii():
        return Rejection("the commitment contains non-ASCII characters")
    data = commitment.encode("ascii")
    if not data:
        return Rejection("the commitment is empty")
    if len(data) > MAX_COMMITMENT_BYTES:
        return Rejection(
            f"the commitment is {len(data)} bytes; the chain holds at most {MAX_COMMITMENT_BYTES}"
            f" ({MAX_FIELDS} fields of {MAX_FIELD_BYTES}); use a shorter registry or repository"
        )
    return tuple(
        data[start : start + MAX_FIELD_BYTES] for start in range(0, len(data), MAX_FIELD_BYTES)
    )


def commitment_fields(image: ImageRef) -> tuple[bytes, ...] | Rejection:
    """The `Raw` field payloads that carry an image's commitment."""
    return split_fields(encode_commitment(image))


def parse_commitment(text: str | None, allowlist: Sequence[str] = ()) -> ImageRef | Rejection:
    """Parse the text the chain holds for a hotkey (its `Raw` fields, concatenated)."""
    if text is None or text == "":
        return Rejection("the commitment is empty")
    if not text.isascii():
        return Rejection("the commitment contains non-ASCII characters")
    if len(text) > MAX_COMMITMENT_BYTES:
        return Rejection(f"the commitment is longer than {MAX_COMMITMENT_BYTES} bytes")
    prefix = f"{CONTRACT} "
    if not text.startswith(prefix):
        return Rejection(f"the commitment does not start with '{prefix}'")
    return parse_reference(text[len(prefix) :], allowlist)


def parse_submission(
    text: str | None,
    *,
    hotkey: Hotkey,
    uid: Uid | None,
    block: Block,
    allowlist: Sequence[str] = (),
) -> Submission | Rejection:
    """A chain commitment as a Submission, or the reason it is not one."""
    parsed = parse_commitment(text, allowlist)
    if isinstance(parsed, Rejection):
        return parsed
    return Submission(hotkey=hotkey, uid=uid, block=block, image=parsed)


def _digest_problem(digest: str) -> str | None:
    if _DIGEST.fullmatch(digest):
        return None
    if not digest.startswith("sha256:") and _LOOSE_DIGEST.fullmatch(digest):
        algorithm = digest.split(":", 1)[0]
        if algorithm.lower() == "sha256":
            return "the digest algorithm must be written in lowercase: sha256:<64 hex>"
        return f"digest algorithm '{algorithm}' is not accepted; use sha256:<64 hex>"
    if not digest.startswith("sha256:"):
        return "the digest must be sha256:<64 lowercase hex>"
    hex_part = digest[len("sha256:") :]
    if hex_part != hex_part.lower():
        return "the digest must be lowercase hex; uppercase is not normalised"
    if len(hex_part) != 64:
        return f"the digest has {len(hex_part)} hex digits; sha256 needs exactly 64"
    return "the digest contains characters that are not hex digits"


def _registry_problem(registry: str, name: str) -> str | None:
    if registry in _DOCKER_HUB_ALIASES:
        return f"write Docker Hub as {DOCKER_HUB}, not {registry}"
    if registry != registry.lower():
        return f"registry host '{registry}' must be lowercase"
    if "." not in registry and ":" not in registry and registry != "localhost":
        return (
            f"'{name}' names no registry host ('{registry}' is not a host name);"
            f" write it in full, e.g. docker.io/{name}"
        )
    match = _HOST.fullmatch(registry)
    if match is None:
        return f"'{registry}' is not a valid registry host"
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        return f"registry port {port} is out of range"
    return None


def _repository_problem(registry: str, repository: str) -> str | None:
    if ":" in repository:
        return "the reference carries a tag; commit the digest alone, without ':<tag>'"
    if not repository:
        return "the repository name is empty"
    if repository != repository.lower():
        return f"repository '{repository}' must be lowercase"
    if len(repository) > MAX_REPOSITORY_CHARS:
        return f"the repository name is longer than {MAX_REPOSITORY_CHARS} characters"
    for component in repository.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            return f"repository component '{component}' is not valid (a-z, 0-9, '.', '_', '-')"
    if registry == DOCKER_HUB and "/" not in repository:
        return f"Docker Hub official images are {DOCKER_HUB}/library/{repository}; write that"
    return None
