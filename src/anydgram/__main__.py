"""``python -m anydgram`` and the ``anydgram`` console script: the command line.

The commands live in the private ``anydgram._cli`` package; see ``anydgram --help``.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ("main",)

if __name__ == "__main__":
    sys.exit(main())
