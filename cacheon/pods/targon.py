"""Targon rentals over its REST API (`/tha/v2`): inventory, SSH keys, workloads.

A rental is a `RENTAL` workload: registered (`POST /workloads`), then deployed (billing starts),
then polled on `/state` until `running`. It is reached through Targon's SSH gateway with the
workload uid as the user name. The prefix is part of `pods.targon_base_url` because the API is
moving (a `/tha/v3` exists upstream).
"""

from __future__ import annotations

from datetime import datetime

import httpx
from pydantic import BaseModel, ConfigDict

from cacheon.log import get_logger
from cacheon.pods.api import ApiClient, parse, parse_list
from cacheon.pods.base import AnswerLost, Offer, Pod, PodState, ProviderError
from cacheon.sshtarget import SshTarget

log = get_logger("cacheon.pods.targon")

_STATES = {
    "registered": PodState.PENDING,
    "provisioning": PodState.PENDING,
    "pending": PodState.PENDING,
    "running": PodState.RUNNING,
    "error": PodState.FAILED,
    "failed": PodState.FAILED,
    "stopped": PodState.FAILED,
    "suspended": PodState.FAILED,
    "deleted": PodState.GONE,
    "terminated": PodState.GONE,
}


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Spec(_Answer):
    gpu_type: str | None = None
    gpu_count: int = 0


class _InventoryItem(_Answer):
    name: str
    spec: _Spec
    cost_per_hour: float
    available: int | None = None


class _SshKey(_Answer):
    uid: str
    public_key_raw: str = ""


class _KeyPage(_Answer):
    items: list[_SshKey]
    next_cursor: str | None = None


class _State(_Answer):
    status: str
    message: str | None = None


class _Workload(_Answer):
    uid: str
    name: str
    cost_per_hour: float | None = None
    created_at: datetime | None = None
    state: _State | None = None


class _WorkloadPage(_Answer):
    items: list[_Workload]
    next_cursor: str | None = None


def error_text(response: httpx.Response) -> str:
    """Targon's error envelope is `{"error", "reason"}`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {body.get('reason', '')}".rstrip(": ")
    return response.text[:200]


class TargonProvider:
    """`Provider` over Targon's rental API; one `ApiClient` (httpx) for all calls."""

    def __init__(self, api: ApiClient, image: str, gateway_host: str, gateway_port: int) -> None:
        self._api = api
        self._image = image
        self._gateway = (gateway_host, gateway_port)
        self._known: dict[str, _Workload] = {}
        self._key_uids: dict[str, str] = {}

    @property
    def name(self) -> str:
        return "targon"

    async def aclose(self) -> None:
        await self._api.aclose()

    async def offers(self, gpu_type: str, gpu_count: int, max_price: float) -> list[Offer]:
        response = await self._api.call(
            "GET", "/inventory", params={"type": "rental", "gpu": "true"}, idempotent=True
        )
        items = parse_list(response, _InventoryItem, "targon GET /inventory")
        return [
            Offer(self.name, item.name, gpu_type, gpu_count, item.cost_per_hour)
            for item in items
            if (item.spec.gpu_type or "").upper() == gpu_type.upper()
            and item.spec.gpu_count == gpu_count
            and item.cost_per_hour <= max_price
            and (item.available is None or item.available > 0)
        ]

    async def create(self, offer: Offer, name: str, public_key: str, lifetime_h: float) -> Pod:
        # Targon takes no lifetime; the orphan sweep enforces `pods.max_lifetime_h` for it.
        key_uid = await self._key_uid(name, public_key)
        body = {
            "name": name,
            "image": self._image,
            "resource_name": offer.offer_id,
            "type": "RENTAL",
            "ssh_keys": [key_uid],
        }
        try:
            response = await self._api.call("POST", "/workloads", json=body, idempotent=False)
            workload = parse(response, _Workload, "targon POST /workloads")
        except AnswerLost as exc:
            found = await self._find(name)
            if found is None:
                raise ProviderError(
                    f"{exc}; no workload named {name} exists, so it is not registered twice"
                ) from None
            log.warning("targon create answer lost; found the workload by name", name=name)
            workload = found
        self._known[workload.uid] = workload
        await self._api.call("POST", f"/workloads/{workload.uid}/deploy", idempotent=True)
        return self._pod(workload.uid, PodState.PENDING)

    async def get(self, pod_id: str) -> Pod | None:
        response = await self._api.lookup("GET", f"/workloads/{pod_id}/state")
        if response is None:
            return None
        state = parse(response, _State, "targon GET /workloads/{uid}/state")
        if pod_id not in self._known:
            full = await self._api.lookup("GET", f"/workloads/{pod_id}")
            if full is None:
                return None
            self._known[pod_id] = parse(full, _Workload, "targon GET /workloads/{uid}")
        return self._pod(pod_id, _STATES.get(state.status.lower(), PodState.PENDING))

    async def terminate(self, pod_id: str) -> None:
        await self._api.lookup("DELETE", f"/workloads/{pod_id}")

    async def list_ours(self, prefix: str) -> list[Pod]:
        pods: list[Pod] = []
        for workload in await self._workloads():
            status = workload.state.status.lower() if workload.state else "registered"
            state = _STATES.get(status, PodState.PENDING)
            if workload.name.startswith(prefix) and state is not PodState.GONE:
                self._known[workload.uid] = workload
                pods.append(self._pod(workload.uid, state))
        return pods

    def _pod(self, uid: str, state: PodState) -> Pod:
        workload = self._known[uid]
        host, port = self._gateway
        return Pod(
            provider=self.name,
            pod_id=uid,
            name=workload.name,
            state=state,
            price_per_hour=workload.cost_per_hour or 0.0,
            ssh=SshTarget(host, port, uid) if state is PodState.RUNNING else None,
            created_at=workload.created_at,
        )

    async def _workloads(self, name: str | None = None) -> list[_Workload]:
        out: list[_Workload] = []
        cursor: str | None = None
        while True:
            params = {"type": "RENTAL", "limit": "100"}
            if name is not None:
                params["name"] = name
            if cursor:
                params["cursor"] = cursor
            response = await self._api.call("GET", "/workloads", params=params, idempotent=True)
            page = parse(response, _WorkloadPage, "targon GET /workloads")
            out.extend(page.items)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    async def _find(self, name: str) -> _Workload | None:
        return next((w for w in await self._workloads(name) if w.name == name), None)

    async def _key_uid(self, pod_name: str, public_key: str) -> str:
        """The uid of our key on the account, registering it the first time."""
        if public_key in self._key_uids:
            return self._key_uids[public_key]
        uid = await self._find_or_register_key(pod_name, public_key)
        self._key_uids[public_key] = uid
        return uid

    async def _find_or_register_key(self, pod_name: str, public_key: str) -> str:
        wanted = public_key.split()[:2]
        for attempt in range(2):
            cursor: str | None = None
            while True:
                params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
                response = await self._api.call("GET", "/ssh-keys", params=params, idempotent=True)
                page = parse(response, _KeyPage, "targon GET /ssh-keys")
                for key in page.items:
                    if key.public_key_raw.split()[:2] == wanted:
                        return key.uid
                if not page.next_cursor:
                    break
                cursor = page.next_cursor
            if attempt == 1:
                break
            body = {"name": pod_name.rsplit("-", 1)[0] + "-key", "ssh_key": public_key}
            try:
                response = await self._api.call("POST", "/ssh-keys", json=body, idempotent=False)
            except AnswerLost:
                continue
            return parse(response, _SshKey, "targon POST /ssh-keys").uid
        raise ProviderError("targon POST /ssh-keys: the key was not registered; try again later")
