"""A statsd-style metrics collector: aggregates counters, gauges and timers, flushes them.

Shows a receive-only :class:`~anydgram.DatagramServer` next to a periodic task in the same task
group, and state kept bounded against any sender. Clients send lines in the statsd text format,
several per datagram separated by newlines::

    <name>:<value>|c[|@<sample rate>]   counter: adds value / rate (rate 0.1 = 1 in 10 sent)
    <name>:<value>|g                    gauge: set to value; "+5" or "-5" adds or subtracts
    <name>:<value>|ms                   timer: one sample, in milliseconds ("h" is the same)

(a DogStatsD ``|#tags`` suffix is accepted and ignored, and a sample rate on a gauge or a
timer too: it only scales counters). Every ``--flush-interval`` seconds the
collector prints what it gathered: each counter's total and per-second rate, each gauge's value
(gauges keep their value from one flush to the next, counters and timers start again from
zero), and for each timer the count, min, max, mean and 90th percentile (``p90``). A malformed
line is counted in ``bad_lines`` and skipped; the rest of its datagram still counts.

Bounds: at most ``--max-metrics`` distinct names (lines for new names beyond that are counted
in ``dropped_lines``), and at most 1,000 samples kept per timer and flush for the percentile
(a uniform random sample, "reservoir sampling"); count, min, max and mean stay exact.

Feed it with any statsd client, e.g. the ``statsd`` package, or by hand::

    python examples/statsd_collector.py --port 8125 --flush-interval 5 &
    echo "page.views:1|c" | socat - UDP:127.0.0.1:8125
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from anydgram import DatagramRequest, DatagramServer

BACKENDS = ("asyncio", "uvloop", "trio")

#: ``name:value|type`` then optional ``|@rate`` and ``|#tags``. Names are printable ASCII
#: without ``:``, ``|`` and ``@``; numbers are plain decimals (no "nan", "inf" or "1_000").
_LINE: Final = re.compile(
    r"(?P<name>[\x21-\x39\x3b-\x3f\x41-\x7b\x7d\x7e]{1,200})"
    r":(?P<value>[+-]?(?:\d{1,20}(?:\.\d{0,20})?|\.\d{1,20})(?:[eE][+-]?\d{1,3})?)"
    r"\|(?P<type>c|g|ms|h)"
    r"(?:\|@(?P<rate>[01](?:\.\d{1,20})?|\.\d{1,20}))?"
    r"(?:\|#[\x21-\x7e]{0,500})?"
)
MAX_SAMPLES: Final = 1000


class BadLine(ValueError):
    """A line that is not a metric this collector understands."""


@dataclass
class Timer:
    """One timer's samples since the last flush: exact totals, a bounded random sample."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    samples: list[float] = field(default_factory=list[float])

    def add(self, value: float, rng: random.Random) -> None:
        """Record one sample; past :data:`MAX_SAMPLES`, keep a uniform random subset."""
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(value)
        else:
            slot = rng.randrange(self.count)  # reservoir sampling (Vitter's algorithm R)
            if slot < MAX_SAMPLES:
                self.samples[slot] = value

    def summary(self) -> dict[str, float]:
        """count, min, max, mean and p90 (nearest rank, over the kept samples)."""
        ordered = sorted(self.samples)
        p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]
        return {
            "count": self.count,
            "min": self.low,
            "max": self.high,
            "mean": self.total / self.count,
            "p90": p90,
        }


class Metrics:
    """Everything received since the last flush (gauges: ever), within ``max_metrics`` names."""

    def __init__(self, max_metrics: int = 10_000, rng: random.Random | None = None) -> None:
        self.max_metrics = max_metrics
        self.rng = rng or random.Random()
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.timers: dict[str, Timer] = {}
        self.bad_lines = 0
        self.dropped_lines = 0

    def _has_room(self, name: str, table: dict[str, Any]) -> bool:
        if name in table:
            return True
        if len(self.counters) + len(self.gauges) + len(self.timers) < self.max_metrics:
            return True
        self.dropped_lines += 1
        return False

    def add_line_untrusted(self, line: str) -> None:
        """Apply one line from the wire.

        Raises:
            BadLine: The line is malformed (nothing was changed).
        """
        match = _LINE.fullmatch(line)
        if match is None:
            raise BadLine(f"malformed metric line {line[:80]!r}")
        name, kind, text = match["name"], match["type"], match["value"]
        value = float(text)
        rate = 1.0 if match["rate"] is None else float(match["rate"])
        if not 0.0 < rate <= 1.0:
            raise BadLine(f"sample rate out of (0, 1] in {line[:80]!r}")
        if not math.isfinite(value):
            raise BadLine(f"value out of range in {line[:80]!r}")
        if kind == "c":
            if self._has_room(name, self.counters):
                self.counters[name] = self.counters.get(name, 0.0) + value / rate
        elif kind == "g":
            if self._has_room(name, self.gauges):
                if text[0] in "+-":  # a delta, statsd's convention
                    value += self.gauges.get(name, 0.0)
                self.gauges[name] = value
        elif self._has_room(name, self.timers):
            self.timers.setdefault(name, Timer()).add(value, self.rng)

    def add_datagram_untrusted(self, data: bytes) -> None:
        """Apply every line of one datagram; malformed lines are counted in ``bad_lines``."""
        for raw in data.split(b"\n"):
            line = raw.strip()
            if not line:
                continue
            try:
                self.add_line_untrusted(line.decode("ascii"))
            except (UnicodeDecodeError, BadLine):
                self.bad_lines += 1

    def flush(self, elapsed: float) -> dict[str, Any]:
        """What was gathered over the last ``elapsed`` seconds; counters and timers restart."""
        snapshot = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "interval": round(elapsed, 3),
            "counters": {
                name: {"value": value, "per_second": value / elapsed if elapsed > 0 else 0.0}
                for name, value in sorted(self.counters.items())
            },
            "gauges": dict(sorted(self.gauges.items())),
            "timers": {name: timer.summary() for name, timer in sorted(self.timers.items())},
            "bad_lines": self.bad_lines,
            "dropped_lines": self.dropped_lines,
        }
        self.counters.clear()
        self.timers.clear()
        self.bad_lines = self.dropped_lines = 0
        return snapshot


def render(snapshot: dict[str, Any], *, as_json: bool) -> str:
    """A flush as one JSON line, or as a few lines of text."""
    if as_json:
        return json.dumps(snapshot)
    lines = [
        f"flush at {snapshot['time']} ({snapshot['interval']} s): {snapshot['bad_lines']} bad "
        f"lines, {snapshot['dropped_lines']} dropped"
    ]
    for name, counter in snapshot["counters"].items():
        lines.append(f"  counter {name} = {counter['value']:g} ({counter['per_second']:.3g}/s)")
    for name, value in snapshot["gauges"].items():
        lines.append(f"  gauge   {name} = {value:g}")
    for name, timer in snapshot["timers"].items():
        stats = " ".join(f"{key}={value:g}" for key, value in timer.items())
        lines.append(f"  timer   {name} {stats}")
    return "\n".join(lines)


# -- the server --------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def collect(
    server: DatagramServer[bytes, bytes], metrics: Metrics, interval: float, *, as_json: bool
) -> None:
    """Serve and flush every ``interval`` seconds until SIGINT or SIGTERM; then a last flush."""
    last = anyio.current_time()

    def flush() -> None:
        nonlocal last
        now = anyio.current_time()
        print(render(metrics.flush(now - last), as_json=as_json), flush=True)
        last = now

    async def flush_periodically() -> None:
        next_flush = anyio.current_time() + interval
        while True:
            await anyio.sleep_until(next_flush)  # a schedule, not a delay: flushes do not drift
            flush()
            next_flush += interval

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            last = anyio.current_time()
            tg.start_soon(flush_periodically)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                tg.cancel_scope.cancel()  # the flusher
                break
    flush()  # what came in since the last flush is not lost


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and collect until interrupted."""
    parser = argparse.ArgumentParser(description="Collect statsd metrics and flush them.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8125, help="port to bind; 0 picks a free one (8125)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--flush-interval", type=float, default=10.0, help="seconds between flushes (10)"
    )
    parser.add_argument(
        "--max-metrics", type=int, default=10_000, help="distinct metric names kept (10000)"
    )
    parser.add_argument("--json", action="store_true", help="print each flush as a JSON line")
    args = parser.parse_args(argv)
    if args.flush_interval <= 0 or args.max_metrics < 1:
        parser.error("--flush-interval must be positive and --max-metrics at least 1")
    metrics = Metrics(args.max_metrics)

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        metrics.add_datagram_untrusted(request.packet)

    server = DatagramServer(args.host, args.port, handler)
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    as_json: bool = args.json
    anyio.run(
        lambda: collect(server, metrics, args.flush_interval, as_json=as_json),
        backend=backend,
        backend_options=options,
    )


if __name__ == "__main__":
    main()
