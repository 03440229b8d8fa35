"""`cacheon-agent`: the benchmark agent that runs on the GPU pod.

It must import only the base install (no bittensor, boto3, asyncssh): the pod runs hostile
containers and holds no validator secret or validator-only dependency.
"""

from __future__ import annotations

import argparse
import sys

from cacheon import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cacheon-agent",
        description="Cacheon benchmark agent: runs one round's launches on a GPU pod.",
    )
    parser.add_argument("--version", action="version", version=f"cacheon-agent {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
