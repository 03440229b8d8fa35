"""The wallet, opened in one place: its addresses, whether a service can use it, dev wallets.

The validator, the miner CLI, the doctor and the local arena all need the same few things of a
wallet, and each used to build `bt.Wallet` by hand and catch its errors its own way. Here the
rules are written once: addresses come from the public key files without unlocking anything, a
wallet that cannot be read raises `WalletError` naming it and why, and the SDK's wallet type
stays inside `chain/` (callers hold a `Wallet` and hand it back to the chain client to sign).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

import bittensor as bt
from bittensor.keyfiles import KeyfileError
from bittensor.sp_core import Keypair

from cacheon.config import WalletSettings
from cacheon.protocol import Hotkey

Wallet: TypeAlias = bt.Wallet
"""The SDK's wallet; opaque outside `chain/`, which signs with it."""

DEV_HOTKEY = "hk"
"""The hotkey name of every development wallet (`dev_wallet`)."""

_UNREADABLE = (OSError, ValueError, KeyfileError, bt.BittensorError)


class WalletError(Exception):
    """The wallet cannot be read; the message names it and says why."""


def open_wallet(settings: WalletSettings) -> Wallet:
    """The configured wallet; no file is read until an address or a signature is asked for."""
    return bt.Wallet(name=settings.name, hotkey=settings.hotkey, path=settings.path)


def hotkey_address(wallet: Wallet) -> Hotkey:
    """The hotkey's ss58 from its public file (else the hotkey file), unlocking nothing."""
    try:
        try:
            return Hotkey(str(wallet.hotkeypub.ss58_address))
        except FileNotFoundError:
            return Hotkey(str(wallet.hotkey.ss58_address))
    except _UNREADABLE as exc:
        raise WalletError(f"cannot read the hotkey of wallet {_where(wallet)}: {exc}") from None


def coldkey_address(wallet: Wallet) -> str:
    """The coldkey's ss58 from its public file; the coldkey itself is never opened."""
    try:
        return str(wallet.coldkeypub.ss58_address)
    except _UNREADABLE as exc:
        raise WalletError(f"cannot read the coldkey of wallet {_where(wallet)}: {exc}") from None


def service_problem(wallet: Wallet) -> str | None:
    """Why a service (no terminal, no password) cannot sign with this hotkey; None if it can."""
    keyfile = wallet.hotkey_file
    where = _where(wallet)
    if not keyfile.exists_on_device():
        fix = "copy the validator's hotkey there or set wallet.name, wallet.hotkey, wallet.path"
        return f"no hotkey file for {where}: {fix}"
    if not keyfile.is_readable():
        return f"hotkey of {where} is not readable by this user"
    if keyfile.is_encrypted():
        return (
            f"hotkey of {where} is encrypted: a service cannot type its password; "
            "regenerate it unencrypted (btcli wallet regen_hotkey --no-use-password)"
        )
    return None


def dev_wallet(path: Path, name: str, seed: int) -> Wallet:
    """A development wallet with unencrypted keys derived from `seed`, for devnets and tests:
    the same seed always gives the same addresses, and nothing waits on entropy or a password."""
    wallet = bt.Wallet(name=name, hotkey=DEV_HOTKEY, path=str(path))
    wallet.regenerate_coldkey(
        seed=f"0x{seed:064x}", use_password=False, overwrite=True, suppress=True
    )
    wallet.regenerate_hotkey(
        seed=f"0x{seed + 1000:064x}", use_password=False, overwrite=True, suppress=True
    )
    return wallet


def dev_address(uri: str) -> str:
    """The ss58 of a development key given by its URI (`//Alice`): a devnet's stand-in owner."""
    return str(Keypair.create_from_uri(uri).ss58_address)


def _where(wallet: Wallet) -> str:
    return f"{wallet.name}/{wallet.hotkey_str} under {wallet.path}"
