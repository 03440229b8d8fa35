"""The systemd unit, checked by systemd itself in a temporary root, and the Docker image's layout
checked against it (one layout, two ways to run it)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "cacheon-validator.service"
UNIT_NAME = UNIT.name
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
EXPOSURE_THRESHOLD = 20
"""`systemd-analyze security` scores 0 (locked down) to 100; 20 is its "OK" band."""


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (units repeat keys, so configparser cannot)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    pairs = (v.split("=", 1) for v in unit["Service"]["Environment"])
    return {key: value for key, value in pairs}


def dockerfile_env(text: str) -> dict[str, str]:
    joined = text.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root holding systemd's own units, ours, and a stand-in for the installed executable."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT_NAME)
    executable = Path(parse_unit(UNIT.read_text())["Service"]["ExecStart"][0].split()[0])
    stub = root / executable.relative_to("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return root


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_verifies_the_unit_without_a_warning(root: Path) -> None:
    proc = _analyze("verify", "--man=no", f"--root={root}", f"/etc/systemd/system/{UNIT_NAME}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_a_broken_unit_is_caught(root: Path) -> None:
    """The check above can fail: a misspelt key and a missing executable are both reported."""
    installed = root / "etc/systemd/system" / UNIT_NAME
    installed.write_text(installed.read_text().replace("LimitNOFILE=", "LimitNOFILES="))
    proc = _analyze("verify", "--man=no", f"--root={root}", f"/etc/systemd/system/{UNIT_NAME}")
    assert "Unknown key 'LimitNOFILES'" in proc.stderr
    shutil.rmtree(root / "opt")
    proc = _analyze("verify", "--man=no", f"--root={root}", f"/etc/systemd/system/{UNIT_NAME}")
    assert proc.returncode != 0
    assert "is not executable" in proc.stderr


def test_hardening_scores_ok(root: Path) -> None:
    proc = _analyze(
        "security",
        "--offline=yes",
        f"--threshold={EXPOSURE_THRESHOLD}",
        f"--root={root}",
        UNIT_NAME,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_the_unit_runs_as_its_own_user_with_a_read_only_wallet() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    env = environment(unit)
    assert service["User"] == ["cacheon"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # a bad config: restarting cannot help
    assert int(unit["Unit"]["StartLimitBurst"][0]) > 1
    assert int(service["LimitNOFILE"][0]) >= 65536
    assert service["EnvironmentFile"] == ["/etc/cacheon/cacheon.env"]
    assert service["ReadOnlyPaths"] == [env["CACHEON_WALLET__PATH"]]
    assert service["ReadWritePaths"] == [env["CACHEON_VALIDATOR__STATE_DIR"]]
    assert env["HOME"] == env["CACHEON_VALIDATOR__STATE_DIR"]
    assert env["CACHEON_PODS__SSH_KEY_PATH"].startswith(env["CACHEON_VALIDATOR__STATE_DIR"] + "/")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == [value], key
    assert not any("SECRET" in key or "API_KEY" in key for key in env), "secrets go in the file"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_image_has_the_units_layout() -> None:
    unit = parse_unit(UNIT.read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    image_env = dockerfile_env(dockerfile)
    for key, value in environment(unit).items():
        assert image_env.get(key) == value, key
    assert "USER cacheon" in dockerfile.splitlines()
    command = unit["Service"]["ExecStart"][0].split()
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
    assert [*json.loads(entrypoint[len("ENTRYPOINT") :]), *json.loads(cmd[len("CMD") :])] == command
