"""`cacheon-validator devnet init|register|advance|show`: drive the simulated chain by hand.

For the demo, tests and miners trying the commit flow without a real subnet: the devnet file is
named by the network, `--subtensor.network sim://<path>`, so every other command reaches the same
chain by the same flag.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cacheon.chain.devnet import Devnet, DevnetError, SubnetParams, db_path
from cacheon.chain.wallet import (
    WalletError,
    coldkey_address,
    dev_address,
    hotkey_address,
    open_wallet,
)
from cacheon.cli.common import EXIT_FAILED, EXIT_USAGE, add_settings_arguments, load_or_exit
from cacheon.cli.help import add_command
from cacheon.config import WalletSettings

OWNER_URI = "//CacheonDevnetOwner"
"""The simulated subnet owner's key, when `init` is not given one; its hotkey is the burn uid."""


def add_devnet_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devnet = add_command(
        commands,
        "devnet",
        "drive a simulated chain (sim://<path>)",
        "cacheon-validator devnet init --subtensor.network sim://devnet.db --netuid 14 --block-time 0",
        "cacheon-validator devnet show --subtensor.network sim://devnet.db",
    )
    sub = devnet.add_subparsers(dest="devnet_command", metavar="SUBCOMMAND", required=True)

    init = add_command(
        sub,
        "init",
        "create the devnet file and the subnet",
        "cacheon-validator devnet init --subtensor.network sim://devnet.db --netuid 14 --block-time 0",
        "cacheon-validator devnet init --subtensor.network sim://devnet.db --netuid 14 --tempo 10 --commit-reveal",
    )
    init.add_argument(
        "--block-time", metavar="SECONDS", type=float, default=12.0, help="0 = on demand"
    )
    init.add_argument(
        "--owner-hotkey", metavar="HOTKEY", help="ss58 of the subnet owner hotkey (the burn uid)"
    )
    for name, default in (
        ("tempo", 360),
        ("weights-rate-limit", 100),
        ("weights-version-key", 0),
        ("min-allowed-weights", 1),
        ("max-weights-limit", 65535),
        ("max-space", 3100),
    ):
        init.add_argument(
            f"--{name}", metavar="N", type=int, default=default, help=f"default {default}"
        )
    init.add_argument("--commit-reveal", action="store_true", help="timelocked weight commits")

    register = add_command(
        sub,
        "register",
        "register a hotkey (the wallet's, or --hotkey)",
        "cacheon-validator devnet register --subtensor.network sim://devnet.db --netuid 14 --wallet.name validator --validator",
        "cacheon-validator devnet register --subtensor.network sim://devnet.db --netuid 14 --hotkey 5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX",
    )
    register.add_argument(
        "--hotkey", metavar="HOTKEY", help="ss58 to register instead of the wallet's hotkey"
    )
    register.add_argument("--validator", action="store_true", help="grant a validator permit")

    advance = add_command(
        sub,
        "advance",
        "produce empty blocks now",
        "cacheon-validator devnet advance 360 --subtensor.network sim://devnet.db",
    )
    advance.add_argument(
        "blocks", metavar="BLOCKS", type=int, nargs="?", default=1, help="default 1"
    )

    show = add_command(
        sub,
        "show",
        "print the chain state as JSON",
        "cacheon-validator devnet show --subtensor.network sim://devnet.db",
    )
    for parser in (init, register, advance, show):
        add_settings_arguments(parser)


def run_devnet(args: argparse.Namespace) -> int:
    settings = load_or_exit(args).settings
    path = db_path(settings.chain.chain_endpoint or settings.chain.network)
    if path is None:
        print("devnet: set --subtensor.network sim://<path>", file=sys.stderr)
        return EXIT_USAGE
    netuid = settings.chain.netuid
    try:
        if args.devnet_command == "init":
            devnet = Devnet.create(path, block_time_s=args.block_time)
            owner = args.owner_hotkey or dev_address(OWNER_URI)
            devnet.add_subnet(
                netuid,
                SubnetParams(
                    owner_hotkey=owner,
                    owner_coldkey=owner,
                    tempo=args.tempo,
                    weights_rate_limit=args.weights_rate_limit,
                    weights_version_key=args.weights_version_key,
                    commit_reveal=args.commit_reveal,
                    min_allowed_weights=args.min_allowed_weights,
                    max_weights_limit=args.max_weights_limit,
                    max_space=args.max_space,
                ),
            )
            devnet.register(netuid, owner, owner)
            print(f"devnet {path}: netuid {netuid}, owner {owner} at uid 0, block {devnet.head()}")
        elif args.devnet_command == "register":
            devnet = Devnet(path)
            hotkey, coldkey = _keys(args, settings.wallet)
            uid = devnet.register(netuid, hotkey, coldkey, validator_permit=args.validator)
            print(f"registered {hotkey} on netuid {netuid} as uid {uid}")
        elif args.devnet_command == "advance":
            print(f"block {Devnet(path).advance(args.blocks)}")
        else:
            print(json.dumps(_show(Devnet(path), netuid), indent=2))
    except DevnetError as exc:
        print(f"devnet: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _keys(args: argparse.Namespace, settings: WalletSettings) -> tuple[str, str]:
    if args.hotkey:
        return args.hotkey, args.hotkey
    wallet = open_wallet(settings)
    try:
        return hotkey_address(wallet), coldkey_address(wallet)
    except WalletError as exc:
        raise DevnetError(str(exc)) from None


def _show(devnet: Devnet, netuid: int) -> dict[str, object]:
    block = devnet.head()
    subnet = devnet.subnet(netuid)
    return {
        "path": str(Path(devnet.path)),
        "block": block,
        "netuid": netuid,
        "hyperparameters": subnet.params.__dict__,
        "neurons": [n.__dict__ for n in devnet.neurons(netuid, block)],
        "commitments": [
            {
                "hotkey": c.hotkey,
                "block": c.block,
                "text": b"".join(bytes.fromhex(v[2:]) for f in c.fields for v in f.values()).decode(
                    "utf-8", "replace"
                ),
            }
            for c in devnet.commitments(netuid, block)
        ],
        "weights": {str(uid): row for uid, row in devnet.weights(netuid, block).items()},
        "weight_commits": [
            {"hotkey": h, "block": b, "reveal_round": r}
            for _, h, b, _, r in devnet.weight_commits(netuid, block)
        ],
    }
