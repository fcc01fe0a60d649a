"""Write the seed corpus of the fuzz harnesses: ``python tests/fuzz/make_corpus.py``.

Each harness lists its seeds (``seed_inputs()``: valid encodings of representative packets,
plus a few edge cases); this writes them to ``tests/fuzz/corpus/<harness>/``, one file per
seed, named after its target. Files already there are left alone unless ``--clean`` is given,
so entries merged in by ``nox -s fuzz -- --update-corpus`` survive a regeneration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


def harnesses() -> dict[str, Callable[[], dict[str, bytes]]]:
    """Each harness's corpus name and seed function."""
    # Run as a script, this file's directory (not tests/) is on sys.path.
    tests_dir = str(CORPUS_DIR.parent.parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from fuzz import fuzz_serializers, fuzz_server_path

    return {
        "serializers": fuzz_serializers.seed_inputs,
        "server_path": fuzz_server_path.seed_inputs,
    }


def write_corpus(root: Path, *, clean: bool = False) -> dict[str, int]:
    """Write every harness's seeds under ``root``; return how many files each got."""
    written: dict[str, int] = {}
    for name, seed_inputs in harnesses().items():
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        if clean:
            for old in directory.iterdir():
                old.unlink()
        seeds = seed_inputs()
        for file_name, data in seeds.items():
            (directory / file_name).write_bytes(data)
        written[name] = len(seeds)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--clean", action="store_true", help="delete every file in the corpus directories first"
    )
    parser.add_argument("--root", type=Path, default=CORPUS_DIR, help="where to write")
    args = parser.parse_args()
    for name, count in write_corpus(args.root, clean=args.clean).items():
        print(f"{args.root / name}: {count} seeds")


if __name__ == "__main__":
    main()
