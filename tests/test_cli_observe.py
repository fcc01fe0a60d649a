"""``anydgram serve --metrics`` and ``--stats-interval``: watching a running server."""

from __future__ import annotations

import argparse
import dataclasses
import re
import socket
import urllib.request

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anydgram import ServerStatistics
from anydgram.__main__ import main
from anydgram._cli._observe import metrics_address, print_statistics, statistics_line
from cli_harness import exchange, free_port, run_main_with, wait_until_bound


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
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("anydgram_") and "_created" not in sample.name:
                    assert sample.labels == {"name": "serve"}
                    scraped[sample.name] = sample.value

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
    assert main(["serve", "0", "--workers", "2", "--stats-interval", "1"]) == 2
    assert "--workers" in capsys.readouterr().err


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
