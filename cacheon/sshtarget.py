"""Where a pod is reached over SSH: the one type that renting and reaching a pod share.

`pods/` learns the address from the provider and records it in the lease; `remote/` connects to
it. Both are middle packages that must not import each other (DESIGN.md §2), so the type sits
here, beside `protocol`, and imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    host_key: str | None = None
    """`<type> <base64>` pinned for this pod; None: take the key seen first and pin it."""

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"
