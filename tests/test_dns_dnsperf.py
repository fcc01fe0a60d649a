"""The DNS example under ``dnsperf``, and the dnslib server the benchmark sets beside it.

``dnsperf`` (Debian package ``dnsperf``) sends the query mix of ``benchmarks/dns_bench.py`` to
``examples/dns_responder.py`` on each backend, at a fixed rate far below what any backend
reaches (the benchmark measures the maximum; a test on a shared machine cannot): every query
must be answered, none lost, and the answers' codes must be the mix's. The benchmark's dnslib
row (``dns_bench.py --serve-dnslib``: dnslib's ``DNSServer`` with the example's zone) must give
the same answers as the example to the same queries, so the two are compared like for like.

A tool or library that is not installed skips its test with the reason.
"""

from __future__ import annotations

import importlib.util
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from example_harness import ExampleProcess, require_tool

BACKENDS = ["asyncio", "uvloop", "trio"]
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

#: dnsperf's load: queries per second, seconds, queries in flight.
RATE, SECONDS, OUTSTANDING = 2000, 2, 16


def load_dns_bench() -> ModuleType:
    """``benchmarks/dns_bench.py`` as a module (its ``_common`` import needs its directory)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("dns_bench", BENCHMARKS / "dns_bench.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The benchmark's queries, and a dnsperf data file holding them."""
    mix: list[str] = list(load_dns_bench()._QUERIES)
    path = tmp_path_factory.mktemp("dnsperf") / "queries.txt"
    path.write_text("\n".join(mix) + "\n")
    return mix, path


@pytest.mark.parametrize("backend", BACKENDS)
def test_dnsperf_loses_no_query(backend: str, queries: tuple[list[str], Path]) -> None:
    dnsperf = require_tool("dnsperf", "dnsperf")
    mix, path = queries
    argv = ["--quiet", "--port", "0", "--backend", backend]
    with ExampleProcess("dns_responder.py", *argv) as server:
        _, port = server.address()
        load = ["-l", str(SECONDS), "-Q", str(RATE), "-q", str(OUTSTANDING), "-t", "2"]
        done = subprocess.run(
            [dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", str(path), *load],
            capture_output=True,
            text=True,
            timeout=SECONDS + 30,
            check=False,
        )
        assert server.stop() == 0, server.stderr()
    assert done.returncode == 0, done.stdout + done.stderr

    def number(pattern: str) -> int:
        found = re.search(pattern, done.stdout)
        assert found is not None, (pattern, done.stdout)
        return int(found[1])

    sent = number(r"Queries sent:\s+(\d+)")
    completed = number(r"Queries completed:\s+(\d+)")
    assert number(r"Queries lost:\s+(\d+)") == 0
    assert completed == sent
    assert sent >= RATE * SECONDS * 0.8
    # dnsperf goes through the file in order: one query in six is for a missing name.
    nxdomain = number(r"NXDOMAIN (\d+)")
    assert abs(nxdomain - completed * mix.count("missing.example.test A") / len(mix)) <= 2
    assert number(r"NOERROR (\d+)") == completed - nxdomain


@pytest.fixture(scope="module")
def dnslib_port() -> Generator[int, None, None]:
    """The benchmark's dnslib row, serving the example's zone on 127.0.0.1; its port."""
    pytest.importorskip("dnslib", reason="dnslib is not installed (the test and bench extras)")
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "dns_bench.py"), "--serve-dnslib"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the dnslib server printed no address within 20 s"
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", process.stdout.readline())
        assert found is not None
        yield int(found[1])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def test_dnslib_row_gives_the_example_s_answers(
    dnslib_port: int, queries: tuple[list[str], Path]
) -> None:
    pytest.importorskip("dns.message", reason="dnspython is not installed (the test extra)")
    import dns.exception
    import dns.message
    import dns.query

    def answers(port: int, name: str, rdtype: str) -> tuple[int, list[str]]:
        query = dns.message.make_query(name, rdtype)
        deadline = time.monotonic() + 10
        while True:  # the server may still be starting: retried within a deadline
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
                break
            except dns.exception.Timeout:
                assert time.monotonic() < deadline, f"no answer from port {port}"
        records = sorted(line for rrset in reply.answer for line in rrset.to_text().splitlines())
        return reply.rcode(), records

    mix, _ = queries
    with ExampleProcess("dns_responder.py", "--quiet", "--port", "0") as example:
        _, example_port = example.address()
        for query in mix:
            name, rdtype = query.split()
            expected: tuple[int, list[str]] = answers(example_port, name, rdtype)
            got: Any = answers(dnslib_port, name, rdtype)
            assert got == expected, query
        assert example.stop() == 0, example.stderr()
