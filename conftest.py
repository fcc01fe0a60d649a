"""Run the Python code blocks of README.md and docs/*.md as tests (Sybil).

Every fenced ``python`` block runs, in order, in one namespace per document, unless the line
``<!-- skip: next -->`` stands just before it; ``<!-- invisible-code-block: python -->``
comments hold setup a reader does not need to see. Console and other blocks are not run.

- While a block runs, ``anyio.run(main)`` runs ``main`` on asyncio, asyncio with uvloop and
  trio in turn; a program that names a backend (``anyio.run(main, backend="trio")``) runs on
  that one only.
- A block that defines pytest-style tests (``def test_x()`` / ``async def test_x()``) has them
  called right after it runs; async ones go through the same ``anyio.run``, so on every
  backend. An ``anyio_backend`` fixture defined in the same document picks the backend (and
  options, such as trio's ``MockClock``) instead, as it would under pytest.
- pytest-timeout bounds every block like any other test.

``tests/docs_blocks.py`` extracts the same blocks for mypy and pyright.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any
from unittest import mock

import anyio
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

_anyio_run = anyio.run

BACKENDS: list[tuple[str, dict[str, Any]]] = [("asyncio", {"use_uvloop": False})]
if sys.platform != "win32":
    BACKENDS.append(("asyncio", {"use_uvloop": True}))
BACKENDS.append(("trio", {}))


def _backend_name(backend: str, options: dict[str, Any]) -> str:
    return "uvloop" if options.get("use_uvloop") else backend


def run_everywhere(
    func: Callable[..., Any],
    *args: Any,
    backend: str | None = None,
    backend_options: dict[str, Any] | None = None,
) -> Any:
    """``anyio.run`` for the docs: every backend in turn, or only the one the program names."""
    backends = BACKENDS if backend is None else [(backend, backend_options or {})]
    result = None
    for name, options in backends:
        try:
            result = _anyio_run(func, *args, backend=name, backend_options=options)
        except BaseException as error:
            error.add_note(f"(docs test: on backend {_backend_name(name, options)})")
            raise
    return result


def _fixture_function(value: Any) -> Callable[[], Any]:
    """The function behind a ``@pytest.fixture`` defined in a document."""
    for attribute in ("_get_wrapped_function", "__wrapped__"):
        found = getattr(value, attribute, None)
        if found is not None:
            return found() if attribute == "_get_wrapped_function" else found  # type: ignore[no-any-return]
    raise TypeError(f"cannot call the fixture {value!r}")


def _run_tests(namespace: dict[str, Any], seen: set[Any]) -> None:
    """Call the ``test_*`` functions a block just defined, as pytest with anyio would."""
    for name, value in list(namespace.items()):
        if not name.startswith("test_") or value in seen or not callable(value):
            continue
        seen.add(value)  # a later block that redefines the name defines a new test
        if inspect.signature(value).parameters:
            raise TypeError(f"docs test {name}() takes arguments: the docs runner has no fixtures")
        if inspect.iscoroutinefunction(value):
            if "anyio_backend" in namespace:
                backend: Any = _fixture_function(namespace["anyio_backend"])()
                if isinstance(backend, str):
                    run_everywhere(value, backend=backend)
                else:
                    run_everywhere(value, backend=backend[0], backend_options=backend[1])
            else:
                run_everywhere(value)
        else:
            value()


class _Runner:
    """Wraps the Python block parser: ``anyio.run`` on every backend, tests called."""

    def __init__(self) -> None:
        self._parser = PythonCodeBlockParser()

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self._parser(document):
            evaluate = region.evaluator
            assert evaluate is not None

            def evaluator(example: Example, evaluate: Any = evaluate) -> str | None:
                seen: set[Any] = example.namespace.setdefault("__docs_tests_seen__", set())
                with mock.patch.object(anyio, "run", run_everywhere):
                    result: str | None = evaluate(example)
                    if not result:
                        _run_tests(example.namespace, seen)
                return result

            region.evaluator = evaluator
            yield region


pytest_collect_file = Sybil(
    parsers=[_Runner(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    excludes=["docs/_build/*"],
).pytest()
