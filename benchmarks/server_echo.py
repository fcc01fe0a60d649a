"""Echo servers under load: anydgram's server against the loops a user would write by hand.

Each server runs in its own process pinned to CPU 1 (``_echo_servers.py``); the load generator
(``_loadgen.py``) runs in a fresh process pinned to CPU 0 for every measurement and keeps a
window of datagrams in flight: 64 (throughput), 128 (a loss check) or 1 (ping-pong), with
64-byte and 1200-byte payloads. It reports replies per second, latency percentiles and losses,
and reads the server's CPU time from ``/proc`` over exactly the measured seconds, so the table
shows server CPU microseconds per datagram beside the throughput.

Rows are interleaved (A B C ... A B C ...) over ``--rounds`` rounds: in each round every server
starts once and serves every load in turn. The table shows the median and the min-max range,
and ratios to the raw blocking socket loop of the same round: the reference of the performance
contract in ``DESIGN.md``.

Run from the repository root: ``python benchmarks/server_echo.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from _common import (
    CLIENT_CPU,
    LOOPBACK,
    SERVER_CPU,
    Summary,
    environment,
    markdown_table,
    paired_ratios,
    run_child,
    run_interleaved,
    server_process,
    write_json,
)
from _loadgen import mmsg_available
from _scraper import SCRAPE_INTERVAL, Scraper

_HERE = Path(__file__).parent
_LOADGEN = _HERE / "_loadgen.py"
_SERVERS = _HERE / "_echo_servers.py"

BACKENDS = ("asyncio", "uvloop", "trio")
BLOCKING = "blocking"


# -- what is measured ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerKind:
    """One way of writing an echo server, run on each of ``backends``.

    ``group`` says which loads it takes: ``"reference"`` and ``"anydgram"`` rows take every
    load; ``"baseline"`` rows only the throughput loads; ``"stopgap"`` rows stand in for the
    anydgram server while ``anydgram.DatagramServer`` does not exist (they take every load then,
    and only the first throughput load once it does). ``requires`` names what must be there
    for the row to run at all (see ``missing_requirement``).
    """

    label: str
    server: str
    backends: tuple[str, ...]
    group: str
    protocol: str = "bytes"
    requires: str | None = None
    #: The backends measured with ``--quick``.
    quick: tuple[str, ...] = ()
    #: Only the throughput loads, whatever the group (a variant of a row that takes them all).
    throughput_only: bool = False
    #: The server serves /metrics and a scraper GETs it every 100 ms during each load.
    scraped: bool = False

    @property
    def payload(self) -> str:
        return "json" if self.protocol in ("json", "msgspec") else "binary"


REFERENCE = "raw"
#: While this is missing, the DatagramEndpoint rows stand in for the server rows.
SERVER_REQUIREMENT = "anydgram.DatagramServer"
SERVERS: dict[str, ServerKind] = {
    "raw": ServerKind(
        "raw blocking socket loop", "raw", (BLOCKING,), "reference", quick=(BLOCKING,)
    ),
    "raw-mmsg": ServerKind(
        "raw recvmmsg/sendmmsg loop",
        "raw-mmsg",
        (BLOCKING,),
        "baseline",
        requires="sendmmsg",
        quick=(BLOCKING,),
    ),
    "asyncio-protocol": ServerKind(
        "asyncio DatagramProtocol",
        "asyncio-protocol",
        ("asyncio", "uvloop"),
        "baseline",
        quick=("asyncio",),
    ),
    "anyio-udp": ServerKind(
        "anyio UDPSocket loop", "anyio-udp", BACKENDS, "baseline", quick=("asyncio",)
    ),
    "trio-socket": ServerKind("trio socket loop", "trio-socket", ("trio",), "baseline"),
    "easynetwork": ServerKind(
        "EasyNetwork AsyncUDPNetworkServer",
        "easynetwork",
        BACKENDS,
        "baseline",
        requires="easynetwork.servers.AsyncUDPNetworkServer",
        quick=("asyncio",),
    ),
    "anydgram-endpoint": ServerKind(
        "anydgram DatagramEndpoint loop",
        "anydgram-endpoint",
        BACKENDS,
        "stopgap",
        quick=BACKENDS,
    ),
    "anydgram-server": ServerKind(
        "anydgram DatagramServer (bytes)",
        "anydgram-server",
        BACKENDS,
        "anydgram",
        requires="anydgram.DatagramServer",
        quick=BACKENDS,
    ),
    "anydgram-server-return": ServerKind(
        "anydgram DatagramServer (bytes, the handler returns its reply)",
        "anydgram-server-return",
        BACKENDS,
        "anydgram",
        requires="anydgram.DatagramServer",
        quick=("asyncio",),
        throughput_only=True,
    ),
    "anydgram-server-unbatched": ServerKind(
        "anydgram DatagramServer (bytes, ANYDGRAM_BATCHED_SYSCALLS=0)",
        "anydgram-server-unbatched",
        BACKENDS,
        "anydgram",
        requires="anydgram.DatagramServer",
        quick=("asyncio",),
        throughput_only=True,
    ),
    # The bytes row again with receive_metadata=True: the handler never reads request.metadata,
    # so this is what asking for it costs (DESIGN.md: at most 15% more CPU per datagram).
    "anydgram-server-metadata": ServerKind(
        "anydgram DatagramServer (bytes, receive_metadata=True)",
        "anydgram-server-metadata",
        BACKENDS,
        "anydgram",
        requires="anydgram.DatagramMetadata",
        quick=("asyncio",),
        throughput_only=True,
    ),
    "anydgram-server-pure": ServerKind(
        "anydgram DatagramServer (bytes, ANYDGRAM_NO_EXTENSIONS=1: pure Python)",
        "anydgram-server-pure",
        BACKENDS,
        "anydgram",
        requires="anydgram.DatagramServer",
        quick=("asyncio",),
        throughput_only=True,
    ),
    "anydgram-server-json": ServerKind(
        "anydgram DatagramServer (JSON)",
        "anydgram-server",
        BACKENDS,
        "anydgram",
        protocol="json",
        requires="anydgram.DatagramServer",
        quick=("asyncio",),
        # The loss check and ping-pong exercise the I/O path, which the bytes rows cover.
        throughput_only=True,
    ),
    "anydgram-server-msgspec": ServerKind(
        "anydgram DatagramServer (JSON, MsgspecSerializer Struct)",
        "anydgram-server",
        BACKENDS,
        "anydgram",
        protocol="msgspec",
        requires="msgspec.Struct",
        quick=("asyncio",),
        throughput_only=True,
    ),
    # The bytes row again, registered with anydgram.metrics and scraped (see _scraper.py).
    "anydgram-server-scraped": ServerKind(
        "anydgram DatagramServer (bytes, /metrics scraped every 100 ms)",
        "anydgram-server",
        BACKENDS,
        "anydgram",
        requires="prometheus_client.start_http_server",
        quick=("asyncio",),
        throughput_only=True,
        scraped=True,
    ),
}
#: The row a scraped row is set against: the same server, not scraped.
PLAIN = "anydgram-server"


@dataclass(frozen=True)
class Load:
    """What the load generator does: ``window`` datagrams of ``size`` bytes in flight."""

    size: int
    window: int
    purpose: str

    @property
    def key(self) -> str:
        return f"{self.size}x{self.window}"

    @property
    def throughput(self) -> bool:
        return self.purpose == "throughput"

    def __str__(self) -> str:
        return f"{self.size} B, window {self.window}"


LOADS: dict[str, Load] = {
    load.key: load
    for load in (
        Load(64, 64, "throughput"),
        Load(1200, 64, "throughput"),
        Load(64, 128, "loss check"),
        Load(64, 1, "ping-pong"),
    )
}


class Row(NamedTuple):
    kind: str
    backend: str

    def __str__(self) -> str:
        return f"{SERVERS[self.kind].label} on {self.backend}"


@dataclass(frozen=True)
class Plan:
    """How much each measurement runs, and which loads each row takes."""

    rounds: int
    seconds: float
    warmup: float
    timeout: float
    loads: tuple[str, ...]
    #: Kinds whose ``requires`` is met, so stopgap rows only take the throughput loads.
    server_available: bool

    def loads_for(self, kind: ServerKind) -> list[Load]:
        loads = [LOADS[key] for key in self.loads]
        if kind.throughput_only:
            return [load for load in loads if load.throughput]
        if kind.group in ("reference", "anydgram"):
            return loads
        if kind.group == "stopgap":
            if not self.server_available:
                return loads
            # Beside the server, only to show what its dispatch costs over the bare loop.
            return loads[:1] if loads and loads[0].throughput else []
        return [load for load in loads if load.throughput]

    def measurement_budget(self) -> float:
        """Seconds one load generator child may take before it is killed."""
        return self.warmup + self.seconds + self.timeout + 30


def missing_requirement(requirement: str) -> str | None:
    """Why ``requirement`` is not met here, or ``None`` when it is.

    ``"sendmmsg"`` asks for Linux's batched system calls; ``"MODULE.NAME"`` for something a
    module exports (``"anydgram.DatagramServer"``, or a peer's class: peers are optional).
    """
    if requirement == "sendmmsg":
        return None if mmsg_available() else "recvmmsg/sendmmsg are not available here"
    module_name, _, name = requirement.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken package skips its rows; the baselines still run
        return f"{module_name} does not import ({type(exc).__name__}: {exc})"
    if not hasattr(module, name):
        return f"{requirement} does not exist yet"
    return None


# -- one row of one round: a server process, then one load generator per load --------------------


def udp_drops(port: int) -> int | None:
    """The kernel's drop count for the UDP socket bound to 127.0.0.1:``port`` (Linux)."""
    local = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp", encoding="ascii") as file:
            lines = file.readlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 12 and fields[1] == local:
            return int(fields[-1])
    return None


def measure_row(row: Row, plan: Plan) -> dict[str, dict[str, Any]]:
    """Start ``row``'s server, run each of its loads against it; failures are recorded."""
    kind = SERVERS[row.kind]
    loads = plan.loads_for(kind)
    server_seconds = len(loads) * (plan.measurement_budget() + 5) + 30
    argv = [str(_SERVERS), kind.server, row.backend, f"--protocol={kind.protocol}"]
    argv += [f"--cpu={SERVER_CPU}", f"--max-seconds={server_seconds:.0f}"]
    metrics_url = None
    if kind.scraped:
        metrics_port = free_tcp_port()
        argv.append(f"--metrics-port={metrics_port}")
        metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    results: dict[str, dict[str, Any]] = {}
    try:
        with server_process(argv) as (proc, port):
            for load in loads:
                if proc.poll() is not None:
                    results[load.key] = {"error": f"the server exited ({proc.returncode})"}
                    continue
                if metrics_url is None:
                    results[load.key] = measure_load(load, kind, proc.pid, port, plan)
                    continue
                # Scraped from before the load generator starts until it has ended, so every
                # measured second has its ten scrapes.
                with Scraper(metrics_url) as scraper:
                    results[load.key] = measure_load(load, kind, proc.pid, port, plan)
                results[load.key].update(scraper.result())
    except RuntimeError as exc:
        print(f"  failed: {exc}", file=sys.stderr)
        for load in loads:
            results.setdefault(load.key, {"error": str(exc)})
    return results


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice), for the server's /metrics."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def measure_load(load: Load, kind: ServerKind, pid: int, port: int, plan: Plan) -> dict[str, Any]:
    argv = [str(_LOADGEN), LOOPBACK, str(port), "--json", f"--cpu={CLIENT_CPU}"]
    argv += [f"--window={load.window}", f"--size={load.size}", f"--payload={kind.payload}"]
    argv += [f"--duration={plan.seconds}", f"--warmup={plan.warmup}"]
    argv += [f"--timeout={plan.timeout}", f"--watch-pid={pid}"]
    drops_before = udp_drops(port)
    try:
        result = run_child(argv, timeout=plan.measurement_budget())
    except RuntimeError as exc:
        print(f"  failed: {exc}", file=sys.stderr)
        return {"error": str(exc)}
    drops_after = udp_drops(port)
    if drops_before is not None and drops_after is not None:
        result["server_socket_drops"] = drops_after - drops_before
    busy = result.get("cpu_busy_percent")
    if busy and "server_cpu_percent" in result:
        # What kept the CPUs busy besides the two processes: softirq work for loopback
        # delivery (not charged to either process), and anything else running on the machine.
        ours = result["loadgen_cpu_percent"] + result["server_cpu_percent"]
        result["other_cpu_percent"] = max(0.0, sum(busy) - ours)
    return result


# -- the report ----------------------------------------------------------------------------------


def _metric(rounds: Sequence[dict[str, Any]], key: str) -> list[float]:
    values = []
    for result in rounds:
        value = result.get(key)
        values.append(math.nan if value is None else float(value))
    return values


def _count(rounds: Sequence[dict[str, Any]], *keys: str) -> str:
    """The sum of integer ``keys`` over the rounds that reported them ("-" if none did)."""
    reported = [r for r in rounds if all(r.get(k) is not None for k in keys)]
    if not reported:
        return "-"
    return str(sum(int(r[k]) for r in reported for k in keys))


def _echoes_per_wake(rounds: Sequence[dict[str, Any]]) -> list[float]:
    """Echoes the load generator took per receive call: a small share of the window means
    it kept up, collecting echoes as they came while the rest waited at the server."""
    return [
        r["echoes_measured"] / r["recv_calls"] if r.get("recv_calls") else math.nan for r in rounds
    ]


Results = dict[Row, list[dict[str, dict[str, Any]]]]


def _load_rounds(results: Results, row: Row, load: Load) -> list[dict[str, Any]] | None:
    rounds = [by_load[load.key] for by_load in results[row] if load.key in by_load]
    return rounds or None


def render_load(results: Results, load: Load) -> str:
    reference = Row(REFERENCE, BLOCKING)
    base = _load_rounds(results, reference, load) if reference in results else None
    base_rate = _metric(base, "rate") if base else []
    base_cpu = _metric(base, "server_cpu_us_per_datagram") if base else []
    headers = [
        "server",
        "backend",
        "replies/s",
        "x raw",
        "server CPU us/dgram",
        "CPU x raw",
        "server CPU %",
        "loadgen CPU %",
        "echoes/wake",
        "p50 / p99 us",
        "lost",
        "kernel drops",
        "failed",
    ]
    lines = []
    for row in results:
        rounds = _load_rounds(results, row, load)
        if rounds is None:
            continue
        rate, cpu = _metric(rounds, "rate"), _metric(rounds, "server_cpu_us_per_datagram")
        p50 = Summary.of(_metric(rounds, "latency_p50_us")).median
        p99 = Summary.of(_metric(rounds, "latency_p99_us")).median
        lines.append(
            [
                SERVERS[row.kind].label,
                row.backend,
                Summary.of(rate).format(".0f"),
                Summary.of(paired_ratios(rate, base_rate)).format(".2f", "x"),
                Summary.of(cpu).format(".2f"),
                f"{Summary.of(paired_ratios(cpu, base_cpu)).median:.2f}x",
                f"{Summary.of(_metric(rounds, 'server_cpu_percent')).median:.0f}",
                f"{Summary.of(_metric(rounds, 'loadgen_cpu_percent')).median:.0f}",
                f"{Summary.of(_echoes_per_wake(rounds)).median:.1f}",
                f"{p50:.0f} / {p99:.0f}",
                _count(rounds, "lost", "warmup_lost"),
                _count(rounds, "server_socket_drops"),
                str(sum("error" in r for r in rounds)),
            ]
        )
    return "\n".join([f"#### {load} ({load.purpose})", "", markdown_table(headers, lines)])


#: Rows set against PLAIN for what one option costs: kind -> the CPU ratio it may cost at most.
OVERHEAD_LIMITS = {"anydgram-server-metadata": 1.15}


def _against_plain(
    results: Results, plan: Plan, wanted: Callable[[Row], bool]
) -> Iterator[tuple[Row, Load, list[dict[str, Any]], list[dict[str, Any]]]]:
    """``(row, load, rounds, plain rounds)`` for each ``wanted`` row and load that PLAIN ran too."""
    for row in results:
        plain = Row(PLAIN, row.backend)
        if not wanted(row) or plain not in results:
            continue
        for load in plan.loads_for(SERVERS[row.kind]):
            rounds = _load_rounds(results, row, load)
            base = _load_rounds(results, plain, load)
            if rounds is not None and base is not None:
                yield row, load, rounds, base


def render_overheads(results: Results, plan: Plan) -> str | None:
    """The metadata row against the plain bytes row: the CPU per datagram the option costs."""
    lines = []
    for row, load, rounds, base in _against_plain(
        results, plan, lambda row: row.kind in OVERHEAD_LIMITS
    ):
        limit = OVERHEAD_LIMITS[row.kind]
        cpu = _metric(rounds, "server_cpu_us_per_datagram")
        base_cpu = _metric(base, "server_cpu_us_per_datagram")
        ratio = Summary.of(paired_ratios(cpu, base_cpu))
        verdict = "-" if math.isnan(ratio.median) else "yes" if ratio.median <= limit else "no"
        lines.append(
            [
                row.kind,
                row.backend,
                str(load),
                Summary.of(base_cpu).format(".2f"),
                Summary.of(cpu).format(".2f"),
                ratio.format(".3f", "x"),
                f"<= {limit:g}x: {verdict}",
            ]
        )
    if not lines:
        return None
    headers = ["row", "backend", "load", "plain CPU us/dgram", "CPU us/dgram", "CPU x plain", ""]
    return "\n".join(
        [
            "#### What an option costs",
            "",
            "The bytes `DatagramServer` with one option set (`anydgram-server-metadata`: "
            "`receive_metadata=True`, a handler that never reads `request.metadata`) against "
            "the plain bytes row; `CPU x plain` is the per-round ratio of server CPU per "
            "datagram in the same round and backend.",
            "",
            markdown_table(headers, lines),
        ]
    )


#: The rows of "Where the time goes": the two hand-written loops and the server both ways.
TIME_SPLIT_ROWS = ("raw", "raw-mmsg", "anydgram-server-pure", "anydgram-server")


def _per_datagram(rounds: Sequence[dict[str, Any]], key: str) -> float:
    """The median over rounds of ``key`` (seconds of server CPU) per echoed datagram, in us."""
    return Summary.of(
        [
            r[key] / r["echoes_measured"] * 1e6
            if r.get(key) is not None and r.get("echoes_measured")
            else math.nan
            for r in rounds
        ]
    ).median


def render_time_split(results: Results) -> str | None:
    """Server CPU per datagram at 64 B, 64 in flight, split into user space and the kernel."""
    load = LOADS["64x64"]
    lines = []
    for kind in TIME_SPLIT_ROWS:
        for row in results:
            if row.kind != kind:
                continue
            rounds = _load_rounds(results, row, load)
            if rounds is None:
                continue
            user = _per_datagram(rounds, "server_user_s")
            system = _per_datagram(rounds, "server_system_s")
            lines.append(
                [
                    SERVERS[kind].label,
                    row.backend,
                    f"{user:.2f}",
                    f"{system:.2f}",
                    f"{user + system:.2f}",
                ]
            )
    if not lines:
        return None
    headers = ["server", "backend", "user us/dgram", "kernel us/dgram", "total us/dgram"]
    return "\n".join(
        [
            "#### Where the time goes (64 B, window 64)",
            "",
            "The server process's CPU per echoed datagram, split into user space (Python, libc) "
            "and the kernel (system calls, including the loopback delivery of each reply), "
            "medians over the rounds; /proc's 10 ms ticks, so about +-0.05 us.",
            "",
            markdown_table(headers, lines),
        ]
    )


def render_scraping(results: Results, plan: Plan) -> str | None:
    """The scraped rows against the same server unscraped: what serving /metrics costs."""
    lines = []
    for row, load, rounds, base in _against_plain(
        results, plan, lambda row: SERVERS[row.kind].scraped
    ):
        cpu = _metric(rounds, "server_cpu_us_per_datagram")
        base_cpu = _metric(base, "server_cpu_us_per_datagram")
        scrapes = _metric(rounds, "scrapes")
        rates = [
            n / s if s else math.nan
            for n, s in zip(scrapes, _metric(rounds, "scrape_seconds"), strict=True)
        ]
        last = Summary.of(_metric(rounds, "scraped_datagrams_received")).median
        lines.append(
            [
                row.backend,
                str(load),
                Summary.of(base_cpu).format(".2f"),
                Summary.of(cpu).format(".2f"),
                Summary.of(paired_ratios(cpu, base_cpu)).format(".3f", "x"),
                Summary.of(paired_ratios(_metric(rounds, "rate"), _metric(base, "rate"))).format(
                    ".3f", "x"
                ),
                f"{_count(rounds, 'scrapes')} ({Summary.of(scrapes).median:.0f})",
                f"{Summary.of(rates).median:.1f}",
                _count(rounds, "scrape_failures"),
                "-" if math.isnan(last) else f"{last:.0f}",
            ]
        )
    if not lines:
        return None
    headers = [
        "backend",
        "load",
        "plain CPU us/dgram",
        "scraped CPU us/dgram",
        "CPU x plain",
        "replies/s x plain",
        "scrapes (per load)",
        "scrapes/s",
        "failed scrapes",
        "received (last scrape)",
    ]
    return "\n".join(
        [
            "#### Scraping /metrics under load",
            "",
            "The bytes `DatagramServer` registered with `anydgram.metrics` in prometheus_client's "
            "default registry (its process and GC collectors included), which prometheus_client's "
            "HTTP thread serves on 127.0.0.1, while a scraper on the load generator's CPU GETs "
            f"`/metrics` every {SCRAPE_INTERVAL * 1000:.0f} ms from before each load generator "
            "starts until it ends. `CPU x plain` and `replies/s x plain` are per-round ratios "
            "against the unscraped bytes row of the same round and backend; `scrapes` counts the "
            "scrapes that returned `anydgram_datagrams_received_total` (the total over the rounds, "
            "and the median per load run), whose last value is in the last column.",
            "",
            markdown_table(headers, lines),
        ]
    )


#: The peers DESIGN.md compares the anydgram server with, on the same backend: (server kind,
#: column header, the ratio asked for).
CONTRACT_PEERS = (("anyio-udp", "x anyio UDPSocket", 2.0), ("easynetwork", "x EasyNetwork", 2.5))


def _verdict(ratio: Summary, target: float) -> str:
    return "-" if math.isnan(ratio.median) else ("yes" if ratio.median >= target else "no")


def render_contract(results: Results, plan: Plan) -> str | None:
    """The performance contract of DESIGN.md, for the anydgram rows."""
    main, loss = LOADS["64x64"], LOADS["64x128"]
    reference = Row(REFERENCE, BLOCKING)
    if main.key not in plan.loads or reference not in results:
        return None
    base = _load_rounds(results, reference, main) or []
    lines = []
    for row in results:
        kind = SERVERS[row.kind]
        if kind.group == "stopgap" and plan.server_available:
            continue
        if kind.group not in ("anydgram", "stopgap"):
            continue
        rounds = _load_rounds(results, row, main)
        if rounds is None:
            continue
        rate = _metric(rounds, "rate")
        ratio = Summary.of(paired_ratios(rate, _metric(base, "rate")))
        line = [
            kind.label,
            row.backend,
            ratio.format(".2f", "x"),
            _verdict(ratio, 0.7),
            _verdict(ratio, 0.8),
            _verdict(ratio, 1.2),
        ]
        for peer, _, target in CONTRACT_PEERS:
            peer_row = Row(peer, row.backend)
            peer_rounds = _load_rounds(results, peer_row, main) if peer_row in results else None
            peer_rate = _metric(peer_rounds, "rate") if peer_rounds else []
            peer_ratio = Summary.of(paired_ratios(rate, peer_rate))
            line += [
                "-" if math.isnan(peer_ratio.median) else peer_ratio.format(".1f", "x"),
                _verdict(peer_ratio, target),
            ]
        loss_rounds = _load_rounds(results, row, loss) if loss.key in plan.loads else None
        line += [
            _count(rounds, "lost", "warmup_lost"),
            _count(loss_rounds, "lost", "warmup_lost") if loss_rounds else "-",
        ]
        lines.append(line)
    if not lines:
        return None
    headers = ["server", "backend", "x raw (64 B, w64)", ">= 0.7x", ">= 0.8x", ">= 1.2x"]
    for _, header, target in CONTRACT_PEERS:
        headers += [header, f">= {target:g}x"]
    headers += ["lost w64", "lost w128"]
    return "\n".join(
        [
            "#### Performance contract (DESIGN.md)",
            "",
            "Throughput at 64 B with 64 datagrams in flight relative to the raw blocking loop, "
            "and to the anyio `UDPSocket` loop and EasyNetwork's server on the same backend "
            "(per-round ratios, median (min-max); `-` where that row did not run). The contract "
            "asks >= 0.7x the raw loop, targets >= 0.8x (>= 1.2x with batched system calls), "
            ">= 2x anyio's loop, >= 2.5x EasyNetwork's server, and zero loss at windows 64 "
            "and 128.",
            "",
            markdown_table(headers, lines),
        ]
    )


def render_background(results: Results) -> str:
    values = [
        float(result["other_cpu_percent"])
        for row_rounds in results.values()
        for by_load in row_rounds
        for result in by_load.values()
        if "other_cpu_percent" in result
    ]
    if not values:
        return ""
    summary = Summary.of(values)
    return (
        f"Besides the server and the load generator, the two CPUs were busy a median "
        f"{summary.median:.0f}% of one CPU (max {summary.high:.0f}%) during the measurements: "
        "loopback softirq work charged to neither process, plus whatever else ran on the "
        "machine. A high maximum marks a noisy run."
    )


def render(results: Results, plan: Plan, skipped: Sequence[str]) -> str:
    out = [
        "### Echo servers under load",
        "",
        f"{plan.rounds} interleaved rounds of {plan.seconds:g} s per load (after "
        f"{plan.warmup:g} s of warm-up); median (min-max). Server pinned to CPU {SERVER_CPU}, "
        f"load generator to CPU {CLIENT_CPU}. `x raw` and `CPU x raw` are per-round ratios "
        "against the raw blocking loop of the same round (throughput: higher is better; server "
        "CPU per datagram: lower is better). Server CPU is the server process's user + system "
        "time over the measured seconds (/proc, 10 ms ticks); `lost` counts datagrams never "
        f"echoed within {plan.timeout:g} s (warm-up included), `kernel drops` the server "
        "socket's drops (/proc/net/udp).",
    ]
    background = render_background(results)
    if background:
        out += ["", background]
    for note in skipped:
        out += ["", f"Skipped: {note}"]
    for key in plan.loads:
        out += ["", render_load(results, LOADS[key])]
    split = render_time_split(results) if "64x64" in plan.loads else None
    if split:
        out += ["", split]
    scraping = render_scraping(results, plan)
    if scraping:
        out += ["", scraping]
    overheads = render_overheads(results, plan)
    if overheads:
        out += ["", overheads]
    contract = render_contract(results, plan)
    if contract:
        out += ["", contract]
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------------


def select_rows(
    kinds: Sequence[str], backends: Sequence[str], *, quick: bool
) -> tuple[list[Row], list[str], bool]:
    """The rows to run (reference first), notes on those skipped, and whether the server runs."""
    rows: list[Row] = []
    skipped: list[str] = []
    reasons: dict[str, str | None] = {}
    for key in kinds:
        kind = SERVERS[key]
        if kind.requires is not None:
            reason = reasons.setdefault(kind.requires, missing_requirement(kind.requires))
            if reason is not None:
                skipped.append(f"{kind.label} rows ({reason}).")
                continue
        for backend in kind.quick if quick else kind.backends:
            if backend in backends or backend == BLOCKING:
                rows.append(Row(key, backend))
    server_available = reasons.get(SERVER_REQUIREMENT, "not asked") is None
    if quick and server_available:  # the stopgap rows only matter while there is no server
        rows = [row for row in rows if SERVERS[row.kind].group != "stopgap"]
    return rows, skipped, server_available


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, fewer rows (< 60 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds measured per load (default 2)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per load (default 0.3)")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds until a loss")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    parser.add_argument("--loads", default=",".join(LOADS), help="SIZExWINDOW, comma-separated")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    backends = [b for b in args.backends.split(",") if b]
    loads = tuple(k for k in args.loads.split(",") if k)
    unknown = [k for k in kinds if k not in SERVERS] + [b for b in backends if b not in BACKENDS]
    unknown += [k for k in loads if k not in LOADS]
    if unknown:
        parser.error(f"unknown server, backend or load: {', '.join(unknown)}")
    if REFERENCE not in kinds:
        kinds.insert(0, REFERENCE)  # every ratio needs it
    rows, skipped, server_available = select_rows(kinds, backends, quick=args.quick)
    plan = Plan(
        rounds=args.rounds or (1 if args.quick else 3),
        seconds=args.seconds or (1.0 if args.quick else 2.0),
        warmup=args.warmup if args.warmup is not None else 0.3,
        timeout=args.timeout,
        loads=loads,
        server_available=server_available,
    )
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    env = environment()
    results = run_interleaved(rows, plan.rounds, lambda row: measure_row(row, plan))
    print(render(results, plan, skipped))
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "server_echo",
                "plan": asdict(plan),
                "environment": env | {"loadavg_after": list(os.getloadavg())},
                "skipped": skipped,
                "rows": [
                    {
                        "server": row.kind,
                        "label": SERVERS[row.kind].label,
                        "backend": row.backend,
                        "rounds": row_rounds,
                    }
                    for row, row_rounds in results.items()
                ],
            },
        )


if __name__ == "__main__":
    main(sys.argv[1:])
