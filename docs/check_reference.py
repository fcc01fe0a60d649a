"""Fail when a public name is missing from the built API reference.

Run after the HTML build: ``python docs/check_reference.py docs/_build/html``. Every name in
the ``__all__`` of each public namespace must be in the Sphinx inventory (objects.inv).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

NAMESPACES = (
    "anydgram",
    "anydgram.dtls",
    "anydgram.metrics",
    "anydgram.serializers",
    "anydgram.testing",
)


def main(build_dir: str) -> int:
    """Print each public name the built reference lacks; return 1 if there is any."""
    path = Path(build_dir) / "objects.inv"
    with path.open("rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    documented = {name for entries in inventory.values() for name in entries}
    missing = [
        f"{namespace}.{name}"
        for namespace in NAMESPACES
        for name in importlib.import_module(namespace).__all__
        if f"{namespace}.{name}" not in documented
    ]
    for name in missing:
        print(f"not in the API reference: {name}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html"))
