"""The devnet's dispatch error, in a leaf module so the devnet and its rule modules share it."""

from __future__ import annotations


class Rejected(Exception):
    """A dispatch error, named as the pallet names it."""

    def __init__(self, name: str, docs: str) -> None:
        super().__init__(f"{name}: {docs}")
        self.name = name
        self.docs = docs
