"""A fake Targon rental API (aiohttp, under `/tha/v2`) and its SSH gateway (asyncssh).

Workloads go `registered` (POST) -> `provisioning` (deploy) -> `running` (after a few state
polls); DELETE makes them 404. Lists paginate with `limit`/`cursor` -> `{items, next_cursor}`
(two per page, so clients must follow the cursor). Errors are `{"error", "reason"}`.

The gateway, like Targon's, takes the workload uid as the user name and the keys attached to
that workload; it relays each command to the test sshd (the pod) and returns its output and exit
status whole (no streaming).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncssh
from aiohttp import web

from cacheon.testing.fake_pods import (
    LOOPBACK,
    Faults,
    PodHost,
    drop_connection,
    fault_middleware,
    serve,
)

PREFIX = "/tha/v2"
PAGE_SIZE = 2
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INVENTORY: tuple[dict[str, Any], ...] = (
    {"name": "h200-small", "display_name": "NVIDIA H200 - Small", "gpu_type": "H200", "gpus": 1, "cost": 3.15},
    {"name": "h200-xlarge", "display_name": "NVIDIA H200 - XLarge", "gpu_type": "H200", "gpus": 8, "cost": 25.20},
    {"name": "h100-xlarge", "display_name": "NVIDIA H100 - XLarge", "gpu_type": "H100", "gpus": 8, "cost": 17.60},
)  # fmt: skip


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


@dataclass
class FakeTargon:
    pods_host: PodHost
    api_key: str = field(default_factory=lambda: "tgn_" + secrets.token_hex(8))
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str]] = field(default_factory=list)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    ssh_keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = 0
    gateway_port: int = 0
    _polls: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _gateway: asyncssh.SSHAcceptor | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{PREFIX}"

    @property
    def gateway(self) -> str:
        return f"{LOOPBACK}:{self.gateway_port}"

    def live_workloads(self) -> list[dict[str, Any]]:
        return [w for w in self.workloads.values() if w["state"]["status"] != "deleted"]

    def creates(self) -> int:
        return sum(1 for m, p in self.requests if m == "POST" and p == f"{PREFIX}/workloads")

    def kill(self, uid: str) -> None:
        """The rental dies under its renter: state `error`, and the gateway refuses it."""
        self.workloads[uid]["state"]["status"] = "error"

    async def start(self) -> None:
        app = web.Application(
            middlewares=[fault_middleware(self.faults, self._authorized, _error, self.requests)]
        )
        app.add_routes([
            web.get(f"{PREFIX}/inventory", self._inventory),
            web.get(f"{PREFIX}/ssh-keys", self._list_keys),
            web.post(f"{PREFIX}/ssh-keys", self._create_key),
            web.get(f"{PREFIX}/workloads", self._list_workloads),
            web.post(f"{PREFIX}/workloads", self._create_workload),
            web.get(f"{PREFIX}/workloads/{{uid}}", self._get_workload),
            web.post(f"{PREFIX}/workloads/{{uid}}/deploy", self._deploy),
            web.get(f"{PREFIX}/workloads/{{uid}}/state", self._state),
            web.delete(f"{PREFIX}/workloads/{{uid}}", self._delete),
        ])  # fmt: skip
        self._runner, self.port = await serve(app)
        self._gateway = await asyncssh.create_server(
            lambda: _Gateway(self),
            LOOPBACK,
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            process_factory=self._relay,
        )
        self.gateway_port = int(self._gateway.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
            await self._gateway.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _inventory(self, request: web.Request) -> web.Response:
        if request.query.get("type") != "rental":
            return web.json_response([])
        return web.json_response([
            {"name": item["name"], "display_name": item["display_name"], "description": "",
             "type": "rental", "gpu": True,
             "spec": {"gpu_type": item["gpu_type"], "gpu_count": item["gpus"], "vcpu": 12 * item["gpus"],
                      "memory": 115000 * item["gpus"], "storage": 0},
             "cost_per_hour": item["cost"], "available": 3}
            for item in INVENTORY
        ])  # fmt: skip

    async def _list_keys(self, request: web.Request) -> web.Response:
        return _page(request, list(self.ssh_keys.values()))

    async def _create_key(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or not str(body.get("ssh_key", "")).startswith("ssh-"):
            return _error(400, "invalid_request", "ssh_key must be an OpenSSH public key")
        uid = "sshk-" + secrets.token_hex(6)
        now = _now()
        self.ssh_keys[uid] = {
            "uid": uid, "name": str(body.get("name", "")), "public_key_raw": body["ssh_key"],
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        return web.json_response(self.ssh_keys[uid], status=201)

    async def _list_workloads(self, request: web.Request) -> web.Response:
        found = [
            w
            for w in self.live_workloads()
            if w["type"] == request.query.get("type", w["type"])
            and w["name"] == request.query.get("name", w["name"])
        ]
        return _page(request, found)

    async def _create_workload(self, request: web.Request) -> web.Response:
        body = await request.json()
        problem = self._create_problem(body)
        if problem is not None:
            return _error(400 if "exists" not in problem else 409, "invalid_request", problem)
        resource = next(item for item in INVENTORY if item["name"] == body["resource_name"])
        uid = "wrk-" + secrets.token_hex(6)
        now = _now()
        self.workloads[uid] = {
            "uid": uid, "name": body["name"], "type": "RENTAL", "image": body["image"],
            "resource_name": resource["name"], "project_id": None, "ports": [], "envs": [],
            "commands": [], "args": [], "volumes": [],
            "ssh_keys": [
                {"uid": k, "name": self.ssh_keys[k]["name"], "public_key_raw": self.ssh_keys[k]["public_key_raw"]}
                for k in body.get("ssh_keys", [])
            ],
            "state": {"status": "registered", "message": ""},
            "resource": {"name": resource["name"], "display_name": resource["display_name"],
                         "gpu_type": resource["gpu_type"], "gpu_count": resource["gpus"]},
            "cost_per_hour": resource["cost"], "revision": 1, "created_at": now, "updated_at": now,
        }  # fmt: skip
        self._polls[uid] = 0
        if self.faults.lose_create_answer:
            self.faults.lose_create_answer = False
            return drop_connection(request)
        return web.json_response(self.workloads[uid], status=201)

    def _create_problem(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        if body.get("type") != "RENTAL":
            return "type must be RENTAL"
        if not isinstance(body.get("name"), str) or not _NAME.match(body["name"]):
            return "name must be lowercase letters, digits and hyphens"
        if any(w["name"] == body["name"] for w in self.live_workloads()):
            return f"a workload named {body['name']} already exists"
        if not body.get("image"):
            return "image is required"
        if body.get("resource_name") not in {item["name"] for item in INVENTORY}:
            return f"unknown resource {body.get('resource_name')!r}"
        unknown = [k for k in body.get("ssh_keys", []) if k not in self.ssh_keys]
        return f"unknown ssh keys {unknown}" if unknown else None

    def _live(self, request: web.Request) -> dict[str, Any] | None:
        workload = self.workloads.get(request.match_info["uid"])
        return None if workload is None or workload["state"]["status"] == "deleted" else workload

    async def _get_workload(self, request: web.Request) -> web.Response:
        workload = self._live(request)
        return (
            web.json_response(workload)
            if workload
            else _error(404, "not_found", "workload not found")
        )

    async def _deploy(self, request: web.Request) -> web.Response:
        workload = self._live(request)
        if workload is None:
            return _error(404, "not_found", "workload not found")
        if workload["state"]["status"] == "registered":
            workload["state"]["status"] = "provisioning"
        return web.json_response({k: workload[k] for k in ("uid", "name", "type", "image", "state", "resource", "cost_per_hour", "revision", "volumes", "created_at", "updated_at")})  # fmt: skip

    async def _state(self, request: web.Request) -> web.Response:
        workload = self._live(request)
        if workload is None:
            return _error(404, "not_found", "workload not found")
        uid = workload["uid"]
        if workload["state"]["status"] == "provisioning" and not self.faults.stuck:
            self._polls[uid] += 1
            if self._polls[uid] >= self.faults.polls_to_running:
                workload["state"]["status"] = "running"
        running = workload["state"]["status"] == "running"
        return web.json_response({
            "uid": uid, "workload_type": "RENTAL", "status": workload["state"]["status"],
            "message": "", "urls": [], "ready_replicas": int(running), "total_replicas": 1,
            "updated_at": _now(),
        })  # fmt: skip

    async def _delete(self, request: web.Request) -> web.Response:
        workload = self._live(request)
        if workload is None:
            return _error(404, "not_found", "workload not found")
        workload["state"]["status"] = "deleted"
        return web.json_response({})

    def keys_of(self, uid: str) -> list[str] | None:
        """Keys the gateway accepts for user `uid`: only while the workload runs."""
        workload = self.workloads.get(uid)
        if workload is None or workload["state"]["status"] != "running":
            return None
        return [" ".join(k["public_key_raw"].split()[:2]) for k in workload["ssh_keys"]]

    async def _relay(self, process: asyncssh.SSHServerProcess[str]) -> None:
        host = self.pods_host
        known = asyncssh.import_known_hosts(host.known_hosts_line + "\n")
        try:
            async with asyncssh.connect(
                host.host, host.port, username=host.user, client_keys=[str(host.client_key)],
                known_hosts=known, agent_path=None, config=None,
            ) as conn:  # fmt: skip
                result = await conn.run(process.command or "true", check=False)
            process.stdout.write(str(result.stdout or ""))
            process.stderr.write(str(result.stderr or ""))
            process.exit(result.exit_status or 0)
        except (OSError, asyncssh.Error) as exc:
            process.stderr.write(f"gateway: pod unreachable: {exc}\n")
            process.exit(255)


class _Gateway(asyncssh.SSHServer):
    def __init__(self, fake: FakeTargon) -> None:
        self._fake = fake

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        keys = self._fake.keys_of(username)
        offered = " ".join(key.export_public_key().decode().split()[:2])
        return keys is not None and offered in keys


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    start = int(request.query.get("cursor", "0") or 0)
    limit = min(int(request.query.get("limit", PAGE_SIZE)), PAGE_SIZE)
    chunk = items[start : start + limit]
    following = start + limit if start + limit < len(items) else None
    return web.json_response(
        {"items": chunk, "next_cursor": None if following is None else str(following)}
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
