"""`cacheon-miner`: what a miner runs to commit an image and check on it."""

from __future__ import annotations

import argparse
import sys

from cacheon.cli.common import make_parser


def build_parser() -> argparse.ArgumentParser:
    return make_parser("cacheon-miner", "Cacheon miner tools: commit a server image on chain.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
