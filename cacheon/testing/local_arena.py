"""A whole subnet on one machine, for the end-to-end tests and `make demo`.

It wires the real parts together on loopback: the simulated chain with an owner, a validator
and miners; toy contestant images in the test registry; the pinned model's files in an S3
mirror; a fake Lium whose only pod is this machine's sshd (root, with the test dockerd); and
the validator's settings pointing at all of it. Miners commit through the real chain client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import ImageRef, Rejection, commitment_fields, parse_reference
from cacheon.chain.devnet import Devnet, SubnetParams
from cacheon.chain.wallet import (
    DEV_HOTKEY,
    Wallet,
    coldkey_address,
    dev_wallet,
    hotkey_address,
)
from cacheon.config import ChainSettings, Settings
from cacheon.pods.keys import init_key
from cacheon.protocol import Hotkey
from cacheon.testing.fake_lium import FakeLium, executor
from cacheon.testing.fake_pods import LOOPBACK, LoopThread, PodHost
from cacheon.testing.services import POD_SSH_USER, DockerDaemon, Registry, SeaweedS3, Sshd
from cacheon.testing.toy_image import push_toy_image
from cacheon.testing.toy_lm import EOS
from cacheon.testing.toy_server import Fault, Knobs, Speed

NETUID = 14
MODEL = "cacheon/toy-model"
REVISION = "r1"
MODEL_FILES = {
    "config.json": json.dumps({"model_type": "toy", "eos_token_id": EOS}).encode(),
    "tokenizer_config.json": b"{}\n",
}


@dataclass(frozen=True)
class Participant:
    name: str
    wallet: Wallet
    uid: int

    @property
    def hotkey(self) -> Hotkey:
        return hotkey_address(self.wallet)


@dataclass(frozen=True)
class ToyMiner:
    """A miner and the image it commits (None: it commits `commitment` text as is)."""

    name: str
    knobs: Knobs | None = None
    copy_of: str | None = None
    commitment: str | None = None


TOY_MINERS: tuple[ToyMiner, ...] = (
    # coarse speeds (per token: baseline 40 ms) so the ranking holds on two busy cores
    ToyMiner("fast", Knobs(speed=Speed(ttft_s=0.04, token_s=0.02))),
    ToyMiner("second", Knobs(speed=Speed(ttft_s=0.056, token_s=0.028))),
    ToyMiner("slow", Knobs(speed=Speed(ttft_s=0.16, token_s=0.08))),
    ToyMiner("cheat", Knobs(speed=Speed(ttft_s=0.02, token_s=0.01), fault=Fault.WRONG_MODEL)),
    ToyMiner("malformed", commitment="cacheon/1 docker.io/someone/server:latest"),
    ToyMiner("copycat", copy_of="fast"),
    ToyMiner("late", Knobs(speed=Speed(ttft_s=0.048, token_s=0.024))),
)
BASELINE_KNOBS = Knobs(speed=Speed(ttft_s=0.08, token_s=0.04))


@dataclass(frozen=True)
class Services:
    docker: DockerDaemon
    registry: Registry
    pod: Sshd
    s3: SeaweedS3
    loop: LoopThread
    more_pods: tuple[Sshd, ...] = ()
    """Further stand-in pods (their own sshd, the same dockerd), for rounds on several pods."""


def start_services(stack: ExitStack, pods: int = 1) -> Services:
    """Every service a local arena needs, each stopped when `stack` closes."""
    docker = DockerDaemon.start()
    stack.callback(docker.stop)
    registry = Registry.start()
    stack.callback(registry.stop)
    pod = Sshd.start(POD_SSH_USER, as_root=True, environment={"DOCKER_HOST": docker.host})
    stack.callback(pod.stop)
    s3 = SeaweedS3.start()
    stack.callback(s3.stop)
    loop = LoopThread()
    stack.callback(loop.stop)
    return Services(docker, registry, pod, s3, loop, start_more_pods(stack, docker, pods - 1))


def start_more_pods(stack: ExitStack, docker: DockerDaemon, count: int) -> tuple[Sshd, ...]:
    """`count` more stand-in pods: each its own sshd as root with the same dockerd."""
    more = []
    for _ in range(count):
        sshd = Sshd.start(POD_SSH_USER, as_root=True, environment={"DOCKER_HOST": docker.host})
        stack.callback(sshd.stop)
        more.append(sshd)
    return tuple(more)


@dataclass
class LocalArena:
    root: Path
    services: Services
    devnet: Devnet
    lium: FakeLium
    owner: Participant
    validator: Participant
    participants: dict[str, Participant]
    images: dict[str, str]
    baseline_image: str
    bucket: str
    """Its own bucket: the S3 server may be shared with other arenas (a test session)."""
    miners: tuple[ToyMiner, ...] = TOY_MINERS
    pods: int = 1
    """Pods the fake Lium can rent at once, and rounds the validator runs at once; every pod is
    the test sshd and dockerd (as on a static host, its agents take turns preparing it)."""

    @classmethod
    def create(
        cls,
        root: Path,
        services: Services,
        *,
        miners: tuple[ToyMiner, ...] = TOY_MINERS,
        block_time_s: float = 1.0,
        pods: int = 1,
    ) -> LocalArena:
        devnet = Devnet.create(root / "chain.db", block_time_s=block_time_s)
        wallets = root / "wallets"
        owner = _wallet(wallets, "owner", 1)
        devnet.add_subnet(
            NETUID,
            SubnetParams(
                owner_hotkey=owner.hotkey,
                owner_coldkey=coldkey_address(owner.wallet),
                weights_rate_limit=2,
            ),
        )
        owner = _register(devnet, owner)
        validator = _register(devnet, _wallet(wallets, "validator", 2), permit=True)
        participants = {
            miner.name: _register(devnet, _wallet(wallets, miner.name, 10 + index))
            for index, miner in enumerate(miners)
        }
        docker, registry = services.docker, services.registry
        baseline = push_toy_image(docker, registry, "cacheon/baseline", BASELINE_KNOBS)
        images = {}
        for miner in miners:
            if miner.knobs is not None:
                # a layer of its own, as any real server image has over its base
                images[miner.name] = push_toy_image(
                    docker,
                    registry,
                    f"miners/{miner.name}",
                    miner.knobs,
                    extra_files={"/etc/cacheon-toy.json": miner.knobs.to_json().encode()},
                )
        for miner in miners:
            if miner.copy_of is not None:
                images[miner.name] = _copy(services, images[miner.copy_of], miner.name)
        bucket = f"cacheon-{secrets.token_hex(4)}"
        _mirror_model(services.s3, bucket, root)
        init_key(root / "keys" / "pod_ed25519")
        sshds = (services.pod, *services.more_pods)
        if len(sshds) < pods:
            raise ValueError(
                f"{pods} pods need {pods} stand-in sshds, the services have {len(sshds)}"
            )
        hosts = [_pod_host(sshd) for sshd in sshds[:pods]]
        executors = [executor("CPU", 0, 1.0) for _ in hosts]
        lium = FakeLium(
            hosts[0],
            executor_hosts={e["id"]: host for e, host in zip(executors, hosts, strict=True)},
            executors=executors,
        )
        services.loop.run(lium.start())
        return cls(
            root,
            services,
            devnet,
            lium,
            owner,
            validator,
            participants,
            images,
            baseline,
            bucket,
            miners,
            pods,
        )

    def close(self) -> None:
        self.services.loop.run(self.lium.stop())
        self.devnet.close()

    # --- miners ---------------------------------------------------------------------------

    def name_of(self, hotkey: str) -> str:
        return next(name for name, p in self.participants.items() if p.hotkey == hotkey)

    def commit(self, *names: str) -> None:
        """Each miner commits its image (or its raw text), in order, one block apart."""
        for name in names:
            miner = next(m for m in self.miners if m.name == name)
            text = miner.commitment
            fields: tuple[bytes, ...]
            if text is None:
                image = parse_reference(self.images[name])
                built = commitment_fields(image) if isinstance(image, ImageRef) else image
                if isinstance(built, Rejection):
                    raise ValueError(f"{name}: {built.detail}")
                fields = built
            else:
                fields = (text.encode(),)
            asyncio.run(self._commit(self.participants[name].wallet, fields))
            self.devnet.advance(1)

    async def _commit(self, wallet: Wallet, fields: tuple[bytes, ...]) -> None:
        async with ChainClient(self.chain_settings()) as client:
            await client.commit(fields, wallet, NETUID)

    # --- the validator's settings ---------------------------------------------------------

    def chain_settings(self) -> ChainSettings:
        return ChainSettings(network=f"sim://{self.devnet.path}", netuid=NETUID, call_timeout_s=10)

    def config(self, **overrides: dict[str, Any]) -> dict[str, Any]:
        """The validator's settings as TOML tables; secrets are in `secrets_env()`."""
        s3 = self.services.s3
        tables: dict[str, dict[str, Any]] = {
            "chain": {
                "network": f"sim://{self.devnet.path}",
                "netuid": NETUID,
                "call_timeout_s": 10.0,
            },
            "wallet": {
                "name": "validator",
                "hotkey": DEV_HOTKEY,
                "path": str(self.root / "wallets"),
            },
            "validator": {
                "state_dir": str(self.root / "state"),
                "poll_interval_s": 0.5,
                "weights_interval_blocks": 100000,
                "watchdog_s": 120.0,
            },
            "arena": {"min_blocks_between_evaluations": 0, "max_challengers_per_round": 8},
            "model": {
                "name": MODEL,
                "revision": REVISION,
                "max_model_len": 2048,
                "gpu_type": "CPU",
                "gpu_count": 0,
                "baseline_image": self.baseline_image,
                "source": "s3",
                "manifest": str(self.root / "model-manifest.json"),
                "s3_prefix": "models",
            },
            "pods": {
                "providers": ["lium"],
                "lium_base_url": self.lium.base_url,
                "lium_template_id": self.lium.template_id,
                "ssh_key_path": str(self.root / "keys" / "pod_ed25519"),
                "agent_root": str(self.root / "pod-agent"),
                "max_price_per_hour": 10.0,
                "ready_timeout_s": 30.0,
                "poll_interval_s": 0.1,
                "pod_idle_release_s": 0.0,
                "max_parallel": self.pods,
            },
            "s3": {
                "endpoint_url": s3.endpoint_url,
                "bucket": self.bucket,
                "access_key_id": s3.access_key,
                "path_style": True,
            },
            "workload": {
                "concurrencies": [1, 2],
                "prompts_per_block": 2,
                "blocks_per_level": 1,
                "level_prompts": [],
                "level_blocks": [],
                "warmup_requests": 1,
                "max_tokens": 12,
                "request_timeout_s": 20.0,
                "startup_deadline_s": 60.0,
                "round_deadline_s": 900.0,
                "expected_round_hours": 0.1,
            },
            "log": {"level": "info", "format": "json"},
        }
        for table, values in overrides.items():
            tables.setdefault(table, {}).update(values)
        return tables

    def secrets_env(self) -> dict[str, str]:
        return {
            "CACHEON_S3__SECRET_ACCESS_KEY": self.services.s3.secret_key,
            "CACHEON_PODS__LIUM_API_KEY": self.lium.api_key,
        }

    def settings(self, **overrides: dict[str, Any]) -> Settings:
        tables = self.config(**overrides)
        tables["s3"]["secret_access_key"] = self.services.s3.secret_key
        tables["pods"]["lium_api_key"] = self.lium.api_key
        return Settings(**tables)

    def write_config(self, path: Path, **overrides: dict[str, Any]) -> Path:
        path.write_text(to_toml(self.config(**overrides)))
        return path


def _pod_host(sshd: Sshd) -> PodHost:
    return PodHost(
        host=LOOPBACK,
        port=sshd.port,
        user=sshd.user,
        authorized_keys=sshd.root / "authorized_keys",
        client_key=sshd.client_key,
        known_hosts_line=sshd.known_hosts_line,
    )


def _wallet(path: Path, name: str, seed: int) -> Participant:
    return Participant(name, dev_wallet(path, name, seed), -1)


def _register(devnet: Devnet, who: Participant, *, permit: bool = False) -> Participant:
    coldkey = coldkey_address(who.wallet)
    uid = devnet.register(NETUID, who.hotkey, coldkey, validator_permit=permit)
    return Participant(who.name, who.wallet, uid)


def _copy(services: Services, source: str, name: str) -> str:
    """The same image pushed under another repository: the same digest, another holder."""
    client = services.docker.client()
    try:
        image = client.images.pull(source)
        target = f"{services.registry.host}/miners/{name}"
        image.tag(target, "latest")
        digest = None
        for event in client.api.push(target, tag="latest", stream=True, decode=True):
            digest = event.get("aux", {}).get("Digest", digest)
        return f"{target}@{digest}"
    finally:
        client.close()


def _mirror_model(s3: SeaweedS3, bucket: str, root: Path) -> None:
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    files = {}
    for path, data in MODEL_FILES.items():
        client.put_object(Bucket=bucket, Key=f"models/{MODEL}/{REVISION}/{path}", Body=data)
        files[path] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (root / "model-manifest.json").write_text(json.dumps({"files": files}, indent=1))


def to_toml(tables: dict[str, dict[str, Any]]) -> str:
    """Flat TOML tables of strings, numbers, booleans and lists of them (all our config has)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    return "\n".join(
        f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())
        for name, table in tables.items()
    )
