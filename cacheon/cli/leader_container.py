"""The leader's container on a user's machine: the validator's run profile, published on a port.

The options come from the agent's own `container_options`, so what a user runs is what the
validator measured: the same read-only root, dropped capabilities, limits, GPUs, read-only model
and contract environment. One thing cannot stay: `--network none`. A container without a network
has no port a client outside it can reach (the agent reaches it by joining its network namespace,
which needs root), so here it joins a bridge network of its own and its port is published on the
host, on loopback unless told otherwise. A user-defined bridge is used rather than Docker's
default one because it works on every engine, including one started with `--bridge=none` (the
engine then has no default bridge), and without iptables, where Docker's userland proxy forwards
the published port. The price is that the server can open connections out of its container, which
the validator's profile forbids; the contract requires it to work offline (`HF_HUB_OFFLINE=1`),
so it needs none.

`docker_commands` writes the same options as `docker` command lines, for `--print`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from typing import Any, Final

import docker.types

from cacheon.agent.runtime import PORT

LABEL: Final = "cacheon.serve-leader"
NETWORK_DIFFERENCE: Final = (
    "The one difference from the validator's run profile is the network: validators run every"
    " server with --network none, which leaves no port to publish; serve-leader puts it on a"
    " bridge network of its own and publishes its port on ADDRESS:PORT (default 127.0.0.1), so"
    " the server could reach out of its container, which the contract says it never needs."
)


def container_name(port: int) -> str:
    """The container's and its network's name: one leader per host port."""
    return f"cacheon-leader-{port}"


def published(options: Mapping[str, Any], network: str, bind: str, port: int) -> dict[str, Any]:
    """The run profile's `options` on `network` with the server's port published on bind:port."""
    changed = {key: value for key, value in options.items() if key != "network_mode"}
    return {
        **changed,
        "labels": {LABEL: "1"},
        "network": network,
        "ports": {f"{PORT}/tcp": (bind, port)},
    }


def docker_commands(image: str, name: str, options: Mapping[str, Any]) -> list[str]:
    """The shell commands that run `image` as `name` with `options` (SDK `containers.run`
    keywords): a network create when the options name a network, then `docker run`."""
    argv = ["docker", "run", "--rm", "--name", name]
    for key, value in options.items():
        render = _FLAGS.get(key)
        if render is None:
            raise ValueError(f"no docker CLI flag for the run option {key!r}")
        argv += render(value)
    argv.append(image)
    lines = [shlex.join(argv)]
    if "network" in options:
        lines.insert(0, shlex.join(["docker", "network", "create", str(options["network"])]))
    return lines


def _repeat(flag: str, values: list[str]) -> list[str]:
    return [part for value in values for part in (flag, value)]


def _ulimits(ulimits: list[docker.types.Ulimit]) -> list[str]:
    return _repeat("--ulimit", [f"{u.name}={u.soft}:{u.hard}" for u in ulimits])


def _log(config: docker.types.LogConfig) -> list[str]:
    options = [f"{key}={value}" for key, value in config.config.items()]
    return ["--log-driver", config.type, *_repeat("--log-opt", options)]


def _gpus(requests: list[docker.types.DeviceRequest]) -> list[str]:
    if not requests:
        return []
    if requests != [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]:
        raise ValueError(f"no docker CLI flag for the device requests {requests}")
    return ["--gpus", "all"]


def _ports(ports: Mapping[str, tuple[str, int]]) -> list[str]:
    return _repeat(
        "-p", [f"{bind}:{host}:{inside.split('/')[0]}" for inside, (bind, host) in ports.items()]
    )


_FLAGS: Final[Mapping[str, Callable[[Any], list[str]]]] = {
    "environment": lambda env: _repeat("-e", [f"{k}={v}" for k, v in env.items()]),
    "labels": lambda labels: _repeat("--label", [f"{k}={v}" for k, v in labels.items()]),
    "network": lambda network: ["--network", network],
    "network_mode": lambda mode: ["--network", mode],
    "ports": _ports,
    "cap_drop": lambda caps: _repeat("--cap-drop", caps),
    "security_opt": lambda opts: _repeat("--security-opt", opts),
    "read_only": lambda on: ["--read-only"] if on else [],
    "tmpfs": lambda mounts: _repeat("--tmpfs", [f"{p}:{o}" for p, o in mounts.items()]),
    "shm_size": lambda size: ["--shm-size", str(size)],
    "ulimits": _ulimits,
    "pids_limit": lambda pids: ["--pids-limit", str(pids)],
    "mem_limit": lambda size: ["--memory", str(size)],
    "memswap_limit": lambda size: ["--memory-swap", str(size)],
    "volumes": lambda volumes: _repeat(
        "-v", [f"{host}:{v['bind']}:{v['mode']}" for host, v in volumes.items()]
    ),
    "log_config": _log,
    "device_requests": _gpus,
}
"""Each run option the profile uses, as the `docker run` flags that set it."""
