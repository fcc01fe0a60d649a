"""Developer sessions: ``nox -s tests lint typecheck docs``."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

LINT_PATHS = ["src", "tests", "benchmarks", "examples", "noxfile.py", "docs/conf.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on asyncio, asyncio+uvloop and trio, with coverage."""
    session.install("-e", ".[test]")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report", "--skip-covered", "--show-missing")


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the tests with mypy --strict and pyright."""
    session.install("-e", ".[test,dev]")
    session.run("mypy", "--strict", "src", "tests")
    session.run("pyright", "src", "tests")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation; any Sphinx warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
