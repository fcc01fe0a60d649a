"""The ``anydgram`` command line.

``python -m anydgram`` and the ``anydgram`` console script both call :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anydgram",
        description="anydgram: async datagram servers and clients for asyncio, uvloop and trio.",
    )
    parser.add_argument("--version", action="version", version=f"anydgram {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = _build_parser()
    parser.parse_args(argv)
    parser.print_usage(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
