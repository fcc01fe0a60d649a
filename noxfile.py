"""Developer sessions: ``nox -s tests lint typecheck docs``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

LINT_PATHS = ["src", "tests", "benchmarks", "examples", "noxfile.py", "docs/conf.py", "conftest.py"]


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
    """Type-check the package, the tests and the docs' code with mypy --strict and pyright."""
    session.install("-e", ".[test,dev]")
    session.run("python", "tests/docs_blocks.py", "docs/_build/blocks")
    session.run("mypy", "--strict", "src", "tests", "examples", "docs/_build/blocks")
    session.run("pyright", "src", "tests", "examples", "docs/_build/blocks")


@nox.session
def examples(session: nox.Session) -> None:
    """Type-check the examples, then run each against its real peers (TFTP clients, sntp, ...).

    The TFTP test across a lossy link and the sntp tests (sntp asks port 123 only, so the
    server runs in a namespace of its own) need root to build network namespaces; they skip,
    saying so, without.
    """
    session.install("-e", ".[test,dev]")
    session.run("mypy", "--strict", "examples")
    session.run("pyright", "examples")
    session.run(
        "pytest",
        "tests/test_examples.py",
        "tests/test_example_tftp.py",
        "tests/test_example_sntp.py",
        "tests/test_dns_dnsperf.py",
        "tests/test_nginx.py",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation; any Sphinx warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run("python", "docs/check_reference.py", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark (benchmarks/run_all.py): tables on stdout, JSON and chart in results/.

    About 11 minutes on a 2-core machine (3 of them the DNS soak); ``nox -s bench -- --quick``
    is a short smoke run (about a minute), and ``-- --update-docs`` also refreshes
    docs/benchmarks.md and its chart. The peers it compares with (trio, uvloop, orjson,
    msgpack, cbor2, msgspec, EasyNetwork, dnslib), prometheus_client (for the scraped server
    row) and matplotlib come from the ``bench`` extra; the library itself never needs them.
    """
    # No byte-compiling at install: numpy and matplotlib would take half of a quick run's
    # minute. run_all.py compiles what the measured processes import.
    session.install("--no-compile", "-e", ".[bench]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)


#: The atheris harnesses: corpus name -> script (see docs/fuzzing.md).
FUZZ_HARNESSES = {
    "serializers": "tests/fuzz/fuzz_serializers.py",
    "server_path": "tests/fuzz/fuzz_server_path.py",
}
FUZZ_FLAGS = [
    "-runs=100000",
    "-max_total_time=300",  # a safety net: stop after 5 minutes even short of -runs
    "-max_len=4096",
    "-len_control=0",  # long inputs from the start: nesting and decompression limits need them
    "-timeout=30",  # one input running longer than this is a hang, reported as a crash
    "-print_final_stats=1",
]


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzz the serializers and the server's receive path with atheris, for a bounded time.

    Each harness runs 100,000 inputs (at most 300 s). libFuzzer flags given after ``--``
    override these (``nox -s fuzz -- -runs=1000``). New inputs go to a scratch directory, so
    the committed corpus in tests/fuzz/corpus/ is only read; ``--update-corpus`` merges the
    new inputs that add coverage into it. Crash reproducers go to tests/fuzz/artifacts/.
    """
    session.install("-e", ".[test]", "atheris")
    update_corpus = "--update-corpus" in session.posargs
    flags = [arg for arg in session.posargs if arg != "--update-corpus"]
    scratch_root = Path(session.create_tmp()) / "fuzz-corpus"
    for name, script in FUZZ_HARNESSES.items():
        corpus = Path("tests/fuzz/corpus") / name
        scratch = scratch_root / name
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        artifacts = Path("tests/fuzz/artifacts") / name
        artifacts.mkdir(parents=True, exist_ok=True)
        prefix = f"-artifact_prefix={artifacts}/"
        # libFuzzer writes new inputs to the first directory and only reads the others.
        session.run("python", script, *FUZZ_FLAGS, prefix, *flags, str(scratch), str(corpus))
        if update_corpus:
            session.run(
                "python", script, "-merge=1", "-max_len=4096", prefix, str(corpus), str(scratch)
            )
