"""`cacheon-validator doctor`: check a deployment against the real services before it runs.

`build_parts` refuses a config that lacks something; this goes further and uses each credential
once, the way the daemon will: it reads the chain, writes, reads and presigns an S3 object,
lists provider offers, and loads the pod key and the model manifest. Each check ends in one
result that says what to fix, so an operator finds every problem in one run instead of one per
restart. Nothing here writes the chain, rents a pod or opens the state database.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cacheon.chain.client import ChainClient, ChainState
from cacheon.chain.errors import ChainFailure
from cacheon.chain.wallet import WalletError, hotkey_address, open_wallet, service_problem
from cacheon.config import ChainSettings, S3Settings, Settings
from cacheon.pods.base import PodError, Provider, ProviderAuthError
from cacheon.pods.keys import load_key
from cacheon.pods.providers import build_providers
from cacheon.protocol import GateThresholds
from cacheon.remote.provision import ProvisionError, load_manifest
from cacheon.store.db import Database
from cacheon.store.objects import ObjectStore, ObjectStoreError

PRESIGN_EXPIRY_S = 300
HTTP_TIMEOUT_S = 30.0
S3_FIX = "check s3.endpoint_url, s3.bucket, s3.access_key_id and CACHEON_S3__SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    """What was found; on a failure, what is wrong and what to do."""


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, in a fixed order; the slow ones (network) run concurrently."""
    wallet, hotkey = _wallet(settings)
    endpoints = _endpoints(settings.chain)
    found = await asyncio.gather(
        _read_state(settings.chain),
        asyncio.gather(*(_endpoint(settings.chain, e, name) for e, name in endpoints)),
        asyncio.to_thread(_s3, settings.s3),
        _providers(settings),
    )
    state, endpoint_checks, s3_check, provider_checks = found
    return [
        wallet,
        *endpoint_checks,
        _registration(settings, hotkey, state),
        s3_check,
        *provider_checks,
        _ssh_key(settings),
        _manifest(settings),
        # the thresholds the daemon runs with (`Daemon.gate`): no calibrated set is loaded yet
        calibration(settings, GateThresholds()),
    ]


def _wallet(settings: Settings) -> tuple[Check, str | None]:
    w = settings.wallet
    wallet = open_wallet(w)
    unusable = service_problem(wallet)
    if unusable is not None:
        return Check("wallet", False, unusable), None
    try:
        hotkey = hotkey_address(wallet)
    except WalletError as exc:
        return Check("wallet", False, str(exc)), None
    return Check("wallet", True, f"hotkey {hotkey} ({w.name}/{w.hotkey} under {w.path})"), hotkey


def _endpoints(chain: ChainSettings) -> list[tuple[str, str]]:
    """(endpoint, check name) for the main endpoint and each fallback."""
    fallbacks = chain.fallback_endpoints
    return [
        (chain.chain_endpoint or chain.network, "chain"),
        *((e, f"chain fallback {i}") for i, e in enumerate(fallbacks, 1)),
    ]


async def _endpoint(chain: ChainSettings, endpoint: str, name: str) -> Check:
    """Each endpoint alone: a dead fallback is found now, not on the day it is needed."""
    alone = chain.model_copy(update={"chain_endpoint": endpoint, "fallback_endpoints": []})
    client = ChainClient(alone)
    try:
        block = await client.head()
    except ChainFailure as exc:
        fix = "fix chain.network / chain.chain_endpoint / chain.fallback_endpoints"
        return Check(name, False, f"{exc}; {fix}")
    finally:
        await client.close()
    return Check(name, True, f"{_shown(endpoint)} reachable, head block {block}")


async def _read_state(chain: ChainSettings) -> ChainState | str:
    client = ChainClient(chain)
    try:
        return await client.read_state()
    except ChainFailure as exc:
        return str(exc)
    finally:
        await client.close()


def _registration(settings: Settings, hotkey: str | None, state: ChainState | str) -> Check:
    netuid = settings.chain.netuid
    if isinstance(state, str):
        return Check("registration", False, f"not checked: {state}")
    if hotkey is None:
        return Check("registration", False, "not checked: the wallet check failed")
    neuron = next((n for n in state.neurons if n.hotkey == hotkey), None)
    if neuron is None:
        return Check(
            "registration",
            False,
            f"hotkey {hotkey} is not registered on netuid {netuid}: "
            f"btcli subnets register --netuid {netuid}",
        )
    if not neuron.validator_permit:
        return Check(
            "registration",
            False,
            f"uid {neuron.uid} on netuid {netuid} has no validator permit: "
            "stake enough to rank among the subnet's validators, then wait for the next epoch",
        )
    return Check("registration", True, f"uid {neuron.uid} on netuid {netuid}, validator permit")


def _s3(s3: S3Settings) -> Check:
    """Credentials write and read; presigned URLs (what the pod gets) work without them."""
    try:
        store = ObjectStore.from_settings(s3)
    except ObjectStoreError as exc:
        return Check("s3", False, str(exc))
    key = f"{store.prefix}/doctor/probe.txt"  # one fixed key: repeated runs leave one object
    first, second = (f"cacheon doctor {uuid.uuid4().hex}".encode() for _ in range(2))
    step = "put"
    try:
        store.put(key, first, "text/plain")
        step = "get"
        if store.get(key, len(first)) != first:
            return Check("s3", False, f"get {key} returned other bytes than were put; {S3_FIX}")
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            step = "presigned GET"
            got = http.get(store.presign_get(key, PRESIGN_EXPIRY_S))
            if got.status_code != 200 or got.content != first:
                return Check("s3", False, f"presigned GET answered {got.status_code}; {S3_FIX}")
            step = "presigned PUT"
            put = http.put(store.presign_put(key, PRESIGN_EXPIRY_S), content=second)
            if put.status_code != 200 or store.get(key, len(second)) != second:
                return Check("s3", False, f"presigned PUT answered {put.status_code}; {S3_FIX}")
    except ObjectStoreError as exc:
        return Check("s3", False, f"{step}: {exc}; {S3_FIX}")
    except httpx.HTTPError as exc:
        return Check("s3", False, f"{step}: {exc!r}; the pod must reach s3.endpoint_url too")
    return Check(
        "s3", True, f"put, get, presigned GET and PUT on s3://{store.bucket}/{key} round-tripped"
    )


async def _providers(settings: Settings) -> list[Check]:
    """Each provider's offers of the configured hardware under the price cap.

    Providers are built over a throwaway database: the real one belongs to the daemon (its
    writer lock), and only the static provider reads it, for claims that do not matter here."""
    with tempfile.TemporaryDirectory(prefix="cacheon-doctor-") as tmp:
        db = Database.open(Path(tmp) / "state.db")
        try:
            providers = build_providers(settings.pods, db)
        except PodError as exc:
            db.close()
            return [Check("providers", False, str(exc))]
        try:
            return list(await asyncio.gather(*(_offers(settings, p) for p in providers)))
        finally:
            for provider in providers:
                await provider.aclose()
            db.close()


async def _offers(settings: Settings, provider: Provider) -> Check:
    model, pods, name = settings.model, settings.pods, provider.name
    hardware = f"{model.gpu_count}x{model.gpu_type}"
    try:
        offers = await provider.offers(model.gpu_type, model.gpu_count, pods.max_price_per_hour)
    except ProviderAuthError as exc:
        return Check(f"provider {name}", False, f"{exc}: CACHEON_PODS__{name.upper()}_API_KEY")
    except PodError as exc:
        return Check(f"provider {name}", False, str(exc))
    if not offers:
        return Check(
            f"provider {name}",
            False,
            f"API key accepted, but no {hardware} offer at or under "
            f"${pods.max_price_per_hour:g}/h now: raise pods.max_price_per_hour or try later",
        )
    cheapest = min(offer.price_per_hour for offer in offers)
    return Check(
        f"provider {name}",
        True,
        f"{len(offers)} offer{'s' if len(offers) > 1 else ''} of {hardware}, "
        f"cheapest ${cheapest:.2f}/h",
    )


def _ssh_key(settings: Settings) -> Check:
    try:
        key = load_key(Path(settings.pods.ssh_key_path))
    except PodError as exc:
        return Check("ssh key", False, str(exc))
    return Check("ssh key", True, f"{key.path} ({key.public_line.split()[0]})")


def _manifest(settings: Settings) -> Check:
    model = settings.model
    if model.manifest is None:
        return Check(
            "model manifest",
            False,
            "model.manifest is not set: pin the model's files by sha256 (see config.example.toml)",
        )
    try:
        files = load_manifest(Path(model.manifest).expanduser())
    except ProvisionError as exc:
        return Check("model manifest", False, str(exc))
    if not files:
        return Check("model manifest", False, f"model.manifest {model.manifest} lists no files")
    size = sum(size for _, size in files.values())
    return Check(
        "model manifest",
        True,
        f"{model.name}@{model.revision}: {len(files)} file{'s' if len(files) > 1 else ''}, "
        f"{size / 1e9:.1f} GB",
    )


def calibration(settings: Settings, gate: GateThresholds) -> Check:
    """The gate's thresholds must be calibrated for the model and GPU before finney pays out."""
    target = f"{settings.model.name} on {settings.model.gpu_type}"
    if not gate.provisional:
        return Check("calibration", True, f"gate thresholds v{gate.version} for {target}")
    note = "provisional thresholds: weights will be refused on finney"
    if settings.chain.network == "finney":
        return Check(
            "calibration",
            False,
            f"{note}; calibrate {target} with `cacheon-agent calibrate`",
        )
    return Check("calibration", True, f"{note} (network {settings.chain.network})")


def _shown(endpoint: str) -> str:
    """An endpoint as it may be printed: without credentials a ws URL could embed."""
    parts = urlsplit(endpoint)
    if parts.password is None and parts.username is None:
        return endpoint
    host = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return parts._replace(netloc=host).geturl()
