"""The validator's own SSH key for pods: ed25519, private file mode 0600, public key beside it.

One key per validator, created once by `cacheon-validator keys init` and given to every provider
at rent time, so that no provider-side or personal key is ever needed to reach a pod.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from cacheon.pods.base import PodError


class PodKeyError(PodError):
    """The pod key is missing or unusable."""


@dataclass(frozen=True)
class PodKey:
    path: Path
    private: asyncssh.SSHKey
    public_line: str
    """`ssh-ed25519 AAAA… comment`, as providers want it."""


def init_key(path: Path, comment: str = "cacheon-validator") -> tuple[PodKey, bool]:
    """Create the key unless it exists; returns the key and whether it was created now."""
    path = path.expanduser()
    if path.exists():
        return load_key(path), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    public = key.export_public_key().decode().strip()
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return PodKey(path, key, public), True


def load_key(path: Path) -> PodKey:
    path = path.expanduser()
    try:
        mode = path.stat().st_mode & 0o777
        key = asyncssh.read_private_key(path)
    except FileNotFoundError:
        raise PodKeyError(
            f"{path}: no pod SSH key; create it with `cacheon-validator keys init`"
        ) from None
    except (OSError, asyncssh.KeyImportError) as exc:
        raise PodKeyError(f"{path}: not a usable SSH private key ({exc})") from None
    if mode & 0o077:
        raise PodKeyError(f"{path}: mode {mode:o} lets others read the pod key; chmod 600 it")
    return PodKey(path, key, key.export_public_key().decode().strip())
