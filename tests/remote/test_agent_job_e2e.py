"""An agent job end to end on the real sshd and SeaweedFS: bootstrap, detached start with the
key on stdin, progress followed across a cut connection, presigned upload, verified report."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

from cacheon.protocol import JobKind, Phase, ProgressEvent
from cacheon.remote.bootstrap import AgentInstall
from cacheon.remote.jobs import drive_job
from cacheon.remote.ssh import SshOptions, connect
from cacheon.sshtarget import SshTarget
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore
from cacheon.testing.services import LOOPBACK, SeaweedS3, Sshd
from cacheon.validator.handoff import VerifiedReport, fetch_report, issue_round_key
from tests.remote.remote_toys import CutProxy, probe_spec


def test_probe_job_survives_a_cut_connection_and_its_report_verifies(
    *,
    sshd: Sshd,
    s3: SeaweedS3,
    ssh_options: SshOptions,
    installed_agent: AgentInstall,
    store: ObjectStore,
    db: Database,
) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    key = issue_round_key(db, round_id)
    spec = probe_spec(round_id, store.upload_slots(round_id, traces=2), seconds=4)
    seen: list[ProgressEvent] = []
    leaks: list[str] = []

    async def main() -> Any:
        async with CutProxy(sshd.port) as proxy:
            target = SshTarget(LOOPBACK, proxy.port, sshd.user, sshd.host_public_key)

            def on_event(event: ProgressEvent) -> None:
                seen.append(event)
                if event.done == 2:  # mid-run: drop every connection to the pod
                    leaks.extend(_agent_secrets_exposed(installed_agent, round_id, s3, key))
                    proxy.cut()

            outcome = await drive_job(
                lambda: connect(target, ssh_options),
                installed_agent,
                spec,
                key,
                lambda: store.upload_slots(round_id, traces=2),
                on_event=on_event,
            )
            return outcome, proxy.connections

    outcome, connections = asyncio.run(main())
    assert outcome.reattached == 1
    assert connections >= 2
    assert outcome.status is not None
    assert (outcome.status.exit_code, outcome.status.report_uploaded) == (0, True)
    phases = [event.phase for event in seen]
    assert phases[0] is Phase.PREPARE
    assert phases[-1] is Phase.DONE
    # every line of the progress file seen exactly once, across the reattach
    lines = (Path(outcome.job.job_dir) / "progress.jsonl").read_bytes().splitlines()
    assert [ProgressEvent.model_validate_json(line) for line in lines] == seen
    assert leaks == []

    verified = fetch_report(store, db, round_id)
    assert isinstance(verified, VerifiedReport)
    assert verified.report.kind is JobKind.PROBE
    assert verified.report.round_id == round_id
    assert verified.report.hardware.gpu_names == ()  # this machine has no GPU


def _agent_secrets_exposed(
    install: AgentInstall, round_id: str, s3: SeaweedS3, key: bytes
) -> list[str]:
    """Where the running agent could see an S3 credential or the HMAC key: its environment,
    command line and every file of its job directory hold presigned URLs only."""
    job_dir = Path(install.agent_root) / "jobs" / round_id
    pid = int((job_dir / "pid").read_text())
    exposed = []
    places = {
        "environ": Path(f"/proc/{pid}/environ").read_bytes(),
        "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes(),
    }
    places |= {path.name: path.read_bytes() for path in job_dir.iterdir() if path.is_file()}
    for place, content in places.items():
        for name, secret in (("S3 secret", s3.secret_key), ("HMAC key", key.hex())):
            if secret.encode() in content:
                exposed.append(f"{name} in {place}")
        if b"AWS_" in content and place == "environ":
            exposed.append(f"AWS variables in {place}")
    urls = [slot["url"] for slot in json.loads(places["job.json"])["uploads"]]
    assert urls
    assert all("X-Amz-Signature=" in url for url in urls)
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") is None
    return exposed
