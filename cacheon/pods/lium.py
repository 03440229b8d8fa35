"""Lium rentals over its REST API: executors (whole nodes), rent, pods, delete.

Shapes follow the `lium.io` 0.32 SDK (docs/reference sdks.md §3), whose safety rules we keep:
every rent carries an `Idempotency-Key` (derived from the pod name, so a retried rent replays
instead of renting again) and a `termination_hours` (Lium removes the pod itself after that, a
safety net under our own sweep), a rent is never blindly retried, and a rent whose answer was
lost is looked up by pod name.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from cacheon.log import get_logger
from cacheon.pods.api import ApiClient, parse, parse_list
from cacheon.pods.base import (
    AnswerLost,
    MalformedAnswer,
    Offer,
    Pod,
    PodState,
    ProviderError,
)
from cacheon.sshtarget import SshTarget

log = get_logger("cacheon.pods.lium")

_FAILED = frozenset(
    {"FAILED", "STOPPED", "ERROR", "CANCELLED", "CREATION_FAILED", "BROKEN", "REBOOT_FAILED"}
)
_GONE = frozenset({"TERMINATED", "DELETED", "REMOVED", "DELETING"})
_SSH_CMD = re.compile(r"^ssh\s+(?P<user>[^@\s]+)@(?P<host>\S+?)(?:\s+-p\s+(?P<port>\d{1,5}))?\s*$")
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c5d3e-8a44-4c1b-9a55-0c0ace0a1d14")
MAX_TERMINATION_HOURS = 720


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Machine(_Answer):
    name: str


class _Executor(_Answer):
    id: str
    machine_name: str
    gpu_count: int
    price_per_gpu: float | None = None
    status: str | None = None


class _Pod(_Answer):
    id: str
    pod_name: str
    status: str
    ssh_connect_cmd: str | None = None
    price: float | None = None
    created_at: datetime | None = None


class _RentAnswer(_Answer):
    pod_id: str | None = None
    id: str | None = None


def error_text(response: httpx.Response) -> str:
    """Lium's envelope is `{"error": {"code", "message"}, "detail"}`; older servers send `detail`."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if not isinstance(body, dict):
        return response.text[:200]
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    detail = body.get("detail") or body.get("message")
    return str(detail)[:200] if detail else response.text[:200]


def parse_ssh_command(command: str) -> tuple[str, str, int]:
    """`ssh user@host [-p port]` -> (user, host, port); the only form Lium's SDK accepts."""
    match = _SSH_CMD.match(command.strip())
    if match is None:
        raise MalformedAnswer(f"lium ssh_connect_cmd {command!r} is not `ssh user@host [-p port]`")
    return match["user"], match["host"], int(match["port"] or 22)


class LiumProvider:
    """`Provider` over Lium's API; one `ApiClient` (httpx) for all calls."""

    def __init__(self, api: ApiClient, template_id: str) -> None:
        self._api = api
        self._template_id = template_id

    @property
    def name(self) -> str:
        return "lium"

    async def aclose(self) -> None:
        await self._api.aclose()

    async def offers(self, gpu_type: str, gpu_count: int, max_price: float) -> list[Offer]:
        response = await self._api.call("GET", "/machines", idempotent=True)
        machines = parse_list(response, _Machine, "lium GET /machines")
        names = [m.name for m in machines if gpu_type.upper() in m.name.upper().split()]
        if not names:
            return []
        params = {
            "view": "summary",
            "machine_names": ",".join(names),
            "gpu_count_gte": str(gpu_count),
            "gpu_count_lte": str(gpu_count),
        }
        response = await self._api.call("GET", "/executors", params=params, idempotent=True)
        executors = parse_list(response, _Executor, "lium GET /executors")
        offers = []
        for executor in executors:
            if executor.price_per_gpu is None or executor.gpu_count != gpu_count:
                continue
            price = executor.price_per_gpu * executor.gpu_count
            if price <= max_price and executor.status in (None, "available"):
                offers.append(Offer(self.name, executor.id, gpu_type, gpu_count, price))
        return offers

    async def create(self, offer: Offer, name: str, public_key: str, lifetime_h: float) -> Pod:
        body = {
            "pod_name": name,
            "template_id": self._template_id,
            "dockerfile_content": None,
            "volume_id": None,
            "user_public_key": [public_key],
            "initial_port_count": None,
            "enable_volume_encryption": False,
            "backup_log_id": None,
            "restore_path": None,
            "enable_backups": False,
            "termination_hours": min(MAX_TERMINATION_HOURS, max(1, math.ceil(lifetime_h))),
        }
        key = str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, name))
        try:
            response = await self._api.call(
                "POST",
                f"/executors/{offer.offer_id}/rent",
                json=body,
                headers={"Idempotency-Key": key},
                idempotent=False,
            )
        except AnswerLost as exc:
            found = await self._find(name)
            if found is None:
                raise ProviderError(
                    f"{exc}; no pod named {name} exists, so it is not rented twice"
                ) from None
            log.warning("lium rent answer lost; found the pod by name", name=name)
            return self._pod(found)
        answer = parse(response, _RentAnswer, "lium POST /executors/{id}/rent")
        pod_id = answer.pod_id or answer.id
        if pod_id is None:
            raise MalformedAnswer("lium POST /executors/{id}/rent: answer names no pod id")
        pod = await self.get(pod_id)
        if pod is None:
            raise ProviderError(f"lium rented pod {pod_id} but GET /pods/{pod_id} does not know it")
        return pod

    async def get(self, pod_id: str) -> Pod | None:
        response = await self._api.lookup("GET", f"/pods/{pod_id}")
        if response is None:
            return None
        return self._pod(parse(response, _Pod, "lium GET /pods/{id}"))

    async def terminate(self, pod_id: str) -> None:
        await self._api.lookup("DELETE", f"/pods/{pod_id}")

    async def list_ours(self, prefix: str) -> list[Pod]:
        pods = [self._pod(p) for p in await self._pods() if p.pod_name.startswith(prefix)]
        return [p for p in pods if p.state is not PodState.GONE]

    async def _pods(self) -> list[_Pod]:
        response = await self._api.call("GET", "/pods", idempotent=True)
        return parse_list(response, _Pod, "lium GET /pods")

    async def _find(self, name: str) -> _Pod | None:
        return next((p for p in await self._pods() if p.pod_name == name), None)

    def _pod(self, pod: _Pod) -> Pod:
        status = pod.status.upper()
        if status in _GONE:
            state = PodState.GONE
        elif status in _FAILED:
            state = PodState.FAILED
        elif status == "RUNNING" and pod.ssh_connect_cmd:
            state = PodState.RUNNING
        else:
            state = PodState.PENDING
        ssh = None
        if state is PodState.RUNNING and pod.ssh_connect_cmd:
            user, host, port = parse_ssh_command(pod.ssh_connect_cmd)
            ssh = SshTarget(host, port, user)
        return Pod(
            provider=self.name,
            pod_id=pod.id,
            name=pod.pod_name,
            state=state,
            price_per_hour=pod.price or 0.0,
            ssh=ssh,
            created_at=pod.created_at,
        )
