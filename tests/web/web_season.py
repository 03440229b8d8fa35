"""A validator with a season behind it, built through the real daemon parts on a devnet.

Miners commit on the devnet through the SDK; the daemon's poller reads and pre-screens them (a
copy and a malformed commitment are failed there); three rounds are planned with `plan_round`,
given agent reports and scored by the daemon's own `Scoring` (the arena decides: a crown, a
correctness failure, a void round, a challenger not faster, one still pending); weights are set
on the devnet by the daemon's weights step. What the status API then shows is what a real
validator's state would hold, not rows written by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from cacheon.arena import RoundResult
from cacheon.chain.client import ChainClient
from cacheon.chain.commitments import ImageRef, commitment_fields, split_fields
from cacheon.chain.devnet import Devnet, SubnetParams
from cacheon.chain.registry import ImageManifest
from cacheon.chain.wallet import Wallet, coldkey_address, dev_wallet, hotkey_address, open_wallet
from cacheon.config import (
    ArenaSettings,
    ChainSettings,
    PodSettings,
    S3Settings,
    Settings,
    ValidatorSettings,
    WalletSettings,
    WebSettings,
)
from cacheon.pods.keys import init_key
from cacheon.pods.leases import LeasePolicy, PodLeases
from cacheon.protocol import (
    ContestantResult,
    Digest,
    Launch,
    LevelMeasurement,
    Outcome,
    ReasonCode,
    Role,
    RoundReport,
)
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore
from cacheon.validator.daemon import Daemon, Parts
from cacheon.validator.rounds import plan_round
from cacheon.validator.state import SubmissionRecord

NETUID = 14
SECRET = "web-test-validator-secret-0123456789"
S3_SECRET = "s3-test-secret-value-9876"
BASELINE = "docker.io/vllm/vllm-openai@sha256:" + "b" * 64
MINERS = ("fast", "steady", "sloppy", "close", "rookie", "copycat", "typo")
"""fast leads; steady is not faster; sloppy fails the gate; close and rookie are too close to
call (the better one is runner-up, the other pending); copycat commits fast's digest; typo
commits a tag instead of a digest."""
SPEED = {"B": 10.0, "fast": 13.0, "steady": 11.2, "sloppy": 12.5, "close": 13.05, "rookie": 12.9}


def digest(tag: str) -> Digest:
    return Digest("sha256:" + tag * 64)


IMAGES = {
    "fast": ImageRef("docker.io", "fastminer/server", digest("1")),
    "steady": ImageRef("docker.io", "steady/server", digest("2")),
    "sloppy": ImageRef("docker.io", "sloppy/server", digest("3")),
    "close": ImageRef("ghcr.io", "close/server", digest("4")),
    "rookie": ImageRef("docker.io", "rookie/inference", digest("5")),
    "copycat": ImageRef("docker.io", "copycat/server", digest("1")),
}


async def fake_manifest(image: ImageRef) -> ImageManifest:
    """The registry's answer: the baseline's layers, plus one layer of each miner's own."""
    base = ("sha256:base-0", "sha256:base-1")
    own = () if image.digest == BASELINE.rpartition("@")[2] else (f"sha256:own-{image.digest}",)
    return ImageManifest(
        digest=image.digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        platform_digest=image.digest,
        compressed_size=20_000_000_000,
        layers=base + own,
        diff_ids=base + own,
    )


@dataclass
class Season:
    daemon: Daemon
    devnet: Devnet
    hotkeys: Mapping[str, str]
    """Miner name -> its hotkey ss58."""
    validator_wallet: Wallet
    settings: Settings


def make_settings(tmp: Path, devnet: Path, wallets: Path, **web: object) -> Settings:
    return Settings(
        chain=ChainSettings(network=f"sim://{devnet}", netuid=NETUID, call_timeout_s=5),
        wallet=WalletSettings(name="validator", hotkey="hk", path=str(wallets)),
        validator=ValidatorSettings(
            state_dir=str(tmp / "state"), poll_interval_s=0.2, secret=SecretStr(SECRET)
        ),
        # the budget (50) is below one round's projected cost (2 h x 40): no round starts
        pods=PodSettings(
            providers=["static"], daily_budget_usd=50, ssh_key_path=str(tmp / "pod_key")
        ),
        s3=S3Settings(
            bucket="web-test",
            access_key_id="AKIAWEBTEST",
            secret_access_key=SecretStr(S3_SECRET),
        ),
        model=Settings().model.model_copy(update={"baseline_image": BASELINE}),
        # the noise assumed before any baseline pair: a quiet pod, so +30% crowns in one launch
        arena=ArenaSettings(sigma_prior=0.02),
        web=WebSettings(**web),  # type: ignore[arg-type]
    )


def build_daemon(settings: Settings, store: ObjectStore | None = None) -> Daemon:
    db = Database.open(Path(settings.validator.state_dir) / "state.db")
    key, _ = init_key(Path(settings.pods.ssh_key_path))
    leases = PodLeases(db, [], key, LeasePolicy.from_settings(settings))
    parts = Parts(
        db=db,
        chain=ChainClient(settings.chain),
        wallet=open_wallet(settings.wallet),
        leases=leases,
        store=store or ObjectStore(None, bucket="unused", prefix="cacheon", url_expiry_s=3600),
        fetch_manifest=fake_manifest,
    )
    return Daemon(settings, parts)


async def build_season(tmp: Path, store: ObjectStore | None = None, **web: object) -> Season:
    wallets = tmp / "wallets"
    owner = dev_wallet(wallets, "owner", 1)
    validator = dev_wallet(wallets, "validator", 2)
    miners = {name: dev_wallet(wallets, name, 10 + i) for i, name in enumerate(MINERS)}
    devnet = Devnet.create(tmp / "chain.db", block_time_s=0)
    owner_hotkey = hotkey_address(owner)
    devnet.add_subnet(NETUID, SubnetParams(owner_hotkey=owner_hotkey, owner_coldkey=owner_hotkey))
    devnet.register(NETUID, owner_hotkey, coldkey_address(owner))
    devnet.register(
        NETUID, hotkey_address(validator), coldkey_address(validator),
        validator_permit=True,
    )  # fmt: skip
    for w in miners.values():
        devnet.register(NETUID, hotkey_address(w), coldkey_address(w))
    devnet.advance(1)
    settings = make_settings(tmp, devnet.path, wallets, **web)
    daemon = build_daemon(settings, store)
    hotkeys = {name: hotkey_address(w) for name, w in miners.items()}
    chain = daemon.parts.chain

    for name in ("fast", "steady", "sloppy", "copycat"):
        fields = commitment_fields(IMAGES[name])
        assert isinstance(fields, tuple)
        await chain.commit(fields, miners[name], NETUID)
        devnet.advance(1)
    typo = split_fields("cacheon/1 docker.io/typo/server:latest")
    assert isinstance(typo, tuple)
    await chain.commit(typo, miners["typo"], NETUID)
    devnet.advance(1)

    # round 1, no leader yet: fast is crowned against the baseline, steady stays pending,
    # sloppy fails the correctness gate
    await daemon.poller.poll(None, frozenset())
    await play_round(daemon, "r1", ["fast", "steady", "sloppy"], hotkeys, failed={"sloppy"})

    for name in ("close", "rookie"):
        fields = commitment_fields(IMAGES[name])
        assert isinstance(fields, tuple)
        await chain.commit(fields, miners[name], NETUID)
        devnet.advance(1)
    _, standings = daemon.state.standings()
    holders = frozenset((h.hotkey, h.digest) for h in (standings.leader,) if h is not None)
    await daemon.poller.poll(digest("1"), holders)
    # round 2: the pod is lost before anything was measured (nobody's fault)
    await play_round(daemon, "r2", ["steady", "close"], hotkeys, lost=True)
    # round 3, fast bookended as leader: steady is not faster, close and rookie too close to call
    await play_round(daemon, "r3", ["steady", "close", "rookie"], hotkeys, leader="fast")

    state = await chain.read_state()
    daemon.watchdog.saw(state.block)
    await daemon.weights.run(state)
    await chain.close()  # the tests run the daemon in an event loop of their own
    return Season(daemon, devnet, hotkeys, validator, settings)


async def play_round(
    daemon: Daemon,
    round_id: str,
    names: list[str],
    hotkeys: Mapping[str, str],
    *,
    failed: frozenset[str] | set[str] = frozenset(),
    lost: bool = False,
    leader: str | None = None,
) -> None:
    chain = await daemon.parts.chain.read_state()
    records = {r.submission.hotkey: r for r in daemon.state.submissions(current_only=True)}
    challengers: list[SubmissionRecord] = [records[hotkeys[n]] for n in names]
    _, standings = daemon.state.standings()
    plan = plan_round(
        round_id=round_id,
        block=chain.block,
        block_hash=chain.block_hash,
        secret=SECRET.encode(),
        settings=daemon.settings,
        workload=daemon.workload,
        gate=daemon.gate,
        leader=standings.leader if leader else None,
        leader_image=IMAGES[leader].canonical if leader else None,
        challengers=challengers,
    )
    daemon.state.begin_round(plan.record, [c.submission for c in challengers])
    names_by_hotkey = {h: n for n, h in hotkeys.items()}
    speed = {
        c.key: SPEED["B" if c.role is Role.BASELINE else names_by_hotkey[str(c.hotkey)]]
        for c in plan.job.contestants
    }
    report = None
    if not lost:
        launches = tuple(
            _launch(i, key, speed[key] * (1.004 if i else 1.0))
            for i, key in enumerate(plan.job.launch_order)
        )
        sloppy = {
            c.key for c in plan.job.contestants if names_by_hotkey.get(str(c.hotkey)) in failed
        }
        results = tuple(
            ContestantResult(key=c.key, outcome=Outcome.PASS)
            if c.key not in sloppy
            else ContestantResult(
                key=c.key,
                outcome=Outcome.FAIL,
                reason=ReasonCode.GREEDY_CONSISTENCY,
                detail="9 of 64 responses diverged from greedy decoding (limit 4)",
            )
            for c in plan.job.contestants
        )
        report = RoundReport(round_id=round_id, launches=launches, results=results)
    result = RoundResult(
        round_id, report, None if report else ReasonCode.POD_LOST, "" if report else "pod vanished"
    )
    registered = {n.hotkey for n in chain.neurons}
    daemon.state.score_round(daemon.scoring.score(plan.job, result, standings, registered))


def _launch(index: int, key: str, speed: float) -> Launch:
    start = index * 1_000_000_000
    return Launch(
        index=index,
        contestant=key,
        started_ns=start,
        ended_ns=start + 500_000_000,
        levels=tuple(
            LevelMeasurement(
                concurrency=c,
                block=0,
                speed=speed * factor,
                requests=16,
                ttft_s=0.8 / speed * factor,
                output_tokens=4096,
            )
            for c, factor in ((1, 1.0), (16, 0.5))
        ),
    )


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[str]:
    """Run the daemon's loop until the block exits; yields the status server's base URL."""
    task = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + 30
    while not (daemon.loop_alive_at and daemon.web.url):
        if task.done() or time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not come up: {task}")
        await asyncio.sleep(0.05)
    try:
        yield str(daemon.web.url)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 30) == 0


@contextlib.asynccontextmanager
async def serving(daemon: Daemon) -> AsyncIterator[str]:
    """Only the daemon's status server, its loop not running: the state stays as it is."""
    await daemon.web.start()
    try:
        yield str(daemon.web.url)
    finally:
        await daemon.web.stop()
        await daemon.parts.chain.close()
