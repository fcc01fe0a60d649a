"""``anydgram bench``: keep a window of datagrams in flight to a server, measure what comes back.

Every datagram carries its sequence number (12 ASCII digits), so replies are matched to the
moment they were sent. A reply frees a slot in the window and the next datagram goes out at
once; a datagram with no reply after ``timeout`` counts as lost and its slot is refilled.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from array import array
from dataclasses import dataclass
from typing import Any

import anyio

from ._args import BENCH_MIN_SIZE as MIN_SIZE
from ._output import format_address, format_host_port, write_line
from ._ping import connect
from ._runner import Backend, run

__all__ = ("MIN_SIZE", "BenchOptions", "run_bench")

_FILLER = b" anydgram bench" * 4370  # a little over the largest UDP payload
#: Latency samples kept; past this, reservoir sampling keeps a uniform sample of them all.
_MAX_SAMPLES = 1_000_000
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


@dataclass(frozen=True)
class BenchOptions:
    """``anydgram bench``'s settings; times in seconds."""

    host: str
    port: int
    duration: float = 5.0
    window: int = 64
    size: int = 64
    timeout: float = 1.0
    json: bool = False
    quiet: bool = False
    family: int = socket.AF_UNSPEC


class BenchStats:
    """Counters and a bounded sample of round-trip times."""

    def __init__(self) -> None:
        self.peer = ""
        self.sent = 0
        self.received = 0
        self.lost = 0
        self.late = 0
        self.errors = 0
        self.bytes_received = 0
        self.started: float | None = None
        self.stopped_sending: float | None = None
        self.last_reply: float | None = None
        self._samples = array("d")
        self._seen = 0
        self._random = random.Random(0)

    def add_reply(self, rtt: float, size: int, now: float) -> None:
        """Count a matched reply that took ``rtt`` seconds."""
        self.received += 1
        self.bytes_received += size
        self.last_reply = now
        self._seen += 1
        if len(self._samples) < _MAX_SAMPLES:
            self._samples.append(rtt)
        else:
            slot = self._random.randrange(self._seen)
            if slot < _MAX_SAMPLES:
                self._samples[slot] = rtt

    def elapsed(self) -> float:
        """Seconds from the first datagram to the end of sending or the last reply, if later."""
        if self.started is None:
            return 0.0
        if self.stopped_sending is None:
            end = time.perf_counter()
        else:
            end = max(self.stopped_sending, self.last_reply or 0.0)
        return max(end - self.started, 1e-9)

    def latency_ms(self) -> dict[str, float] | None:
        """min, percentiles, max and mean of the round trips in ms; ``None`` without replies."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        last = len(ordered) - 1
        result = {"min": ordered[0] * 1000}
        for name, percent in _PERCENTILES:
            result[name] = ordered[min(last, int(percent / 100 * len(ordered)))] * 1000
        result["max"] = ordered[-1] * 1000
        result["mean"] = sum(ordered) / len(ordered) * 1000
        return {name: round(value, 3) for name, value in result.items()}

    def progress_line(self) -> str:
        """The running totals, one line."""
        return (
            f"{self.elapsed():6.1f} s  sent {self.sent}  received {self.received}  "
            f"lost {self.lost}  {self.received / self.elapsed():.0f} datagrams/s"
        )


async def _progress(stats: BenchStats, quiet: bool) -> None:
    if quiet:
        return
    live = sys.stderr.isatty()
    try:
        while True:
            await anyio.sleep(0.25 if live else 1.0)
            if live:
                sys.stderr.write("\r\x1b[K" + stats.progress_line())
            else:
                sys.stderr.write(stats.progress_line() + "\n")
            sys.stderr.flush()
    finally:
        if live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


async def bench(options: BenchOptions, stats: BenchStats) -> None:
    """Drive the server for ``options.duration`` seconds, then wait ``timeout`` for stragglers.

    Raises:
        CLIError: The host does not resolve or cannot be reached.
    """
    client = await connect(options.host, options.port, options.family)
    tail = _FILLER[: options.size - MIN_SIZE]
    in_flight: dict[int, float] = {}  # seq -> send time, oldest first; at most `window`
    sending = True
    next_seq = 0
    tick = min(0.1, max(0.005, options.timeout / 4))
    drained = anyio.Event()  # set once sending stopped and nothing is in flight

    async def send_one() -> None:
        nonlocal next_seq
        seq, next_seq = next_seq, next_seq + 1
        in_flight[seq] = time.perf_counter()
        try:
            await client.send_packet(b"%012d" % seq + tail)
        except ConnectionRefusedError:
            # Refused: nothing listens. The slot is refilled at the next sweep, not now, so a
            # dead server costs a few datagrams per tick instead of a busy loop.
            del in_flight[seq]
            stats.errors += 1
        else:
            stats.sent += 1

    async def receive() -> None:
        while True:
            try:
                reply = await client.recv_packet()
            except ConnectionRefusedError:
                stats.errors += 1
                continue
            now = time.perf_counter()
            head = reply[:MIN_SIZE]
            sent_at = in_flight.pop(int(head), None) if head.isdigit() else None
            if sent_at is None:
                stats.late += 1  # after its timeout, a duplicate, or not ours
                continue
            stats.add_reply(now - sent_at, len(reply), now)
            if sending:
                await send_one()
            elif not in_flight:
                drained.set()

    async def sweep() -> None:
        while True:
            await anyio.sleep(tick)
            deadline = time.perf_counter() - options.timeout
            expired: list[int] = []
            for seq, sent_at in in_flight.items():  # oldest first: stop at the first live one
                if sent_at > deadline:
                    break
                expired.append(seq)
            for seq in expired:
                del in_flight[seq]
            stats.lost += len(expired)
            if sending:
                for _ in range(options.window - len(in_flight)):
                    await send_one()
            elif not in_flight:
                drained.set()

    async with client:
        stats.peer = format_address(client.remote_address)
        stats.started = time.perf_counter()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                tg.start_soon(sweep)
                tg.start_soon(_progress, stats, options.quiet)
                for _ in range(options.window):
                    await send_one()
                # The first window may take longer than a very short duration to send.
                left = options.duration - (time.perf_counter() - stats.started)
                await anyio.sleep(max(0.0, left))
                sending = False
                stats.stopped_sending = time.perf_counter()
                if not in_flight:
                    drained.set()
                # Stragglers get one timeout (and a sweep) to come back.
                with anyio.move_on_after(options.timeout + tick):
                    await drained.wait()
                tg.cancel_scope.cancel()
        finally:
            if stats.stopped_sending is None:  # interrupted
                stats.stopped_sending = time.perf_counter()
            stats.lost += len(in_flight)
            in_flight.clear()


def _result(options: BenchOptions, stats: BenchStats, backend: Backend) -> dict[str, Any]:
    elapsed = stats.elapsed()
    return {
        "target": format_host_port(options.host, options.port),
        "address": stats.peer,
        "backend": backend.name,
        "duration_s": options.duration,
        "window": options.window,
        "size": options.size,
        "timeout_s": options.timeout,
        "sent": stats.sent,
        "received": stats.received,
        "lost": stats.lost,
        "late": stats.late,
        "errors": stats.errors,
        "loss_percent": round(stats.lost * 100 / stats.sent, 3) if stats.sent else 0.0,
        "rate_per_s": round(stats.received / elapsed, 1),
        "bytes_per_s": round(stats.bytes_received / elapsed, 1),
        "latency_ms": stats.latency_ms(),
    }


def _text_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"BENCH {result['target']} ({result['address']}): {result['size']}-byte datagrams, "
        f"window {result['window']}, {result['duration_s']:g} s, backend {result['backend']}",
        f"sent {result['sent']}, received {result['received']}, lost {result['lost']} "
        f"({result['loss_percent']:g}%), late {result['late']}, errors {result['errors']}"
        + (" (Destination Port Unreachable: is a server listening?)" if result["errors"] else ""),
        f"rate {result['rate_per_s']:.0f} datagrams/s "
        f"({result['bytes_per_s'] / 1e6:.2f} MB/s of replies)",
    ]
    latency: dict[str, float] | None = result["latency_ms"]
    if latency is not None:
        names = ["min", *(name for name, _ in _PERCENTILES), "max"]
        values = "/".join(f"{latency[name]:.3f}" for name in names)
        lines.append(f"latency {'/'.join(names)} = {values} ms")
    return lines


def run_bench(options: BenchOptions, backend: Backend) -> int:
    """Run ``anydgram bench``; 0 when any reply came, 1 when none."""
    stats = BenchStats()
    run(backend, lambda: bench(options, stats))
    if stats.started is None:
        return 1
    result = _result(options, stats, backend)
    if options.json:
        write_line(json.dumps(result))
    else:
        for line in _text_lines(result):
            write_line(line)
    return 0 if stats.received else 1
