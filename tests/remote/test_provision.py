"""Model provisioning on the 'pod' (real sshd): a tiny model from a hub-like HTTP server and from
the S3 mirror, verified file by file, never fetched twice; and the pod readiness verdicts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cacheon.config import ModelSettings
from cacheon.protocol import HardwareFacts, PodFacts, ProgressEvent
from cacheon.remote.bootstrap import AgentInstall
from cacheon.remote.provision import ProvisionError, fetch_plan, provision_model
from cacheon.remote.readiness import PodNotReady, PodRequirements, check_pod, problems_with
from cacheon.remote.ssh import SshOptions, connect
from cacheon.sshtarget import SshTarget
from cacheon.store.objects import ObjectStore
from tests.remote.remote_toys import HubServer

TINY_MODEL = {
    "config.json": b'{"model_type": "qwen2", "hidden_size": 8}',
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
    "weights/model-00001-of-00001.safetensors": bytes(range(256)) * 4096,
}


def _manifest(tmp_path: Path, files: dict[str, bytes], wrong: str | None = None) -> Path:
    entries = {
        path: {
            "sha256": hashlib.sha256(b"not it" if path == wrong else body).hexdigest(),
            "size": len(body),
        }
        for path, body in files.items()
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"files": entries}))
    return path


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer("tiny/model", "abc123", TINY_MODEL) as server:
        yield server


def _provision(
    target: SshTarget,
    options: SshOptions,
    install: AgentInstall,
    model: ModelSettings,
    **kw: object,
) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []

    async def main() -> None:
        async with await connect(target, options) as session:
            plan = fetch_plan(model, install.agent_root, **kw)  # type: ignore[arg-type]
            await provision_model(session, install, plan, events.append)

    asyncio.run(main())
    return events


def test_the_model_is_fetched_verified_and_never_fetched_again(
    ssh_target: SshTarget,
    ssh_options: SshOptions,
    installed_agent: AgentInstall,
    hub: HubServer,
    tmp_path: Path,
) -> None:
    model = ModelSettings(
        name="tiny/model",
        revision="abc123",
        hf_endpoint=hub.url,
        manifest=str(_manifest(tmp_path, TINY_MODEL)),
        cache_dir=f"{installed_agent.agent_root}/models-{uuid.uuid4().hex[:6]}",
    )
    events = _provision(ssh_target, ssh_options, installed_agent, model)
    assert len(hub.gets) == len(TINY_MODEL)
    last = events[-1]
    assert (last.done, last.total) == (3, 3)
    assert last.bytes_done == last.bytes_total == sum(map(len, TINY_MODEL.values()))
    assert "MB/s" in last.message
    dest = Path(fetch_plan(model, installed_agent.agent_root).dest)
    for path, body in TINY_MODEL.items():
        assert (dest / path).read_bytes() == body

    again = _provision(ssh_target, ssh_options, installed_agent, model)
    assert len(hub.gets) == len(TINY_MODEL)  # nothing downloaded the second time
    assert sum("cached" in event.message for event in again) == 3


def test_a_file_with_a_wrong_hash_is_refused_by_name(
    ssh_target: SshTarget,
    ssh_options: SshOptions,
    installed_agent: AgentInstall,
    hub: HubServer,
    tmp_path: Path,
) -> None:
    bad = "weights/model-00001-of-00001.safetensors"
    model = ModelSettings(
        name="tiny/model",
        revision="abc123",
        hf_endpoint=hub.url,
        manifest=str(_manifest(tmp_path, TINY_MODEL, wrong=bad)),
        cache_dir=f"{installed_agent.agent_root}/models-{uuid.uuid4().hex[:6]}",
    )
    with pytest.raises(ProvisionError, match=f"{bad}: refused, sha256 .* does not match"):
        _provision(ssh_target, ssh_options, installed_agent, model)
    dest = Path(fetch_plan(model, installed_agent.agent_root).dest)
    assert not (dest / bad).exists()
    assert not list(dest.rglob("*.partial"))


def test_the_s3_mirror_serves_the_model_through_presigned_gets(
    ssh_target: SshTarget,
    ssh_options: SshOptions,
    installed_agent: AgentInstall,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    model = ModelSettings(
        name="tiny/model",
        revision=uuid.uuid4().hex[:8],
        source="s3",
        manifest=str(_manifest(tmp_path, TINY_MODEL)),
        cache_dir=f"{installed_agent.agent_root}/models-{uuid.uuid4().hex[:6]}",
    )
    for path, body in TINY_MODEL.items():
        store.put(f"models/tiny/model/{model.revision}/{path}", body, "application/octet-stream")
    _provision(ssh_target, ssh_options, installed_agent, model, store=store)
    dest = Path(fetch_plan(model, installed_agent.agent_root, store).dest)
    assert (dest / "config.json").read_bytes() == TINY_MODEL["config.json"]


def test_a_pod_without_gpus_is_reported_as_such(
    ssh_target: SshTarget, ssh_options: SshOptions, installed_agent: AgentInstall
) -> None:
    async def main(wanted: PodRequirements) -> PodNotReady:
        async with await connect(ssh_target, ssh_options) as session:
            with pytest.raises(PodNotReady) as raised:
                await check_pod(session, installed_agent, wanted)
            return raised.value

    rented = asyncio.run(main(PodRequirements("H200", 8)))
    assert "expected 8 x H200, no GPU: nvidia-smi not found" in rented.problems
    # the test user cannot reach a docker engine either, and says so
    assert any(problem.startswith("docker: ") for problem in rented.problems)
    cpu_only = asyncio.run(main(PodRequirements("H200", 0)))
    assert not any("GPU" in problem for problem in cpu_only.problems)


@pytest.mark.parametrize(
    ("names", "runtimes", "problem"),
    [
        (("NVIDIA H200",) * 8, ("nvidia", "runc"), None),
        (("NVIDIA H200",) * 7, ("nvidia", "runc"), "expected 8 x H200, found 7"),
        (("NVIDIA H100 80GB HBM3",) * 8, ("nvidia", "runc"), "expected 8 x H200, found 8"),
        (("NVIDIA H200",) * 8, ("runc",), "docker has no nvidia runtime"),
    ],
)
def test_readiness_verdicts(
    names: tuple[str, ...], runtimes: tuple[str, ...], problem: str | None
) -> None:
    facts = PodFacts(
        hardware=HardwareFacts(gpu_names=names), docker_version="27.0", runtimes=runtimes
    )
    problems = problems_with(facts, PodRequirements("H200", 8))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problems[0].startswith(problem)
