"""The docs' Python blocks: what the Sybil runner sees, and whether they pass the type checkers.

The blocks themselves run as tests collected by the root ``conftest.py`` (``README.md::line:N``
and ``docs/x.md::line:N``); here they are checked with ``mypy --strict`` and pyright's strict
mode, as first-contact code must be. Both checks skip when the tool is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sniffio
from sybil import Document
from sybil.parsers.markdown import PythonCodeBlockParser

from docs_blocks import ROOT, documents, extract, programs, python_blocks

pytestmark = pytest.mark.timeout(300)  # a cold type checker is slow on a shared machine


def test_the_extractor_finds_the_blocks_sybil_runs() -> None:
    total = 0
    for document in documents():
        text = document.read_text("utf-8")
        ours = [block.line for block in python_blocks(document)]
        regions = PythonCodeBlockParser()(Document(text, str(document)))
        theirs = sorted(text.count("\n", 0, region.start) + 1 for region in regions)
        # The type checkers see exactly the blocks Sybil runs or skips, at the same places.
        assert ours == theirs, document
        total += len(ours)
    assert total > 10


def _docs_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_runner", ROOT / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where() -> tuple[str, str]:
    library = sniffio.current_async_library()
    if library == "asyncio":
        return library, type(asyncio.get_running_loop()).__module__.split(".")[0]
    return library, ""


def test_docs_anyio_run_runs_main_on_every_backend() -> None:
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        seen.append(_where())

    _docs_runner().run_everywhere(main)
    expected = [("asyncio", "asyncio")]
    if sys.platform != "win32":
        expected.append(("asyncio", "uvloop"))
    assert seen == [*expected, ("trio", "")]


def test_docs_tests_are_called_and_their_failures_name_the_backend() -> None:
    runner = _docs_runner()
    calls: list[tuple[str, str]] = []

    async def test_fails_on_trio() -> None:
        calls.append(_where())
        assert sniffio.current_async_library() != "trio"

    namespace: dict[str, Any] = {"test_fails_on_trio": test_fails_on_trio}
    with pytest.raises(AssertionError) as caught:
        runner._run_tests(namespace, set())
    assert calls[-1] == ("trio", "")
    assert "(docs test: on backend trio)" in (caught.value.__notes__ or [])


def _extracted(tmp_path: Path) -> Path:
    outdir = tmp_path / "blocks"
    written = extract(outdir)
    assert len(written) >= 5
    return outdir


def test_docs_blocks_pass_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (the dev extra)")
    outdir = _extracted(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_blocks_pass_pyright_strict(tmp_path: Path) -> None:
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent)) or shutil.which(
        "pyright"
    )
    if pyright is None:
        pytest.skip("pyright is not installed (the dev extra)")
    outdir = _extracted(tmp_path)
    config = {"include": ["."], "pythonVersion": "3.11", "typeCheckingMode": "strict"}
    (outdir / "pyrightconfig.json").write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [pyright, "--pythonpath", sys.executable, "-p", str(outdir / "pyrightconfig.json")],
        cwd=outdir,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_programs_group_fragments_with_the_program_before_them() -> None:
    (testing,) = [d for d in documents() if d.name == "testing.md"]
    grouped = programs(testing)
    # The page's first program (handler, test, lossy test) and the virtual-time test module.
    assert len(grouped) == 2
    assert "def test_retries_hide_loss" in "".join(b.source for b in grouped[0])
