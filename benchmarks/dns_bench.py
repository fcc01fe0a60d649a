"""The DNS example under ``dnsperf``, against the same answer logic on a plain blocking loop.

Each row is a responder on 127.0.0.1 answering from ``examples/zone.txt``: the example
(``examples/dns_responder.py --quiet``, a ``DatagramServer``) on each backend, and a blocking
``recvfrom``/``sendto`` loop calling the example's own ``answer_untrusted``, the loop a user
would write without a framework. ``dnsperf`` (Debian package ``dnsperf``) sends the queries,
with ``--outstanding`` queries in flight, for ``--seconds``; the responder is pinned to one CPU
and dnsperf to the other. Rounds are interleaved; the table gives medians.

    $ python benchmarks/dns_bench.py --rounds 3 --seconds 5

Queries per second and queries lost are dnsperf's; server CPU per query is the responder's
user + system time over the run (/proc). Every process started here is ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CLIENT_CPU, LOOPBACK, SERVER_CPU

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dns_responder.py"
ZONE = ROOT / "examples" / "zone.txt"
BACKENDS = ("asyncio", "uvloop", "trio")
REFERENCE = "blocking loop"

#: Names in the zone, one not in it (NXDOMAIN), and a type with no record (empty NOERROR).
_QUERIES = (
    "example.test A",
    "example.test AAAA",
    "www.example.test A",
    "www.example.test ANY",
    "missing.example.test A",
    "www.example.test AAAA",
)


def serve_blocking(zone_path: Path) -> None:
    """The baseline: the example's answer logic in a blocking loop (prints its port)."""
    sys.path.insert(0, str(EXAMPLE.parent))
    from dns_responder import (  # type: ignore[import-not-found, unused-ignore]
        Zone,
        answer_untrusted,
    )

    zone = Zone.from_text(zone_path.read_text(encoding="utf-8"))
    parent = os.getppid()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((LOOPBACK, 0))
        # A kernel receive timeout, not settimeout(): that would add a poll() per datagram.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 500_000))
        print(f"listening on {LOOPBACK}:{sock.getsockname()[1]}", flush=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and os.getppid() == parent:
            try:
                message, address = sock.recvfrom(65535)
            except BlockingIOError:  # the timeout: look at the limits
                continue
            response, _ = answer_untrusted(message, zone)
            if response is not None:
                sock.sendto(response, address)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(row: str) -> tuple[subprocess.Popen[str], int]:
    if row == REFERENCE:
        command = [sys.executable, __file__, "--serve-blocking"]
    else:
        backend = row.removeprefix("anydgram on ")
        command = [sys.executable, str(EXAMPLE), "--quiet", "--port", "0", "--backend", backend]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r":(\d+)\s*$", line)
    if found is None:
        process.kill()
        raise SystemExit(f"{row}: no port in {line!r}")
    os.sched_setaffinity(process.pid, {SERVER_CPU})
    return process, int(found.group(1))


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(row: str, queries: Path, seconds: float, outstanding: int) -> dict[str, Any]:
    """One dnsperf run against a fresh responder of ``row``."""
    process, port = _start(row)
    try:
        time.sleep(0.2)  # let the responder settle on its CPU before the clock starts
        cpu_before = _cpu_seconds(process.pid)
        done = subprocess.run(
            [
                *("taskset", "-c", str(CLIENT_CPU), "dnsperf", "-s", LOOPBACK, "-p", str(port)),
                *("-d", str(queries), "-l", str(seconds), "-q", str(outstanding), "-t", "2"),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        cpu = _cpu_seconds(process.pid) - cpu_before
    finally:
        _stop(process)
    if done.returncode != 0:
        raise SystemExit(f"dnsperf failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    numbers: dict[str, float] = {}
    for key, pattern in (
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([\d.]+)"),
    ):
        found = re.search(pattern, done.stdout)
        if found is None:
            raise SystemExit(f"no {key!r} in dnsperf's output:\n{done.stdout}")
        numbers[key] = float(found.group(1))
    completed = max(numbers["completed"], 1)
    return {**numbers, "cpu_us_per_query": cpu / completed * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--outstanding", type=int, default=64, help="dnsperf -q (default 64)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--serve-blocking", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_blocking:
        serve_blocking(ZONE)
        return
    if shutil.which("dnsperf") is None:
        reason = "dnsperf is not installed (Debian package: dnsperf): the DNS rows did not run"
        print(f"### DNS responder under dnsperf\n\n{reason}.")
        if args.json:
            Path(args.json).write_text(json.dumps({"benchmark": "dns", "skipped": reason}))
        return
    rows = [REFERENCE, *(f"anydgram on {b}" for b in args.backends.split(","))]
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    with tempfile.TemporaryDirectory() as scratch:
        queries = Path(scratch) / "queries.txt"
        queries.write_text("\n".join(_QUERIES) + "\n")
        for round_number in range(1, args.rounds + 1):
            for row in rows:
                print(f"[round {round_number}/{args.rounds}] {row}", file=sys.stderr)
                results[row].append(measure(row, queries, args.seconds, args.outstanding))
    print(
        f"### DNS responder under dnsperf\n\n{args.rounds} interleaved rounds of "
        f"{args.seconds:g} s, {args.outstanding} queries in flight; medians (min-max). "
        f"`x loop`: per-round ratio to the blocking loop with the same answer logic.\n"
    )
    print("| responder | queries/s | x loop | server CPU us/query | lost |")
    print("|---|--:|--:|--:|--:|")
    for row in rows:
        runs = results[row]
        qps = [r["qps"] for r in runs]
        ratios = [r["qps"] / ref["qps"] for r, ref in zip(runs, results[REFERENCE], strict=True)]
        cpu = statistics.median(r["cpu_us_per_query"] for r in runs)
        lost = sum(int(r["lost"]) for r in runs)
        print(
            f"| {row} | {statistics.median(qps):,.0f} ({min(qps):,.0f}-{max(qps):,.0f}) "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x) "
            f"| {cpu:.1f} | {lost} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "dns", "rows": results}, indent=2))


if __name__ == "__main__":
    main()
