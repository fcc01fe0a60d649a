"""Helpers shared by the benchmark scripts: pinning, child processes, the echo server, summaries.

A benchmark script runs as a *driver* that starts one fresh child process per measurement
(``run_child``), interleaves rows across rounds (``run_interleaved``) and summarizes the rounds
as a median with its min-max range (``Summary``, ``paired_ratios``). Nothing here imports
anydgram, so a broken package still lets the baseline rows run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

__all__ = (
    "CLIENT_CPU",
    "LOOPBACK",
    "SERVER_CPU",
    "CpuTimes",
    "Summary",
    "cpu_model",
    "cpu_times",
    "environment",
    "markdown_table",
    "paired_ratios",
    "pin_to_cpu",
    "raw_echo_server",
    "run_child",
    "run_interleaved",
    "server_process",
    "write_json",
)

RowT = TypeVar("RowT")
ResultT = TypeVar("ResultT")

LOOPBACK = "127.0.0.1"
#: The process under test runs on CPU 0, the load generator or echo server on CPU 1.
CLIENT_CPU = 0
SERVER_CPU = 1

_ECHO_SERVER = Path(__file__).with_name("_raw_echo_server.py")


def pin_to_cpu(cpu: int) -> bool:
    """Pin the calling process to ``cpu``; ``False`` where that CPU or the call is missing."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class CpuTimes:
    """User and system CPU seconds used by this process (all its threads) so far."""

    user: float
    system: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_times() -> CpuTimes:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return CpuTimes(usage.ru_utime, usage.ru_stime)


@dataclass(frozen=True)
class Summary:
    """The median of a metric over rounds, with the range it moved in."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(statistics.median(values), min(values), max(values))

    def format(self, spec: str = ".1f", suffix: str = "") -> str:
        return f"{self.median:{spec}}{suffix} ({self.low:{spec}}-{self.high:{spec}}{suffix})"


def paired_ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round-by-round ratios ``values[i] / baseline[i]`` (rounds missing on either side skipped).

    Rows are interleaved, so round *i* of a row and of its baseline ran seconds apart; their
    ratio cancels most of the drift a median of each side alone would keep.
    """
    pairs = zip(values, baseline, strict=False)
    return [v / b for v, b in pairs if b and not (math.isnan(v) or math.isnan(b))]


def run_interleaved(
    rows: Sequence[RowT],
    rounds: int,
    measure: Callable[[RowT], ResultT],
    *,
    label: Callable[[RowT], str] = str,
) -> dict[RowT, list[ResultT]]:
    """Measure every row once per round, in the order A B C ... A B C ..., logging to stderr."""
    results: dict[RowT, list[ResultT]] = {row: [] for row in rows}
    for round_index in range(rounds):
        for row in rows:
            print(f"[round {round_index + 1}/{rounds}] {label(row)}", file=sys.stderr, flush=True)
            results[row].append(measure(row))
    return results


def run_child(argv: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run ``python argv...`` and return the JSON object it prints as its last stdout line.

    Raises:
        RuntimeError: The child failed, printed no result, or ran past ``timeout`` seconds (it
            is killed then).
    """
    try:
        completed = subprocess.run(
            [sys.executable, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"child ran past {timeout:.0f} s and was killed: {argv}") from None
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"child exited with {completed.returncode}: {argv}\n{completed.stderr.strip()}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextmanager
def raw_echo_server(
    *, cpu: int = SERVER_CPU, max_seconds: float = 600.0, start_timeout: float = 10.0
) -> Iterator[tuple[str, int]]:
    """Run the raw blocking echo server in a child process; yield its ``(host, port)``.

    The server stops by itself after ``max_seconds`` (or once idle, or orphaned); on leaving
    the block it is terminated by its PID in any case.
    """
    argv = [str(_ECHO_SERVER), "--cpu", str(cpu), "--max-seconds", str(max_seconds)]
    with server_process(argv, start_timeout=start_timeout) as (_, port):
        yield LOOPBACK, port


@contextmanager
def server_process(
    argv: Sequence[str], *, start_timeout: float = 10.0
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``python argv...``, a server that prints its port first; yield ``(process, port)``.

    The server is expected to stop by itself eventually; on leaving the block it is
    terminated by its PID in any case (killed if it does not exit within 5 s). Its stderr goes
    to a temporary file, so a chatty server cannot block on a full pipe.

    Raises:
        RuntimeError: The server did not print a port within ``start_timeout`` seconds; the
            message holds the end of its stderr.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], start_timeout)
            line = proc.stdout.readline() if ready else ""
            if not line.strip().isdigit():
                stderr.seek(0)
                tail = stderr.read()[-2000:].strip()
                raise RuntimeError(f"the server did not start (said {line!r}): {argv}\n{tail}")
            yield proc, int(line)
            if proc.poll() is not None:  # its rows show the failures; say why they happened
                stderr.seek(0)
                tail = stderr.read()[-2000:].strip()
                print(f"warning: the server exited early ({proc.returncode})", file=sys.stderr)
                print(tail, file=sys.stderr)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


#: Packages whose versions the results depend on: anydgram, its backends and the peers.
_VERSIONED = (
    "anydgram",
    "anyio",
    "trio",
    "uvloop",
    "orjson",
    "msgpack",
    "cbor2",
    "msgspec",
    "prometheus_client",
    "easynetwork",
)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """What the results depend on besides the code: interpreter, machine, load, versions."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "kernel": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()),
        "versions": versions,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads well as text."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
