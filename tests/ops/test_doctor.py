"""`cacheon-validator doctor` against a devnet chain, SeaweedFS and the fake Targon and Lium
APIs: one deployment where everything is right, then that deployment with one thing broken at a
time, each reported on its own line with what to fix."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cacheon.chain.wallet import dev_wallet
from cacheon.cli.validator import main
from cacheon.config import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings
from cacheon.pods.keys import init_key
from cacheon.protocol import GateThresholds
from cacheon.testing.fake_lium import FakeLium
from cacheon.testing.fake_pods import LOOPBACK, LoopThread, PodHost
from cacheon.testing.fake_targon import FakeTargon
from cacheon.testing.services import SeaweedS3, Sshd
from cacheon.validator.doctor import Check, calibration, run_checks

NETUID = 14
Sections = dict[str, dict[str, Any]]


@dataclass
class Deployment:
    """A validator's settings over real local services, as sections of the config."""

    sections: Sections
    tmp: Path
    lium: FakeLium

    def settings(self, **changes: dict[str, Any]) -> Settings:
        merged = {
            name: {**values, **changes.get(name, {})} for name, values in self.sections.items()
        }
        return Settings(**merged)

    def to_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The settings as systemd's EnvironmentFile would give them."""
        for section, values in self.sections.items():
            for key, value in values.items():
                text = json.dumps(value) if isinstance(value, list) else str(value)
                name = f"{ENV_PREFIX}{section}{ENV_NESTED_DELIMITER}{key}".upper()
                monkeypatch.setenv(name, text)


@pytest.fixture
def fakes(sshd: Sshd) -> Iterator[tuple[FakeLium, FakeTargon]]:
    host = PodHost(
        host=LOOPBACK,
        port=sshd.port,
        user=sshd.user,
        authorized_keys=sshd.root / "authorized_keys",
        client_key=sshd.client_key,
        known_hosts_line=sshd.known_hosts_line,
    )
    thread = LoopThread()
    lium, targon = FakeLium(host), FakeTargon(host)
    thread.run(lium.start())
    thread.run(targon.start())
    try:
        yield lium, targon
    finally:
        thread.run(lium.stop())
        thread.run(targon.stop())
        thread.stop()


@pytest.fixture
def deployment(
    tmp_path: Path,
    s3: SeaweedS3,
    ops_bucket: str,
    fakes: tuple[FakeLium, FakeTargon],
    monkeypatch: pytest.MonkeyPatch,
) -> Deployment:
    """A devnet made with the CLI, our hotkey registered with a permit, a pod key and a manifest."""
    lium, targon = fakes
    wallets = tmp_path / "wallets"
    dev_wallet(wallets, "val", 2)
    network = f"sim://{tmp_path / 'chain.db'}"
    chain_flags = ["--subtensor.network", network, "--netuid", str(NETUID)]
    wallet_flags = ["--wallet.name", "val", "--wallet.hotkey", "hk", "--wallet.path", str(wallets)]
    assert main(["devnet", "init", "--block-time", "0", *chain_flags]) == 0
    assert main(["devnet", "register", "--validator", *chain_flags, *wallet_flags]) == 0
    assert main(["devnet", "advance", *chain_flags]) == 0
    key, _ = init_key(tmp_path / "state" / "pod_ed25519")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"files": {"config.json": {"sha256": "ab" * 32, "size": 680}}}, indent=1)
    )
    sections: Sections = {
        "chain": {"network": network, "netuid": NETUID, "call_timeout_s": 5.0},
        "wallet": {"name": "val", "hotkey": "hk", "path": str(wallets)},
        "validator": {"state_dir": str(tmp_path / "state")},
        "s3": {
            "endpoint_url": s3.endpoint_url,
            "bucket": ops_bucket,
            "access_key_id": s3.access_key,
            "secret_access_key": s3.secret_key,
            "path_style": True,
            "prefix": "doctor-test",
        },
        "pods": {
            "providers": ["targon", "lium"],
            "ssh_key_path": str(key.path),
            "api_timeout_s": 5.0,
            "lium_base_url": lium.base_url,
            "lium_api_key": lium.api_key,
            "lium_template_id": lium.template_id,
            "targon_base_url": targon.base_url,
            "targon_api_key": targon.api_key,
            "targon_ssh_gateway": targon.gateway,
        },
        "model": {"manifest": str(manifest)},
    }
    return Deployment(sections, tmp_path, lium)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_all_green(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.to_env(monkeypatch)
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "all checks passed"
    names = [line.split()[1] for line in lines[:-1]]
    assert names == [
        "wallet", "chain", "registration", "s3", "provider", "provider", "ssh", "model",
        "calibration",
    ]  # fmt: skip
    assert all(line.startswith("ok  ") for line in lines[:-1]), lines
    text = "\n".join(lines)
    assert "uid 1 on netuid 14, validator permit" in text
    assert "provider lium    2 offers of 8xH200, cheapest $16.80/h" in text
    assert "provider targon  1 offer of 8xH200, cheapest $25.20/h" in text
    assert "provisional thresholds: weights will be refused on finney" in text
    # a secret never reaches the output
    for secret in (deployment.sections["s3"]["secret_access_key"], deployment.lium.api_key):
        assert secret not in text


def test_a_failure_is_one_line_with_the_fix_and_exit_1(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.sections["pods"]["lium_api_key"] = "lium_wrong"
    deployment.to_env(monkeypatch)
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 of 9 checks failed"
    (failed,) = (line for line in lines if line.startswith("FAIL"))
    assert failed.split()[1:3] == ["provider", "lium"]
    assert "lium_wrong" not in "\n".join(lines)


def _run(settings: Settings) -> dict[str, Check]:
    return _by_name(asyncio.run(run_checks(settings)))


def _broken_only(checks: dict[str, Check], *names: str) -> None:
    assert sorted(name for name, c in checks.items() if not c.ok) == sorted(names), checks


def _register_without_permit(d: Deployment) -> Settings:
    dev_wallet(d.tmp / "wallets", "plain", 7)
    wallet = ["--wallet.name", "plain", "--wallet.hotkey", "hk", "--wallet.path"]
    network = d.sections["chain"]["network"]
    args = ["devnet", "register", "--subtensor.network", network, "--netuid", str(NETUID)]
    assert main([*args, *wallet, str(d.tmp / "wallets")]) == 0
    return d.settings(wallet={"name": "plain"})


def _unregistered(d: Deployment) -> Settings:
    dev_wallet(d.tmp / "wallets", "stranger", 9)
    return d.settings(wallet={"name": "stranger"})


def _loose_key(d: Deployment) -> Settings:
    Path(d.sections["pods"]["ssh_key_path"]).chmod(0o644)
    return d.settings()


def _bad_manifest(d: Deployment) -> Settings:
    Path(d.sections["model"]["manifest"]).write_text('{"files": ["config.json"]}')
    return d.settings()


Breakage = Callable[[Deployment], Settings]
BROKEN: dict[str, tuple[Breakage, tuple[str, ...], str]] = {
    "no-hotkey": (
        lambda d: d.settings(wallet={"name": "nobody"}),
        ("wallet", "registration"),
        "no hotkey file for nobody/hk",
    ),
    "unregistered": (_unregistered, ("registration",), "is not registered on netuid 14"),
    "no-permit": (_register_without_permit, ("registration",), "has no validator permit"),
    "chain-down": (
        lambda d: d.settings(chain={"network": f"sim://{d.tmp / 'gone.db'}"}),
        ("chain", "registration"),
        "cannot open the devnet",
    ),
    "fallback-down": (
        lambda d: d.settings(chain={"fallback_endpoints": [f"sim://{d.tmp / 'gone.db'}"]}),
        ("chain fallback 1",),
        "fix chain.network / chain.chain_endpoint / chain.fallback_endpoints",
    ),
    "s3-secret": (
        lambda d: d.settings(s3={"secret_access_key": "wrong"}),
        ("s3",),
        "put: S3 put doctor-test/doctor/probe.txt: SignatureDoesNotMatch",
    ),
    "s3-unset": (
        lambda d: d.settings(s3={"bucket": None}),
        ("s3",),
        "S3 is not configured",
    ),
    "s3-down": (
        lambda d: d.settings(s3={"endpoint_url": "http://127.0.0.1:9"}),
        ("s3",),
        "Could not connect to the endpoint URL",
    ),
    "lium-key": (
        lambda d: d.settings(pods={"lium_api_key": "lium_wrong"}),
        ("provider lium",),
        "API key rejected (401: INVALID_API_KEY: Invalid API key); check the key: "
        "CACHEON_PODS__LIUM_API_KEY",
    ),
    "targon-unset": (
        lambda d: d.settings(pods={"targon_api_key": None}),
        ("providers",),
        "targon needs an API key: set CACHEON_PODS__TARGON_API_KEY",
    ),
    "no-offers": (
        lambda d: d.settings(pods={"max_price_per_hour": 5.0}),
        ("provider lium", "provider targon"),
        "raise pods.max_price_per_hour",
    ),
    "no-ssh-key": (
        lambda d: d.settings(pods={"ssh_key_path": str(d.tmp / "none")}),
        ("ssh key",),
        "cacheon-validator keys init",
    ),
    "ssh-key-mode": (_loose_key, ("ssh key",), "chmod 600"),
    "no-manifest": (
        lambda d: d.settings(model={"manifest": None}),
        ("model manifest",),
        "model.manifest is not set",
    ),
    "bad-manifest": (_bad_manifest, ("model manifest",), "expected"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_check_broken(deployment: Deployment, case: str) -> None:
    breakage, failing, says = BROKEN[case]
    settings = breakage(deployment)
    checks = _run(settings)
    _broken_only(checks, *failing)
    assert says in checks[failing[0]].detail


def test_provisional_thresholds_fail_only_on_finney(deployment: Deployment) -> None:
    provisional = GateThresholds()
    on_finney = calibration(deployment.settings(chain={"network": "finney"}), provisional)
    assert not on_finney.ok
    assert on_finney.detail.startswith("provisional thresholds: weights will be refused on finney")
    assert "cacheon-agent calibrate" in on_finney.detail
    calibrated = provisional.model_copy(update={"provisional": False, "version": 3})
    assert calibration(deployment.settings(chain={"network": "finney"}), calibrated).ok
