"""The DNS example under ``dnsperf``, against dnslib's server and a plain blocking loop.

Each row is a responder on 127.0.0.1 answering from ``examples/zone.txt``: the example
(``examples/dns_responder.py --quiet``, a ``DatagramServer``) on each backend; ``dnslib``'s
``DNSServer`` with its ``ZoneResolver`` loaded with the same records, the server a Python
user would otherwise pick (``pip install dnslib``, in the bench extra); and a blocking
``recvfrom``/``sendto`` loop calling the example's own ``response_untrusted``, the loop a user
would write without a framework. ``dnsperf`` (Debian package ``dnsperf``) sends the queries,
with ``--outstanding`` queries in flight, for ``--seconds``; the responder is pinned to one CPU
and dnsperf to the other. Rounds are interleaved; the table gives medians.

Then the soak: for each backend, a fresh example answers dnsperf for ``--soak-seconds`` at 80%
of the queries per second that backend reached above (``dnsperf -Q``), while its resident
memory is sampled every second. It must lose no query, and its memory must stay flat.

    $ python benchmarks/dns_bench.py --rounds 3 --seconds 5 --soak-seconds 60

Queries per second and queries lost are dnsperf's; server CPU per query is the responder's
user + system time over the run (/proc). Every process started here is ended by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
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
import threading
import time
from pathlib import Path
from typing import Any

from _common import CLIENT_CPU, LOOPBACK, SERVER_CPU

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dns_responder.py"
ZONE = ROOT / "examples" / "zone.txt"
BACKENDS = ("asyncio", "uvloop", "trio")
REFERENCE = "blocking loop"
DNSLIB = "dnslib DNSServer"
#: The acceptance line: the example answers at least this many times dnslib's queries.
DNSLIB_RATIO = 10.0
#: The soak's load, as a share of the maximum rate measured in the same run.
SOAK_SHARE = 0.8
#: Memory is flat when the resident set of the soak's last SOAK_WINDOW seconds exceeds that of
#: its first ones (after the first second) by less than this (medians of the samples).
FLAT_RSS_BYTES = 2 << 20
SOAK_WINDOW = 10

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
        response_untrusted,
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
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while time.monotonic() < deadline and os.getppid() == parent:
            # The limits are looked at every 256 queries and at each timeout, not per query.
            for _ in range(256):
                try:
                    message, address = recvfrom(65535)
                except BlockingIOError:  # the timeout: look at the limits
                    break
                response = response_untrusted(message, zone)
                if response is not None:
                    sendto(response, address)


def serve_dnslib(zone_path: Path) -> None:
    """dnslib's DNSServer with a ZoneResolver holding the same records (prints its port)."""
    from dnslib.server import DNSLogger, DNSServer  # type: ignore[import-not-found, unused-ignore]
    from dnslib.zoneresolver import ZoneResolver  # type: ignore[import-not-found, unused-ignore]

    sys.path.insert(0, str(EXAMPLE.parent))
    from dns_responder import Zone  # type: ignore[import-not-found, unused-ignore]

    # The example's zone lines (NAME [TTL] TYPE ADDRESS) as master-file records; parsed by the
    # example first, so both responders serve exactly the records the example accepts.
    text = zone_path.read_text(encoding="utf-8")
    Zone.from_text(text)
    records = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        name, ttl, rtype, value = fields if len(fields) == 4 else (fields[0], "300", *fields[1:])
        records.append(f"{name} {ttl} IN {rtype} {value}")
    quiet = DNSLogger("-request,-reply,-truncated", prefix=False)  # errors only, as --quiet
    server = DNSServer(ZoneResolver("\n".join(records)), address=LOOPBACK, port=0, logger=quiet)
    print(f"listening on {LOOPBACK}:{server.server.server_address[1]}", flush=True)
    parent = os.getppid()

    def watchdog() -> None:  # bounded like the blocking loop: orphaned or after 600 s, exit
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server.start()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _start(row: str) -> tuple[subprocess.Popen[str], int]:
    if row == REFERENCE:
        command = [sys.executable, __file__, "--serve-blocking"]
    elif row == DNSLIB:
        command = [sys.executable, __file__, "--serve-dnslib"]
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


def _dnsperf_command(
    port: int, queries: Path, seconds: float, outstanding: int, rate: float | None = None
) -> list[str]:
    command = [
        *("taskset", "-c", str(CLIENT_CPU), "dnsperf", "-s", LOOPBACK, "-p", str(port)),
        *("-d", str(queries), "-l", str(seconds), "-q", str(outstanding), "-t", "2"),
    ]
    return command if rate is None else [*command, "-Q", str(int(rate))]


def _dnsperf_numbers(returncode: int, stdout: str, stderr: str) -> dict[str, float]:
    if returncode != 0:
        raise SystemExit(f"dnsperf failed ({returncode}):\n{stdout}\n{stderr}")
    numbers: dict[str, float] = {}
    for key, pattern in (
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([\d.]+)"),
    ):
        found = re.search(pattern, stdout)
        if found is None:
            raise SystemExit(f"no {key!r} in dnsperf's output:\n{stdout}")
        numbers[key] = float(found.group(1))
    return numbers


def measure(row: str, queries: Path, seconds: float, outstanding: int) -> dict[str, Any]:
    """One dnsperf run against a fresh responder of ``row``."""
    process, port = _start(row)
    try:
        time.sleep(0.2)  # let the responder settle on its CPU before the clock starts
        cpu_before = _cpu_seconds(process.pid)
        done = subprocess.run(
            _dnsperf_command(port, queries, seconds, outstanding),
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        cpu = _cpu_seconds(process.pid) - cpu_before
    finally:
        _stop(process)
    numbers = _dnsperf_numbers(done.returncode, done.stdout, done.stderr)
    completed = max(numbers["completed"], 1)
    return {**numbers, "cpu_us_per_query": cpu / completed * 1e6}


def soak(row: str, queries: Path, seconds: float, outstanding: int, rate: float) -> dict[str, Any]:
    """dnsperf at ``rate`` queries per second for ``seconds``, the responder's RSS sampled."""
    process, port = _start(row)
    try:
        time.sleep(0.2)
        with subprocess.Popen(
            _dnsperf_command(port, queries, seconds, outstanding, rate),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as dnsperf:
            rss: list[int] = []
            deadline = time.monotonic() + seconds + 30
            while dnsperf.poll() is None and time.monotonic() < deadline:
                rss.append(_rss_bytes(process.pid))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    dnsperf.wait(timeout=1.0)  # a sample a second, until dnsperf is done
            if dnsperf.poll() is None:
                dnsperf.kill()
            stdout, stderr = dnsperf.communicate(timeout=10)
    finally:
        _stop(process)
    numbers = _dnsperf_numbers(dnsperf.returncode, stdout, stderr)
    window = max(1, min(SOAK_WINDOW, (len(rss) - 1) // 3))
    first = statistics.median(rss[1 : 1 + window])  # the first second is the start-up
    last = statistics.median(rss[-window:])
    return {**numbers, "rate": rate, "rss": rss, "rss_first": first, "rss_last": last}


def _mib(size: float) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def report_soak(soaks: dict[str, dict[str, Any]], seconds: float) -> None:
    print(
        f"\n#### Soak\n\n{seconds:g} s of dnsperf at {SOAK_SHARE:.0%} of each backend's median "
        "rate above (`dnsperf -Q`), resident memory sampled every second; first and last: the "
        f"medians of the first (after the first second) and of the last {SOAK_WINDOW} samples "
        f"(fewer in a short soak); flat: grown by less than {_mib(FLAT_RSS_BYTES)}.\n"
    )
    print("| responder | asked queries/s | answered queries/s | lost | RSS first | RSS last | "
          "RSS growth | flat |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for row, result in soaks.items():
        growth = result["rss_last"] - result["rss_first"]
        flat = "yes" if growth < FLAT_RSS_BYTES else "**no**"
        print(
            f"| {row} | {result['rate']:,.0f} | {result['qps']:,.0f} | {int(result['lost'])} "
            f"| {_mib(result['rss_first'])} | {_mib(result['rss_last'])} "
            f"| {growth / 1024:+,.0f} KiB | {flat} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--outstanding", type=int, default=64, help="dnsperf -q (default 64)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--soak-seconds", type=float, default=60.0, help="per backend; 0 for no soak (60)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--serve-blocking", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-dnslib", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_blocking:
        serve_blocking(ZONE)
        return
    if args.serve_dnslib:
        serve_dnslib(ZONE)
        return
    if shutil.which("dnsperf") is None:
        reason = "dnsperf is not installed (Debian package: dnsperf): the DNS rows did not run"
        print(f"### DNS responder under dnsperf\n\n{reason}.")
        if args.json:
            Path(args.json).write_text(json.dumps({"benchmark": "dns", "skipped": reason}))
        return
    backend_rows = [f"anydgram on {b}" for b in args.backends.split(",")]
    rows = [REFERENCE, *backend_rows]
    notes: list[str] = []
    try:
        import dnslib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        notes.append("dnslib is not installed (the bench extra): its row did not run.")
    else:
        rows.insert(1, DNSLIB)
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    soaks: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        queries = Path(scratch) / "queries.txt"
        queries.write_text("\n".join(_QUERIES) + "\n")
        for round_number in range(1, args.rounds + 1):
            for row in rows:
                print(f"[round {round_number}/{args.rounds}] {row}", file=sys.stderr)
                results[row].append(measure(row, queries, args.seconds, args.outstanding))
        if args.soak_seconds > 0:
            for row in backend_rows:
                rate = SOAK_SHARE * statistics.median(r["qps"] for r in results[row])
                print(f"[soak] {row} at {rate:,.0f} queries/s", file=sys.stderr)
                soaks[row] = soak(row, queries, args.soak_seconds, args.outstanding, rate)
    print(
        f"### DNS responder under dnsperf\n\n{args.rounds} interleaved rounds of "
        f"{args.seconds:g} s, {args.outstanding} queries in flight; medians (min-max). "
        "`x loop`: per-round ratio to the blocking loop with the same answer logic; "
        "`x dnslib`: per-round ratio to dnslib's `DNSServer` with the same zone.\n"
    )
    print("| responder | queries/s | x loop | x dnslib | server CPU us/query | lost |")
    print("|---|--:|--:|--:|--:|--:|")
    for row in rows:
        runs = results[row]
        qps = [r["qps"] for r in runs]
        cpu = statistics.median(r["cpu_us_per_query"] for r in runs)
        lost = sum(int(r["lost"]) for r in runs)
        print(
            f"| {row} | {statistics.median(qps):,.0f} ({min(qps):,.0f}-{max(qps):,.0f}) "
            f"| {_ratio(runs, results[REFERENCE])} "
            f"| {_ratio(runs, results[DNSLIB]) if DNSLIB in results else ''} "
            f"| {cpu:.1f} | {lost} |"
        )
    if DNSLIB in results:
        below = [
            row
            for row in backend_rows
            if statistics.median(_ratios(results[row], results[DNSLIB])) < DNSLIB_RATIO
        ]
        lost_rows = [row for row in backend_rows if any(r["lost"] for r in results[row])]
        verdict = "met" if not below and not lost_rows else "**not met**"
        notes.append(
            f"Acceptance (>= {DNSLIB_RATIO:g}x dnslib's queries per second on every backend, "
            f"0 lost): {verdict}."
        )
    if soaks:
        report_soak(soaks, args.soak_seconds)
    for note in notes:
        print(f"\n{note}")
    if args.json:
        raw = {"benchmark": "dns", "rows": results, "soak": soaks}
        Path(args.json).write_text(json.dumps(raw, indent=2))


def _ratios(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[float]:
    return [r["qps"] / ref["qps"] for r, ref in zip(runs, reference, strict=True)]


def _ratio(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    ratios = _ratios(runs, reference)
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"


if __name__ == "__main__":
    main()
