"""The Python code blocks of README.md and docs/*.md, as the docs test and the type check see them.

A fenced ``python`` block is run unless the line ``<!-- skip: next -->`` comes just before it;
an ``<!-- invisible-code-block: python ... -->`` comment is run too (setup a reader does not
need to see). ``conftest.py`` at the repository root runs them with Sybil; this module extracts
the same blocks so that mypy and pyright can check them:

    python tests/docs_blocks.py OUTDIR   # writes one module per program into OUTDIR

A block whose first statement is an import starts a new program; any other block continues
the program before it in the same document (as it does in the document's shared namespace).
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_SKIP_NEXT = "<!-- skip: next -->"
_INVISIBLE = re.compile(r"^<!--\s*invisible-code-block:\s*python\s*$")


@dataclass(frozen=True)
class Block:
    """One code block: where it starts (1-based line of its fence), its source, and its fate."""

    line: int
    source: str
    skipped: bool
    invisible: bool


def documents() -> list[Path]:
    """README.md and every docs/*.md, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[Block]:
    """The Python blocks of one Markdown document, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    skip_next = False
    i = 0
    while i < len(lines):
        line = lines[i].strip()  # blocks in list items are indented
        if line == _SKIP_NEXT:
            skip_next = True
        elif _INVISIBLE.match(line):
            start = i
            i += 1
            body: list[str] = []
            while lines[i].strip() != "-->":
                body.append(lines[i])
                i += 1
            source = textwrap.dedent("\n".join(body) + "\n")
            blocks.append(Block(start + 1, source, skip_next, invisible=True))
            skip_next = False
        elif line.startswith("```"):
            fence = line[: len(line) - len(line.lstrip("`"))]
            language = line[len(fence) :].strip()
            start = i
            i += 1
            body = []
            while lines[i].strip() != fence:
                body.append(lines[i])
                i += 1
            if language == "python":
                source = textwrap.dedent("\n".join(body) + "\n")
                blocks.append(Block(start + 1, source, skip_next, invisible=False))
            skip_next = False
        elif line.startswith("<!-- skip:"):
            raise ValueError(f"{path}:{i + 1}: only {_SKIP_NEXT!r} is supported")
        i += 1
    return blocks


def module_name(path: Path) -> str:
    """The stem of the extracted modules for a document: ``docs_requests``, ``readme``."""
    stem = path.stem.lower().replace("-", "_")
    return stem if path.parent == ROOT else f"docs_{stem}"


def _starts_program(block: Block) -> bool:
    for line in block.source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.startswith(("import ", "from "))
    return False


def programs(path: Path) -> list[list[Block]]:
    """The document's runnable blocks, grouped into programs (see the module docstring)."""
    grouped: list[list[Block]] = []
    for block in python_blocks(path):
        if block.skipped:
            continue
        if _starts_program(block) or not grouped:
            grouped.append([block])
        else:
            grouped[-1].append(block)
    return grouped


def skipped_programs(path: Path) -> list[list[Block]]:
    """The skipped blocks that are whole programs (they start with an import): not run, since
    they bind a fixed port, serve forever or need a web server, but type-checked all the same."""
    return [[b] for b in python_blocks(path) if b.skipped and _starts_program(b)]


def extract(outdir: Path) -> list[Path]:
    """Write every program of every document as a module in ``outdir``; return the modules.

    The runnable programs are ``<document>_<n>.py``; the skipped whole programs
    ``<document>_skipped_<n>.py``.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for document in documents():
        relative = document.relative_to(ROOT)
        named = [
            *((f"{module_name(document)}_{n}", p) for n, p in enumerate(programs(document), 1)),
            *(
                (f"{module_name(document)}_skipped_{n}", p)
                for n, p in enumerate(skipped_programs(document), 1)
            ),
        ]
        for stem, program in named:
            parts = [f'"""Python blocks of {relative}, extracted for the type checkers."""\n']
            for block in program:
                parts.append(f"\n# {relative}:{block.line}\n{block.source}")
            target = outdir / f"{stem}.py"
            target.write_text("".join(parts), encoding="utf-8")
            written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/docs_blocks.py OUTDIR")
    for written_path in extract(Path(sys.argv[1])):
        print(written_path)
