"""Read back, from the kernel, which limits a contestant's server actually runs under.

The run profile asks the engine for limits; a Docker-in-Docker provider, cgroup v1 without swap
accounting or a missing capability may drop some without an error. Every value here comes from
`/proc/<pid>` of the server's first process and the cgroup files it belongs to, never from what
was requested and never from inside the container (its binaries are the contestant's), so the
report states what the contestant could and could not do.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
CAP_SYS_RESOURCE: Final = 24


def memlock_ceiling() -> int:
    """The highest memlock a container can get here: unlimited (-1) when the engine's root may
    raise hard limits (CAP_SYS_RESOURCE), else this process's hard limit, which it inherits."""
    if _capabilities(Path("/proc/self/status")) >> CAP_SYS_RESOURCE & 1:
        return -1
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return -1 if hard == resource.RLIM_INFINITY else hard


def _capabilities(status: Path) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def read_enforced(pid: int, engine_info: Mapping[str, Any]) -> dict[str, str]:
    """What limits and isolation the process `pid` is under, as report strings."""
    proc = Path(f"/proc/{pid}")
    status = _fields((proc / "status").read_text(), ":")
    found = {
        "capabilities": status.get("CapEff", "?"),
        "no_new_privs": status.get("NoNewPrivs", "?"),
        "seccomp": {"0": "off", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""), "?"),
        "memlock": _limit(proc / "limits", "Max locked memory"),
        "network_interfaces": ",".join(_interfaces(proc / "net" / "dev")),
        "docker_socket": "present"
        if any((proc / "root" / p).exists() for p in ("run/docker.sock", "var/run/docker.sock"))
        else "absent",
        "gpus": str(len(list((proc / "root" / "dev").glob("nvidia[0-9]*")))),
        **_mounts(proc / "mounts"),
        **_cgroup_limits(proc / "cgroup"),
    }
    for key in ("CgroupVersion", "CgroupDriver", "MemoryLimit", "SwapLimit", "PidsLimit"):
        found[f"engine.{key}"] = str(engine_info.get(key))
    if engine_info.get("Warnings"):
        found["engine.Warnings"] = "; ".join(engine_info["Warnings"])
    return found


def _fields(text: str, separator: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(separator)
        out[key.strip()] = value.strip()
    return out


def _limit(limits: Path, name: str) -> str:
    for line in limits.read_text().splitlines():
        if line.startswith(name):
            return line[len(name) :].split()[0]
    return "?"


def _interfaces(net_dev: Path) -> list[str]:
    return [line.split(":")[0].strip() for line in net_dev.read_text().splitlines()[2:]]


def _mounts(mounts: Path) -> dict[str, str]:
    out = {"rootfs": "?", "shm": "?", "model": "absent"}
    for line in mounts.read_text().splitlines():
        _source, target, _kind, options = line.split()[:4]
        flags = options.split(",")
        if target == "/":
            out["rootfs"] = "ro" if "ro" in flags else "rw"
        elif target == "/dev/shm":  # noqa: S108 (the container's mount, read from /proc)
            out["shm"] = next((f[5:] for f in flags if f.startswith("size=")), "unbounded")
        elif target == "/model":
            out["model"] = "ro" if "ro" in flags else "rw"
    return out


def _cgroup_limits(cgroup: Path) -> dict[str, str]:
    """Memory and pid limits from the cgroup files (v2 unified, or the v1 controllers)."""
    paths: dict[str, str] = {}
    for line in cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ("",):
            paths[controller] = path
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        base = CGROUP_ROOT / paths.get("", "/").lstrip("/")
        memory, pids = base / "memory.max", base / "pids.max"
    else:
        memory = CGROUP_ROOT / "memory" / paths.get("memory", "/").lstrip("/")
        memory = memory / "memory.limit_in_bytes"
        pids = CGROUP_ROOT / "pids" / paths.get("pids", "/").lstrip("/") / "pids.max"
    return {"memory_limit_bytes": _read(memory), "pids_max": _read(pids)}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unreadable"
