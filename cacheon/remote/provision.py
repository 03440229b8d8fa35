"""Make the pinned model present on the pod, from the hub or the operator's S3 mirror.

The validator turns the pinned manifest (every file's sha256 and size, a JSON file named by
`model.manifest`) into a fetch plan: one URL per file, either the hub's `resolve` URL at the
pinned revision or a presigned GET on the mirror, so the pod holds no S3 credential. The agent
downloads and verifies on the pod (`cacheon-agent fetch_model`) and reports progress lines,
which are passed on as they come.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from cacheon.config import ModelSettings
from cacheon.protocol import FetchPlan, ModelFile, ProgressEvent
from cacheon.remote.bootstrap import AgentInstall, locked
from cacheon.remote.ssh import CommandFailed, SshSession

FETCH_DEADLINE_S = 6 * 3600.0


class ProvisionError(Exception):
    """The model could not be made present; the message names the file or the problem."""


class Presigner(Protocol):
    """What a plan needs of the operator's S3 mirror: a presigned GET per file, nothing else
    (`store.objects.ObjectStore` is one; the pod never sees a credential)."""

    def presign_get(self, key: str) -> str: ...


def model_dir(model: ModelSettings, agent_root: str) -> str:
    """Where the weights live on the pod: the cache dir, one folder per name and revision."""
    cache = model.cache_dir or f"{agent_root}/models"
    return f"{cache}/{model.name.replace('/', '--')}@{model.revision}"


def load_manifest(path: Path) -> dict[str, tuple[str, int]]:
    """`{"files": {"<path>": {"sha256": "<hex>", "size": <bytes>}}}` -> path: (sha256, size)."""
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        return {name: (str(f["sha256"]), int(f["size"])) for name, f in files.items()}
    except OSError as exc:
        raise ProvisionError(f"model.manifest {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProvisionError(
            f'model.manifest {path}: expected {{"files": {{path: {{sha256, size}}}}}}: {exc!r}'
        ) from None


def fetch_plan(model: ModelSettings, agent_root: str, store: Presigner | None = None) -> FetchPlan:
    """The plan for `model`: hub URLs at the pinned revision, or presigned GETs on the mirror."""
    if model.manifest is None:
        raise ProvisionError("model.manifest is not set: pin the model's files by sha256 first")
    manifest = load_manifest(Path(model.manifest).expanduser())
    if model.source == "s3" and store is None:
        raise ProvisionError("model.source is s3 but S3 is not configured")

    def url(path: str) -> str:
        if store is not None and model.source == "s3":
            key = f"{model.s3_prefix.strip('/')}/{model.name}/{model.revision}/{path}"
            return store.presign_get(key)
        base = model.hf_endpoint.rstrip("/")
        return f"{base}/{model.name}/resolve/{quote(model.revision, safe='')}/{quote(path)}"

    try:
        files = tuple(
            ModelFile(path=path, sha256=sha256, size=size, url=url(path))
            for path, (sha256, size) in sorted(manifest.items())
        )
    except ValueError as exc:
        raise ProvisionError(f"model.manifest {model.manifest}: {exc}") from None
    return FetchPlan(
        model=f"{model.name}@{model.revision}", dest=model_dir(model, agent_root), files=files
    )


async def provision_model(
    session: SshSession,
    install: AgentInstall,
    plan: FetchPlan,
    on_event: Callable[[ProgressEvent], None] | None = None,
) -> None:
    """Run the fetch on the pod, passing progress on; ProvisionError names what failed."""
    plan_file = f"{install.agent_root}/fetch-plan.json"
    await session.write_file(plan_file, plan.model_dump_json().encode())
    command = locked(
        install.agent_root,
        "models",
        f"{shlex.quote(install.agent)} fetch_model --plan {shlex.quote(plan_file)}",
    )
    try:
        async for line in session.lines(command, deadline_s=FETCH_DEADLINE_S):
            try:
                event = ProgressEvent.model_validate_json(line)
            except ValueError:
                continue  # the closing summary line
            if on_event is not None:
                on_event(event)
    except CommandFailed as exc:
        lines = exc.result.stderr.strip().splitlines() or ["fetch_model failed"]
        detail = lines[-1].removeprefix("cacheon-agent: ")
        raise ProvisionError(f"{plan.model}: {detail}") from None
