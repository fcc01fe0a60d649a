"""Client round trips: one datagram in flight against a raw echo server, per client and backend.

Each row (a client on a backend) runs in a fresh child process pinned to CPU 0; the echo server
runs pinned to CPU 1: the fastest one available, the ``recvmmsg``/``sendmmsg`` loop of
``_echo_servers.py`` on Linux, else the blocking loop of ``_raw_echo_server.py``
(``--server``). A child warms up, then does round trips until ``--count`` or ``--seconds`` is
reached, and reports round trips per second and the client's CPU time (user + system, from
getrusage) per round trip, the headline metric. Rows are interleaved over ``--rounds`` rounds;
the table shows the median and the min-max range, and ratios to the raw blocking socket loop of
the same round.

Run from the repository root: ``python benchmarks/client_rtt.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from _common import (
    CLIENT_CPU,
    LOOPBACK,
    SERVER_CPU,
    Summary,
    cpu_times,
    environment,
    markdown_table,
    paired_ratios,
    pin_to_cpu,
    raw_echo_server,
    run_child,
    run_interleaved,
    server_process,
    write_json,
)
from _loadgen import mmsg_available

_SERVERS = Path(__file__).with_name("_echo_servers.py")

#: How long one round trip may take before it counts as a timeout (the datagram was lost).
REQUEST_TIMEOUT = 1.0
#: Round trips between two looks at the clock.
_CHUNK = 64

BACKENDS = ("asyncio", "uvloop", "trio")
BLOCKING = "blocking"

#: ``round_trips(payload, count, deadline)`` does up to ``count`` round trips, stopping early
#: once ``time.perf_counter()`` passes ``deadline``; it returns ``(attempts, timeouts)``.
AsyncRoundTrips = Callable[[bytes, int, float], Awaitable[tuple[int, int]]]
SyncRoundTrips = Callable[[bytes, int, float], tuple[int, int]]


# -- the clients -------------------------------------------------------------------------------
# Each loop is written the way a user would write it, with a per-request timeout so a lost
# datagram cannot hang the run.


@asynccontextmanager
async def open_anydgram_client(host: str, port: int) -> AsyncIterator[AsyncRoundTrips]:
    # Imported here so the other rows still run while the package is broken. The ignore goes
    # once the package ships its py.typed marker.
    import anydgram  # type: ignore[import-untyped, unused-ignore]

    async def round_trips(payload: bytes, count: int, deadline: float) -> tuple[int, int]:
        attempts = timeouts = 0
        while attempts < count and time.perf_counter() < deadline:
            chunk = min(_CHUNK, count - attempts)
            for _ in range(chunk):
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        await client.send_packet(payload)
                        await client.recv_packet()
                except TimeoutError:
                    timeouts += 1
            attempts += chunk
        return attempts, timeouts

    async with await anydgram.connect_udp(host, port) as client:
        yield round_trips


@asynccontextmanager
async def open_anyio_client(host: str, port: int) -> AsyncIterator[AsyncRoundTrips]:
    async def round_trips(payload: bytes, count: int, deadline: float) -> tuple[int, int]:
        attempts = timeouts = 0
        while attempts < count and time.perf_counter() < deadline:
            chunk = min(_CHUNK, count - attempts)
            for _ in range(chunk):
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        await udp.send(payload)
                        await udp.receive()
                except TimeoutError:
                    timeouts += 1
            attempts += chunk
        return attempts, timeouts

    async with await anyio.create_connected_udp_socket(host, port) as udp:
        yield round_trips


@contextmanager
def open_sync_client(host: str, port: int) -> Iterator[SyncRoundTrips]:
    import anydgram

    def round_trips(payload: bytes, count: int, deadline: float) -> tuple[int, int]:
        attempts = timeouts = 0
        while attempts < count and time.perf_counter() < deadline:
            chunk = min(_CHUNK, count - attempts)
            for _ in range(chunk):
                client.send_packet(payload)
                try:
                    client.recv_packet(timeout=REQUEST_TIMEOUT)
                except TimeoutError:
                    timeouts += 1
            attempts += chunk
        return attempts, timeouts

    with anydgram.SyncDatagramClient(host, port) as client:
        yield round_trips


@contextmanager
def open_raw_socket(host: str, port: int) -> Iterator[SyncRoundTrips]:
    def round_trips(payload: bytes, count: int, deadline: float) -> tuple[int, int]:
        attempts = timeouts = 0
        while attempts < count and time.perf_counter() < deadline:
            chunk = min(_CHUNK, count - attempts)
            for _ in range(chunk):
                sock.send(payload)
                try:
                    sock.recv(65536)
                except BlockingIOError:  # SO_RCVTIMEO expired
                    timeouts += 1
            attempts += chunk
        return attempts, timeouts

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # A kernel receive timeout keeps one system call per receive; settimeout() would add a
        # poll() to each and make the baseline slower than the loop it stands for.
        seconds = int(REQUEST_TIMEOUT)
        micros = int((REQUEST_TIMEOUT - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        sock.connect((host, port))
        yield round_trips


@dataclass(frozen=True)
class ClientKind:
    """A client to measure: async ones run on every backend, blocking ones once."""

    label: str
    open_async: Callable[[str, int], AbstractAsyncContextManager[AsyncRoundTrips]] | None = None
    open_sync: Callable[[str, int], AbstractContextManager[SyncRoundTrips]] | None = None


BASELINE = "raw"
CLIENTS: dict[str, ClientKind] = {
    "raw": ClientKind("raw blocking socket", open_sync=open_raw_socket),
    "sync": ClientKind("anydgram SyncDatagramClient", open_sync=open_sync_client),
    "anydgram": ClientKind("anydgram DatagramClient", open_async=open_anydgram_client),
    "anyio": ClientKind("anyio connected UDP socket", open_async=open_anyio_client),
}
#: (client, reference): the table ends with the client's CPU per round trip relative to the
#: reference on the same backend. DESIGN.md: DatagramClient costs no more than anyio's client.
COMPARISONS = (("anydgram", "anyio"),)


# -- one measurement, in a child process ---------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much one child measures."""

    size: int
    count: int
    seconds: float
    warmup_count: int
    warmup_seconds: float

    def child_args(self) -> list[str]:
        return [
            f"--size={self.size}",
            f"--count={self.count}",
            f"--seconds={self.seconds}",
            f"--warmup-count={self.warmup_count}",
            f"--warmup-seconds={self.warmup_seconds}",
        ]


def _report(
    attempts: int, timeouts: int, wall: float, user: float, system: float
) -> dict[str, Any]:
    round_trips = attempts - timeouts
    return {
        "round_trips": round_trips,
        "timeouts": timeouts,
        "wall_s": wall,
        "user_s": user,
        "system_s": system,
        "rtt_per_s": round_trips / wall if wall else math.nan,
        "cpu_us_per_rtt": (user + system) / round_trips * 1e6 if round_trips else math.nan,
    }


async def _measure_async(kind: ClientKind, host: str, port: int, plan: Plan) -> dict[str, Any]:
    assert kind.open_async is not None
    payload = bytes(plan.size)
    async with kind.open_async(host, port) as round_trips:
        await round_trips(payload, plan.warmup_count, time.perf_counter() + plan.warmup_seconds)
        cpu_before, start = cpu_times(), time.perf_counter()
        attempts, timeouts = await round_trips(payload, plan.count, start + plan.seconds)
        wall, cpu = time.perf_counter() - start, cpu_times() - cpu_before
    return _report(attempts, timeouts, wall, cpu.user, cpu.system)


def _measure_sync(kind: ClientKind, host: str, port: int, plan: Plan) -> dict[str, Any]:
    assert kind.open_sync is not None
    payload = bytes(plan.size)
    with kind.open_sync(host, port) as round_trips:
        round_trips(payload, plan.warmup_count, time.perf_counter() + plan.warmup_seconds)
        cpu_before, start = cpu_times(), time.perf_counter()
        attempts, timeouts = round_trips(payload, plan.count, start + plan.seconds)
        wall, cpu = time.perf_counter() - start, cpu_times() - cpu_before
    return _report(attempts, timeouts, wall, cpu.user, cpu.system)


def child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="client_rtt.py child")
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--backend", choices=(*BACKENDS, BLOCKING), required=True)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup-count", type=int, required=True)
    parser.add_argument("--warmup-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    pinned = pin_to_cpu(CLIENT_CPU)
    kind = CLIENTS[args.client]
    plan = Plan(args.size, args.count, args.seconds, args.warmup_count, args.warmup_seconds)
    if args.backend == BLOCKING:
        result = _measure_sync(kind, args.host, args.port, plan)
    else:
        backend = "trio" if args.backend == "trio" else "asyncio"
        options = {"use_uvloop": True} if args.backend == "uvloop" else {}
        result = anyio.run(
            _measure_async,
            kind,
            args.host,
            args.port,
            plan,
            backend=backend,
            backend_options=options,
        )
    result["pinned"] = pinned
    print(json.dumps(result))


# -- the driver ----------------------------------------------------------------------------------

#: The echo servers the clients can be measured against. Both answer one datagram with one
#: reply and no per-datagram Python work beyond that; the batched one spends fewer system
#: calls, so it answers a little sooner, and the client's own CPU per round trip, the headline
#: metric, does not depend on which one runs.
ECHO_SERVERS = {
    "raw-mmsg": "raw recvmmsg/sendmmsg echo server",
    "raw": "raw blocking echo server",
}


@contextmanager
def echo_server(kind: str, *, max_seconds: float) -> Iterator[tuple[str, int]]:
    """Run the echo server ``kind`` (a key of ``ECHO_SERVERS``); yield its ``(host, port)``."""
    if kind == "raw":
        with raw_echo_server(max_seconds=max_seconds) as address:
            yield address
        return
    argv = [str(_SERVERS), kind, "blocking", f"--cpu={SERVER_CPU}"]
    argv.append(f"--max-seconds={max_seconds:.0f}")
    with server_process(argv) as (_, port):
        yield LOOPBACK, port


class Row(NamedTuple):
    client: str
    backend: str

    def __str__(self) -> str:
        return f"{CLIENTS[self.client].label} on {self.backend}"


def all_rows(clients: Sequence[str], backends: Sequence[str]) -> list[Row]:
    """The baseline first, then every client on each backend, grouped by backend."""
    rows = [Row(name, BLOCKING) for name in clients if CLIENTS[name].open_sync is not None]
    for backend in backends:
        rows += [Row(name, backend) for name in clients if CLIENTS[name].open_async is not None]
    return rows


def measure_row(row: Row, host: str, port: int, plan: Plan) -> dict[str, Any]:
    """Run one child for ``row``; a failure is recorded (and logged), not raised."""
    argv = [__file__, "child", f"--client={row.client}", f"--backend={row.backend}"]
    argv += [f"--host={host}", f"--port={port}", *plan.child_args()]
    budget = plan.warmup_seconds + plan.seconds + REQUEST_TIMEOUT * 2 + 30
    try:
        return run_child(argv, timeout=budget)
    except RuntimeError as exc:
        print(f"  failed: {exc}", file=sys.stderr)
        return {"error": str(exc)}


def _metric(rounds: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r.get(key, math.nan)) for r in rounds]


def render(results: dict[Row, list[dict[str, Any]]], plan: Plan, rounds: int, server: str) -> str:
    baseline = next((r for r in results if r.client == BASELINE), None)
    base_cpu = _metric(results[baseline], "cpu_us_per_rtt") if baseline else []
    base_rate = _metric(results[baseline], "rtt_per_s") if baseline else []
    headers = [
        "client",
        "backend",
        "round trips/s",
        "CPU us/round trip",
        "CPU x raw",
        "round trips/s x raw",
        "timeouts",
        "failed rounds",
    ]
    lines = []
    for row, row_rounds in results.items():
        cpu, rate = _metric(row_rounds, "cpu_us_per_rtt"), _metric(row_rounds, "rtt_per_s")
        lines.append(
            [
                CLIENTS[row.client].label,
                row.backend,
                Summary.of(rate).format(".0f"),
                Summary.of(cpu).format(".2f"),
                Summary.of(paired_ratios(cpu, base_cpu)).format(".2f", "x"),
                Summary.of(paired_ratios(rate, base_rate)).format(".2f", "x"),
                str(sum(int(r.get("timeouts", 0)) for r in row_rounds)),
                str(sum("error" in r for r in row_rounds)),
            ]
        )
    out = [
        f"### Client round trips, {plan.size} B payload, one datagram in flight",
        "",
        f"Against the {ECHO_SERVERS[server]}, pinned to CPU {SERVER_CPU}; clients pinned to "
        f"CPU {CLIENT_CPU}. "
        f"{rounds} interleaved rounds of up to {plan.count} round trips or {plan.seconds} s; "
        "median (min-max). CPU is the client process's user + system time. "
        "Ratios are per round against the raw blocking socket loop of the same round.",
        "",
        markdown_table(headers, lines),
    ]
    comparison_lines = []
    for client, reference in COMPARISONS:
        for backend in BACKENDS:
            mine, theirs = Row(client, backend), Row(reference, backend)
            if mine not in results or theirs not in results:
                continue
            ratios = paired_ratios(
                _metric(results[mine], "cpu_us_per_rtt"), _metric(results[theirs], "cpu_us_per_rtt")
            )
            summary = Summary.of(ratios)
            verdict = "yes" if summary.median <= 1.0 else "no"
            comparison_lines.append(
                [
                    CLIENTS[client].label,
                    CLIENTS[reference].label,
                    backend,
                    summary.format(".2f", "x"),
                    verdict,
                ]
            )
    if comparison_lines:
        out += [
            "",
            "CPU per round trip relative to the reference client on the same backend "
            "(per-round ratios, median (min-max)):",
            "",
            markdown_table(
                ["client", "reference", "backend", "CPU ratio", "<= 1.0x"], comparison_lines
            ),
        ]
    return "\n".join(out)


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 20 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument("--count", type=int, help="round trips per measurement, at most")
    parser.add_argument("--seconds", type=float, help="seconds per measurement, at most")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    parser.add_argument(
        "--server",
        choices=("auto", *ECHO_SERVERS),
        default="auto",
        help="the echo server (auto: the fastest one available, raw-mmsg on Linux)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    server = args.server
    if server == "auto":
        server = "raw-mmsg" if mmsg_available() else "raw"
    clients = [c for c in args.clients.split(",") if c]
    backends = [b for b in args.backends.split(",") if b]
    unknown = [c for c in clients if c not in CLIENTS] + [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown client or backend: {', '.join(unknown)}")
    if not 0 <= args.size <= 65507:
        parser.error("--size must be between 0 and 65507")
    rounds = args.rounds or (3 if args.quick else 5)
    plan = Plan(
        size=args.size,
        count=args.count or (50_000 if args.quick else 200_000),
        seconds=args.seconds or (0.3 if args.quick else 1.5),
        warmup_count=500 if args.quick else 2_000,
        warmup_seconds=0.1 if args.quick else 0.25,
    )
    rows = all_rows(clients, backends)
    env = environment()
    # Enough for every child to run to its limits, so the server never outlives its use by much.
    server_seconds = len(rows) * rounds * (plan.warmup_seconds + plan.seconds + 10) + 60
    with echo_server(server, max_seconds=server_seconds) as (host, port):
        results = run_interleaved(rows, rounds, lambda row: measure_row(row, host, port, plan))
    print(render(results, plan, rounds, server))
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "client_rtt",
                "plan": asdict(plan)
                | {"rounds": rounds, "request_timeout_s": REQUEST_TIMEOUT, "server": server},
                "environment": env,
                "rows": [
                    {"client": row.client, "backend": row.backend, "rounds": row_rounds}
                    for row, row_rounds in results.items()
                ],
            },
        )


if __name__ == "__main__":
    main(sys.argv[1:])
