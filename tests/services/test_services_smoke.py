"""One smoke test per real service: each proves the service does the job the suite relies on."""

from __future__ import annotations

import subprocess
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from cacheon.testing.services import (
    LOOPBACK,
    DockerDaemon,
    Registry,
    SeaweedS3,
    Sshd,
    push_test_image,
)

pytestmark = pytest.mark.services


def test_registry_push_and_pull_by_digest(docker_daemon: DockerDaemon, registry: Registry) -> None:
    ref = push_test_image(docker_daemon, registry, "smoke/busybox", {"etc/smoke": b"1"})
    assert ref.startswith(f"{registry.host}/smoke/busybox@sha256:")
    client = docker_daemon.client()
    try:
        client.images.remove(f"{registry.host}/smoke/busybox:latest", force=True)
        image = client.images.pull(ref)
        assert ref in image.attrs["RepoDigests"]
        # detach then wait: run(remove=True) can lose the output of a container that exits at once
        container = client.containers.run(
            ref, ["cat", "/etc/smoke"], network_mode="none", detach=True
        )
        try:
            assert container.wait(timeout=60)["StatusCode"] == 0
            assert container.logs() == b"1"
        finally:
            container.remove(force=True)
    finally:
        client.close()


def test_sshd_runs_a_command_as_the_test_user(sshd: Sshd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line + "\n")
    result = subprocess.run(
        [
            "ssh", "-i", str(sshd.client_key), "-p", str(sshd.port),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            f"{sshd.user}@{LOOPBACK}", "id -un; echo $0",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [sshd.user, "sh"]


def test_sshd_refuses_an_unknown_key(sshd: Sshd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = subprocess.run(
        [
            "ssh", "-i", str(stranger), "-p", str(sshd.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}",
            f"{sshd.user}@{LOOPBACK}", "true",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_s3_accepts_a_presigned_put_and_refuses_a_tampered_one(s3: SeaweedS3) -> None:
    client = s3.client()
    client.create_bucket(Bucket="smoke")
    url = client.generate_presigned_url(
        "put_object", Params={"Bucket": "smoke", "Key": "round/report.json"}, ExpiresIn=300
    )
    assert httpx.put(url, content=b'{"ok": true}').status_code == 200
    assert (
        client.get_object(Bucket="smoke", Key="round/report.json")["Body"].read() == b'{"ok": true}'
    )

    parts = urlsplit(url)
    tampered = urlunsplit(parts._replace(path=parts.path.replace("report.json", "other.json")))
    assert httpx.put(tampered, content=b"x").status_code == 403

    query = dict(parse_qsl(parts.query))
    query["X-Amz-Signature"] = "0" * 64
    forged = urlunsplit(parts._replace(query=urlencode(query)))
    assert httpx.put(forged, content=b"x").status_code == 403

    unsigned = urlunsplit(parts._replace(query=""))
    assert httpx.put(unsigned, content=b"x").status_code == 403


def test_pod_sshd_is_root_with_the_test_docker(pod_sshd: Sshd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(pod_sshd.known_hosts_line + "\n")
    result = subprocess.run(
        [
            "ssh", "-i", str(pod_sshd.client_key), "-p", str(pod_sshd.port),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
            f"{pod_sshd.user}@{LOOPBACK}", "id -u; echo $DOCKER_HOST",
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    uid, docker_host = result.stdout.split()
    assert uid == "0"
    assert docker_host.startswith("unix:///tmp/cdk-")
