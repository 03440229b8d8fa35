"""Start and stop the real services the tests and the demo use: dockerd, a registry, sshd, S3.

Every service listens on 127.0.0.1 only, on a free port, with its state in its own temporary
directory, and is stopped by PID (SIGTERM, then SIGKILL) with its directory removed. A service
that cannot start raises `ServiceError` with the reason and the tail of its log, so a broken
environment fails loudly instead of skipping tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import docker
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

LOOPBACK = "127.0.0.1"
TEST_SSH_USER = "cacheon-test"
POD_SSH_USER = "cacheon-pod"


class ServiceError(RuntimeError):
    """A local service could not be started or used."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _require(binary: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise ServiceError(
            f"{binary} is not installed; run `make test` (it installs the test services)"
        )
    return found


@dataclass
class _Process:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    def wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            with contextlib.suppress(OSError):
                if check():
                    return
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} not ready after {timeout:.0f}s:\n{_tail(self.log_path)}")

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _http_ok(url: str, accept: tuple[int, ...] = (200,)) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code in accept
    except httpx.HTTPError:
        return False


# --- dockerd -------------------------------------------------------------------------------------


@dataclass
class DockerDaemon:
    """A private dockerd: own data-root, exec-root and unix socket; no bridge, no iptables."""

    root: Path
    process: _Process

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)

    @classmethod
    def start(cls) -> DockerDaemon:
        dockerd = _require("dockerd")
        # unix socket paths are limited to ~108 bytes: keep the root short
        root = Path(tempfile.mkdtemp(prefix="cdk-", dir="/tmp"))
        argv = [
            dockerd,
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", f"unix://{root}/docker.sock",
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--log-level=warn",
        ]  # fmt: skip
        process = _Process("dockerd", argv, root / "dockerd.log")
        daemon = cls(root, process)
        process.start()
        try:
            process.wait_ready(daemon._ping, timeout=60)
        except ServiceError:
            daemon._cleanup()
            raise
        return daemon

    def _ping(self) -> bool:
        if not (self.root / "docker.sock").exists():
            return False
        client = self.client()
        try:
            return bool(client.ping())
        except Exception:  # the engine answers errors of many kinds while it starts
            return False
        finally:
            client.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            client = self.client()
            for container in client.containers.list(all=True):
                container.remove(force=True)
            client.close()
        self.process.stop(grace=15)
        self._cleanup()

    def _cleanup(self) -> None:
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


# --- registry ------------------------------------------------------------------------------------


@dataclass
class Registry:
    """Debian's docker-registry (distribution v2) on 127.0.0.1 with its own storage."""

    root: Path
    port: int
    process: _Process

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @classmethod
    def start(cls) -> Registry:
        binary = _require("docker-registry")
        root = Path(tempfile.mkdtemp(prefix="cacheon-registry-"))
        for _attempt in range(5):
            port = free_port()
            config = root / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n"
                f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
                f'http:\n  addr: {LOOPBACK}:{port}\n  debug:\n    addr: ""\n'
                "health:\n  storagedriver:\n    enabled: false\n"
            )
            process = _Process(
                "docker-registry", [binary, "serve", str(config)], root / "registry.log"
            )
            registry = cls(root, port, process)
            process.start()
            try:
                process.wait_ready(partial(_http_ok, f"{registry.url}/v2/"), timeout=20)
            except ServiceError as exc:
                if "address already in use" in str(exc):
                    continue
                shutil.rmtree(root, ignore_errors=True)
                raise
            return registry
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceError("docker-registry: no free port after 5 attempts")

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- sshd ----------------------------------------------------------------------------------------


@dataclass
class Sshd:
    """OpenSSH sshd on 127.0.0.1, key-only, for a dedicated user whose shell is /bin/sh.

    `Sshd.start(POD_SSH_USER, as_root=True, environment={"DOCKER_HOST": ...})` is a stand-in
    for a rented GPU pod: providers log us in as root (the agent drives docker and joins
    container network namespaces), here through a uid-0 alias whose shell starts fast.
    """

    root: Path
    port: int
    user: str
    client_key: Path
    host_public_key: str
    agent_root: Path
    process: _Process

    @property
    def known_hosts_line(self) -> str:
        return f"[{LOOPBACK}]:{self.port} {self.host_public_key}"

    @classmethod
    def start(
        cls,
        user: str = TEST_SSH_USER,
        *,
        as_root: bool = False,
        environment: dict[str, str] | None = None,
    ) -> Sshd:
        sshd = _require("sshd")
        keygen = _require("ssh-keygen")
        _ensure_user(user, as_root=as_root)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="cacheon-sshd-"))
        root.chmod(0o755)  # sshd reads authorized_keys as the user
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                check=True,
            )
        authorized = root / "authorized_keys"
        shutil.copy(root / "client_ed25519.pub", authorized)
        authorized.chmod(0o644)
        agent_root = root / "agent"
        agent_root.mkdir()
        shutil.chown(agent_root, user=user)
        host_public_key = " ".join((root / "host_ed25519.pub").read_text().split()[:2])
        for _attempt in range(10):
            port = free_port()
            config = root / "sshd_config"
            config.write_text(
                f"Port {port}\nListenAddress {LOOPBACK}\nHostKey {root / 'host_ed25519'}\n"
                f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
                f"AllowUsers {user}\nPubkeyAuthentication yes\n"
                f"PermitRootLogin {'prohibit-password' if as_root else 'no'}\n"
                + "".join(f"SetEnv {k}={v}\n" for k, v in (environment or {}).items())
                + "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                "StrictModes no\nAllowTcpForwarding yes\nX11Forwarding no\nPrintMotd no\n"
                "ClientAliveInterval 15\nSubsystem sftp internal-sftp\n"
            )
            process = _Process("sshd", [sshd, "-D", "-e", "-f", str(config)], root / "sshd.log")
            server = cls(
                root, port, user, root / "client_ed25519", host_public_key, agent_root, process
            )
            process.start()
            try:
                process.wait_ready(server._banner, timeout=10)
            except ServiceError as exc:
                if "Address already in use" in str(exc) or "Cannot bind" in str(exc):
                    continue
                shutil.rmtree(root, ignore_errors=True)
                raise
            return server
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceError("sshd: no free port after 10 attempts")

    def _banner(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0")

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def power_off(self) -> None:
        """The machine dies: the listener and every open session end at once (a stopped sshd
        alone keeps its sessions). What its sessions left detached runs on, unreachable."""
        proc = self.process.proc
        if proc is None:
            return
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.stop(grace=0.5)


def _descendants(root: int) -> list[int]:
    """Every process whose chain of parents reaches `root` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _ensure_user(user: str, *, as_root: bool = False) -> None:
    try:
        found = pwd.getpwnam(user)
    except KeyError:
        # password "*": no password login, but not "locked" (sshd refuses locked accounts)
        alias = ["--non-unique", "--uid", "0", "--gid", "0"] if as_root else []
        subprocess.run(
            [
                _require("useradd"),
                "--create-home",
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                *alias,
                user,
            ],
            check=True,
            capture_output=True,
        )
        return
    if (found.pw_uid == 0) != as_root:
        raise ServiceError(
            f"user {user} exists with uid {found.pw_uid}; expected as_root={as_root}"
        )


# --- S3 ------------------------------------------------------------------------------------------


@dataclass
class SeaweedS3:
    """SeaweedFS with its S3 gateway: real SigV4 checks, presigned URLs and expiry."""

    root: Path
    port: int
    access_key: str
    secret_key: str
    process: _Process
    ports: list[int] = field(default_factory=list)

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    @classmethod
    def start(cls) -> SeaweedS3:
        weed = _require_weed()
        root = Path(tempfile.mkdtemp(prefix="cacheon-s3-"))
        access_key = "AKID" + os.urandom(8).hex().upper()
        secret_key = os.urandom(20).hex()
        config = root / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        for _attempt in range(5):
            ports = _seaweed_ports(8)
            master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
            argv = [
                weed, "server",
                f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={root / 'data'}",
                f"-master.port={master}", f"-master.port.grpc={master_grpc}",
                "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
                "-master.volumeSizeLimitMB=64",
                f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=400",
                "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
                "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
            ]  # fmt: skip
            (root / "data").mkdir(exist_ok=True)
            process = _Process("seaweedfs", argv, root / "weed.log")
            server = cls(root, s3, access_key, secret_key, process, ports)
            process.start()
            try:
                process.wait_ready(server._writable, timeout=60)
            except ServiceError as exc:
                server._cleanup_sockets()
                if "address already in use" in str(exc):
                    continue
                shutil.rmtree(root, ignore_errors=True)
                raise
            return server
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceError("seaweedfs: no free ports after 5 attempts")

    def _writable(self) -> bool:
        """Ready means an object can be written, not just that the port answers."""
        if not _http_ok(self.endpoint_url, accept=(200, 403)):
            return False
        s3 = self.client()
        try:
            with contextlib.suppress(ClientError):
                s3.create_bucket(Bucket="cacheon-probe")
            s3.put_object(Bucket="cacheon-probe", Key="probe", Body=b"ok")
            return True
        except (BotoCoreError, ClientError):
            return False

    def stop(self) -> None:
        # SeaweedFS ignores SIGTERM for a long time; a short grace then SIGKILL
        self.process.stop(grace=2)
        self._cleanup_sockets()
        shutil.rmtree(self.root, ignore_errors=True)

    def _cleanup_sockets(self) -> None:
        """SeaweedFS leaves unix sockets named after its ports in /tmp."""
        for port in self.ports:
            pattern = f"seaweedfs-*-{port}.sock"
            for sock in Path("/tmp").glob(pattern):  # noqa: S108 (where SeaweedFS puts them)
                sock.unlink(missing_ok=True)


def _require_weed() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return _require("weed")


def _seaweed_ports(count: int) -> list[int]:
    """Free ports in 20000-30000 (SeaweedFS derives defaults from +10000; we pass every port)."""
    chosen: list[int] = []
    rng = random.Random()  # noqa: S311 (port choice, not security)
    while len(chosen) < count:
        port = rng.randrange(20000, 30000)
        if port not in chosen and port_is_free(port) and port_is_free(port + 10000):
            chosen.append(port)
    return chosen


# --- images --------------------------------------------------------------------------------------


def busybox_rootfs_tar(extra_files: dict[str, bytes] | None = None) -> bytes:
    """A tiny image filesystem (busybox-static plus optional files) as an uncompressed tar."""
    busybox = Path(_require("busybox")).resolve()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "ls", "cat", "echo", "sleep", "id", "httpd", "wc", "env"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, content in (extra_files or {}).items():
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(content)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def push_test_image(
    daemon: DockerDaemon,
    registry: Registry,
    repository: str,
    extra_files: dict[str, bytes] | None = None,
) -> str:
    """Import a busybox image, push it to the test registry, return its canonical digest reference."""
    client = daemon.client()
    try:
        target = f"{registry.host}/{repository}"
        client.api.import_image_from_data(
            busybox_rootfs_tar(extra_files),
            repository=target,
            tag="latest",
            changes=['CMD ["/bin/sh"]'],
        )
        digest = None
        for event in client.api.push(target, tag="latest", stream=True, decode=True):
            if "error" in event:
                raise ServiceError(f"push {target}: {event['error']}")
            digest = event.get("aux", {}).get("Digest", digest)
        if digest is None:
            raise ServiceError(f"push {target}: the registry returned no digest")
        return f"{target}@{digest}"
    finally:
        client.close()
