"""`cacheon-agent run` and `refresh_urls` as the validator uses them: the key on stdin only, a
job runs once, and how it ended is readable later, even when it was killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cacheon.protocol import JobStatus, UploadSlot
from cacheon.remote.bootstrap import AgentInstall
from cacheon.remote.jobs import drive_job
from cacheon.remote.ssh import SshOptions, connect
from cacheon.sshtarget import SshTarget
from tests.remote.remote_toys import probe_spec

AGENT = [sys.executable, "-m", "cacheon.cli.agent"]


def _agent(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def _job(tmp_path: Path, slots: tuple[UploadSlot, ...] = ()) -> Path:
    job = tmp_path / "job.json"
    job.write_text(probe_spec("r-local", slots, seconds=0).model_dump_json())
    return job


def _wait_status(job_dir: Path) -> JobStatus:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (job_dir / "status.json").exists():
            return JobStatus.model_validate_json((job_dir / "status.json").read_text())
        time.sleep(0.1)
    raise AssertionError(f"no status.json; log: {(job_dir / 'agent.log').read_text()}")


def test_the_key_must_come_on_stdin(tmp_path: Path) -> None:
    job = _job(tmp_path)
    for stdin, message in (("", "got 0"), ("zz\n", "not hex"), ("ab\n", "must be 32 bytes")):
        result = _agent(["run", "--job", str(job)], stdin)
        assert result.returncode == 2
        assert message in result.stderr
    assert not (tmp_path / "pid").exists()


def test_a_job_without_a_report_slot_ends_with_a_readable_failure(tmp_path: Path) -> None:
    job = _job(tmp_path)
    result = _agent(["run", "--job", str(job)], "11" * 32 + "\n")
    assert result.returncode == 0, result.stderr
    pid = json.loads(result.stdout)["pid"]
    assert pid == int((tmp_path / "pid").read_text())
    status = _wait_status(tmp_path)
    assert (status.exit_code, status.report_uploaded) == (3, False)
    assert "report.json" in (status.error or "")
    again = _agent(["run", "--job", str(job)], "11" * 32 + "\n")
    assert again.returncode == 2
    assert "a job runs once" in again.stderr


def test_refresh_urls_accepts_only_the_jobs_slots(tmp_path: Path) -> None:
    slot = UploadSlot(name="report.json", url="http://127.0.0.1:9/x", expires_at=time.time() + 60)
    job = _job(tmp_path, (slot,))
    fresh = slot.model_copy(update={"url": "http://127.0.0.1:9/y"})
    ok = _agent(["refresh_urls", "--job", str(job)], f"[{fresh.model_dump_json()}]")
    assert ok.returncode == 0, ok.stderr
    assert "/y" in (tmp_path / "urls.json").read_text()
    stray = slot.model_copy(update={"name": "other.json"})
    refused = _agent(["refresh_urls", "--job", str(job)], f"[{stray.model_dump_json()}]")
    assert refused.returncode == 2
    assert "other.json" in refused.stderr


def test_a_killed_agent_is_reported_with_its_log(
    ssh_target: SshTarget, ssh_options: SshOptions, installed_agent: AgentInstall
) -> None:
    round_id = f"r-{uuid.uuid4().hex[:8]}"
    spec = probe_spec(round_id, (), seconds=30)

    def on_event(_event: object) -> None:
        pid = Path(installed_agent.agent_root, "jobs", round_id, "pid").read_text()
        os.kill(int(pid), signal.SIGKILL)

    async def main() -> object:
        return await drive_job(
            lambda: connect(ssh_target, ssh_options),
            installed_agent,
            spec,
            b"\x22" * 32,
            lambda: (),
            on_event=on_event,
        )

    started = time.monotonic()
    outcome = asyncio.run(main())
    assert time.monotonic() - started < 20
    assert outcome.status is None  # type: ignore[attr-defined]
    assert isinstance(outcome.log_tail, str)  # type: ignore[attr-defined]
