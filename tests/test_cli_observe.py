"""``anydgram serve --metrics`` and ``--stats-interval``: watching a running server."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anydgram import ServerStatistics
from anydgram.__main__ import main
from anydgram._cli._observe import metrics_address, print_statistics, statistics_line
from cli_harness import (
    LineReader,
    anydgram_command,
    child_env,
    exchange,
    free_port,
    run_main_with,
    wait_until_bound,
)


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_metrics_are_scraped_from_a_real_endpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, metrics_port = free_port(), _free_tcp_port()
    scraped: dict[str, float] = {}

    def client() -> None:
        wait_until_bound(port)
        for _ in range(3):
            assert exchange("127.0.0.1", port, b"ping") is not None
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        # A batched reply is counted once sendmmsg returns, which may be just after the client
        # has it (ctypes lets other threads run during the call): scrape until it is counted.
        deadline = time.monotonic() + 5
        while True:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name.startswith("anydgram_") and "_created" not in sample.name:
                        assert sample.labels == {"name": "serve"}
                        scraped[sample.name] = sample.value
            if scraped.get("anydgram_datagrams_sent_total") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.01)

    argv = ["serve", "127.0.0.1", str(port), "--metrics", str(metrics_port)]
    status, errors = run_main_with([*argv, "--stats-interval", "0.1"], client)
    assert status == 0
    assert not errors, errors
    assert scraped["anydgram_datagrams_received_total"] == 3
    assert scraped["anydgram_datagrams_sent_total"] == 3
    assert scraped["anydgram_handlers_active"] == 0
    out = capsys.readouterr().out
    assert f"Metrics at http://127.0.0.1:{metrics_port}/metrics" in out
    # The metrics server is gone with the command (the scrape's connection may linger in
    # TIME_WAIT, which SO_REUSEADDR allows; a listener would not be).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", metrics_port))
        sock.listen()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("localhost:9100", ("localhost", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),  # written out: accepted
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:0", ("::", 0)),
    ],
)
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert metrics_address(text) == expected


@pytest.mark.parametrize("text", ["", "x", "example.org:9100", "127.0.0.1:70000", ":9100x"])
def test_metrics_address_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        metrics_address(text)


def test_bad_observe_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "9999", "--stats-interval", "0"]) == 2
    assert "--stats-interval" in capsys.readouterr().err
    assert main(["serve", "9999", "--metrics", "example.org:1"]) == 2
    assert "localhost or an IP address" in capsys.readouterr().err
    assert main(["serve", "0", "--workers", "2", "--metrics", "9100"]) == 2
    err = capsys.readouterr().err
    assert "--metrics does not work with --workers" in err
    assert "own counters" in err


_WORKER_LINE = re.compile(
    r"worker (?P<worker>\d+): \d\d:\d\d:\d\d received (?P<received>\d+)/s sent (?P<sent>\d+)/s "
    r"parse errors 0 drops 0 handlers active \d+"
)


def test_serve_stats_interval_with_workers_prints_one_line_per_worker() -> None:
    process = subprocess.Popen(
        anydgram_command("serve", "127.0.0.1", "0", "--workers", "2", "--stats-interval", "0.2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        lines = LineReader(process)
        first = lines.next_line(time.monotonic() + 15) or ""
        match = re.search(r"127\.0\.0\.1:(\d+) with 2 worker processes", first)
        assert match, first
        port = int(match[1])
        deadline = time.monotonic() + 15
        while exchange("127.0.0.1", port, b"hello", timeout=0.2) is None:  # workers starting
            assert time.monotonic() < deadline, lines.seen
        # SO_REUSEPORT spreads clients by source port: 100 fresh sockets reach both workers.
        for _ in range(100):
            assert exchange("127.0.0.1", port, b"hello") is not None
        busy: set[str] = set()
        while busy != {"1", "2"}:
            line = lines.next_line(deadline)
            assert line is not None, f"no busy line from each worker: {lines.seen}"
            worker_line = _WORKER_LINE.fullmatch(line)
            assert worker_line, line
            if int(worker_line["received"]) > 0:
                assert int(worker_line["sent"]) > 0
                busy.add(worker_line["worker"])
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:  # pragma: no cover
            process.kill()
            process.wait(5)
    assert process.returncode == 0, err
    assert b"Traceback" not in err


def _stats(**fields: int) -> ServerStatistics:
    names = [field.name for field in dataclasses.fields(ServerStatistics)]
    return ServerStatistics(**{name: fields.get(name, 0) for name in names})


def test_statistics_line() -> None:
    before = _stats(datagrams_received=100, datagrams_sent=90, kernel_drops=1)
    after = _stats(
        datagrams_received=300,
        datagrams_sent=290,
        parse_errors=4,
        kernel_drops=3,
        rate_limited=5,
        amplification_dropped=1,
        handlers_active=7,
    )
    line = statistics_line(before, after, 2.0)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d received 100/s sent 100/s parse errors 4 drops 8 handlers active 7", line
    )


async def test_print_statistics_writes_one_line_per_interval() -> None:
    counts = iter(range(0, 10_000, 10))
    lines: list[str] = []
    done = anyio.Event()

    def write(line: str) -> None:
        lines.append(line)
        if len(lines) == 3:
            done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(
            print_statistics, lambda: _stats(datagrams_received=next(counts)), 0.01, write
        )
        with anyio.fail_after(5):
            await done.wait()
        group.cancel_scope.cancel()
    assert all(" received " in line and "handlers active 0" in line for line in lines)
