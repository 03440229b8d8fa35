"""A fake Lium API (aiohttp, under `/api`) following the shapes of the lium.io 0.32 SDK.

Executors are whole 8-GPU nodes (and a few that do not fit, to prove the filters); a rent makes
a PENDING pod that turns RUNNING after a few polls, with `ssh_connect_cmd` pointing at the test
sshd, which then lets the renter's key in. `Idempotency-Key` replays the stored answer with
`Idempotent-Replayed: true`. Errors use `{"error": {"code", "message"}, "detail"}`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cacheon.testing.fake_pods import (
    Faults,
    PodHost,
    drop_connection,
    fault_middleware,
    serve,
)

TERMINAL = frozenset({"FAILED", "STOPPED", "DELETED"})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}, "detail": message}, status=status
    )


@dataclass
class FakeLium:
    pods_host: PodHost
    executor_hosts: dict[str, PodHost] = field(default_factory=dict)
    """Where a rent of one executor lands, by executor id, when not on `pods_host`: separate
    sshds make separate pods, so losing one pod leaves the other reachable."""
    template_id: str = "tpl-dind-0001"
    api_key: str = field(default_factory=lambda: "lium_" + secrets.token_hex(8))
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str]] = field(default_factory=list)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    executors: list[dict[str, Any]] = field(default_factory=list)
    _polls: dict[str, int] = field(default_factory=dict)
    _replays: dict[str, dict[str, Any]] = field(default_factory=dict)
    _keys: dict[str, str] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def live_pods(self) -> list[dict[str, Any]]:
        return [pod for pod in self.pods.values() if pod["status"] not in TERMINAL]

    def rents(self) -> int:
        return sum(
            1 for method, path in self.requests if method == "POST" and path.endswith("/rent")
        )

    def kill(self, pod_id: str) -> None:
        """The pod dies under its renter: FAILED, and SSH no longer lets the key in."""
        self._end(pod_id, "FAILED")

    async def start(self) -> None:
        if not self.executors:
            self.executors = [
                executor("NVIDIA H200", 8, 2.30),
                executor("NVIDIA H200", 8, 2.10),
                executor("NVIDIA H200", 4, 1.90),
                executor("NVIDIA H100 80GB HBM3", 8, 1.50),
            ]
        app = web.Application(
            middlewares=[fault_middleware(self.faults, self._authorized, _error, self.requests)]
        )
        app.add_routes([
            web.get("/api/machines", self._machines),
            web.get("/api/executors", self._list_executors),
            web.post("/api/executors/{id}/rent", self._rent),
            web.get("/api/pods", self._list_pods),
            web.get("/api/pods/{id}", self._get_pod),
            web.delete("/api/pods/{id}", self._delete_pod),
        ])  # fmt: skip
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        for pod_id in [pod["id"] for pod in self.live_pods()]:
            self._end(pod_id, "DELETED")
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("X-API-KEY") == self.api_key

    async def _machines(self, _request: web.Request) -> web.Response:
        names = sorted({e["machine_name"] for e in self.executors})
        return web.json_response([{"name": name} for name in names])

    async def _list_executors(self, request: web.Request) -> web.Response:
        query = request.query
        names = set(query["machine_names"].split(",")) if "machine_names" in query else None
        low = int(query.get("gpu_count_gte", 0))
        high = int(query.get("gpu_count_lte", 1 << 30))
        rented = {pod["executor"]["id"] for pod in self.live_pods()}
        found = [
            {**e, "status": "rented" if e["id"] in rented else "available"}
            for e in self.executors
            if (names is None or e["machine_name"] in names) and low <= e["gpu_count"] <= high
        ]
        return web.json_response(found)

    async def _rent(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None and key in self._replays:
            return web.json_response(self._replays[key], headers={"Idempotent-Replayed": "true"})
        executor = next((e for e in self.executors if e["id"] == request.match_info["id"]), None)
        if executor is None:
            return _error(404, "NOT_FOUND", "Executor not found")
        body = await request.json()
        problems = _rent_problems(body, self.template_id)
        if problems:
            return _error(422, "VALIDATION_ERROR", "; ".join(problems))
        if any(pod["executor"]["id"] == executor["id"] for pod in self.live_pods()):
            return _error(409, "EXECUTOR_BUSY", "Executor is already rented")
        pod_id = secrets.token_hex(16)
        now = datetime.now(UTC).isoformat()
        self.pods[pod_id] = {
            "id": pod_id, "pod_name": body["pod_name"], "status": "PENDING",
            "ssh_connect_cmd": None, "ports_mapping": {}, "created_at": now, "updated_at": now,
            "executor": executor, "template": {"id": self.template_id},
            "price": round(executor["price_per_gpu"] * executor["gpu_count"], 4),
            "gpu_count": executor["gpu_count"],
            "removal_scheduled_at": None,
        }  # fmt: skip
        self._keys[pod_id] = body["user_public_key"][0]
        self._polls[pod_id] = 0
        answer = {"success": True, "pod_id": pod_id}
        if key is not None:
            self._replays[key] = answer
        if self.faults.lose_create_answer:
            self.faults.lose_create_answer = False
            return drop_connection(request)
        return web.json_response(answer)

    async def _list_pods(self, _request: web.Request) -> web.Response:
        for pod_id in [pod["id"] for pod in self.live_pods()]:
            self._advance(pod_id)
        return web.json_response([pod for pod in self.pods.values() if pod["status"] != "DELETED"])

    async def _get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["id"])
        if pod is None or pod["status"] == "DELETED":
            return web.json_response({"detail": "Pod not found"}, status=404)
        self._advance(pod["id"])
        return web.json_response(pod)

    async def _delete_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["id"])
        if pod is None or pod["status"] == "DELETED":
            return web.json_response({"detail": "Pod not found"}, status=404)
        self._end(pod["id"], "DELETED")
        return web.json_response({"success": True})

    def _host(self, pod_id: str) -> PodHost:
        executor = self.pods[pod_id]["executor"]["id"]
        return self.executor_hosts.get(executor, self.pods_host)

    def _advance(self, pod_id: str) -> None:
        pod = self.pods[pod_id]
        if pod["status"] != "PENDING" or self.faults.stuck:
            return
        self._polls[pod_id] += 1
        if self._polls[pod_id] >= self.faults.polls_to_running:
            host = self._host(pod_id)
            host.grant(self._keys[pod_id])
            pod["status"] = "RUNNING"
            pod["ssh_connect_cmd"] = f"ssh {host.user}@{host.host} -p {host.port}"

    def _end(self, pod_id: str, status: str) -> None:
        pod = self.pods[pod_id]
        if pod["status"] == "RUNNING":
            self._host(pod_id).revoke(self._keys[pod_id])
        pod["status"] = status
        pod["ssh_connect_cmd"] = None


def executor(machine: str, gpus: int, price_per_gpu: float) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(16), "executor_ip_address": "127.0.0.1", "machine_name": machine,
        "gpu_count": gpus, "available_gpu_count": gpus, "min_gpu_count_for_rental": None,
        "price_per_gpu": price_per_gpu,
        "location": {"country_code": "US", "country": "United States", "region": "test"},
        "specs": {"gpu": {"count": gpus, "driver": "570.86", "details": [{"name": machine, "capacity": 143771}] * gpus},
                  "sysbox_runtime": True, "available_port_count": 20},
        "status": "available", "tier": "secure", "nvlink": True,
    }  # fmt: skip


def _rent_problems(body: Any, template_id: str) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = []
    if not isinstance(body.get("pod_name"), str) or not body["pod_name"]:
        problems.append("pod_name is required")
    if body.get("template_id") != template_id:
        problems.append(f"template {body.get('template_id')!r} not found")
    keys = body.get("user_public_key")
    if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
        problems.append("user_public_key must be a non-empty list of keys")
    hours = body.get("termination_hours")
    if hours is not None and not (isinstance(hours, int) and 1 <= hours <= 720):
        problems.append("termination_hours must be 1..720")
    return problems
