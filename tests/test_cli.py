"""The command line: every subcommand run in-process through ``main([...])``, plus smoke tests.

The peers are stdlib sockets and ``socat``, not anydgram, wherever the command is a client or
a server of its own (``ping`` has its own file, ``test_cli_ping.py``).
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time

import pytest

import anydgram
from anydgram.__main__ import main
from cli_harness import (
    BACKENDS,
    EchoServer,
    anydgram_command,
    check_ping_output,
    child_env,
    exchange,
    free_port,
    ipv6_loopback_available,
    run_main_with,
    socat_path,
    wait_until_bound,
)

LISTENING = re.compile(r"Serving (?P<mode>\w+) on (?P<where>.+) \(protocol (?P<protocol>\w+), ")
DATAGRAM_LINE = re.compile(
    r"\d\d:\d\d:\d\d\.\d{6} (?P<sender>\S+) (?P<size>\d+) bytes?(?P<rest>.*)$"
)


def _assert_one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anydgram: "), err
    for needle in needles:
        assert needle in lines[0], err


# -- the parser ---------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"anydgram {anydgram.__version__}"


@pytest.mark.parametrize("command", ["serve", "ping", "send", "listen", "bench", "demo"])
def test_help_names_backend(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--backend" in out
    assert out.startswith(f"usage: anydgram {command}")


def test_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    _assert_one_line_error(capsys.readouterr().err, "missing command", "serve")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["ping", "localhost", "70000"], ["PORT", "65535", "70000"]),
        (["ping", "localhost", "0"], ["PORT"]),
        (["ping", "localhost", "http"], ["not an integer", "'http'"]),
        (["ping", "localhost", "9", "-c", "0"], ["-c/--count"]),
        (["ping", "localhost", "9", "-i", "nan"], ["-i/--interval"]),
        (["ping", "localhost", "9", "-W", "0"], ["-W/--timeout"]),
        (["ping", "localhost", "9", "-s", "4"], ["-s/--size", "8"]),
        (["ping", "localhost", "9", "--backend", "curio"], ["--backend", "curio"]),
        (["ping", "localhost", "9", "-4", "-6"], ["-6"]),
        (["ping", "localhost"], ["PORT"]),
        (["ping", "", "9"], ["empty"]),
        (["serve", "127.0.0.1", "-1"], ["PORT"]),
        (["serve", "9999", "--loss", "1.5"], ["--loss", "between 0 and 1"]),
        (["serve", "9999", "--delay", "-5"], ["--delay"]),
        (["serve", "9999", "--mode", "shout"], ["--mode", "shout"]),
        (["serve", "9999", "--protocol", "xml"], ["--protocol"]),
        (["serve", "9999", "--workers", "0"], ["--workers"]),
        (["serve", "9999", "--max-concurrent", "0"], ["--max-concurrent"]),
        (["bench", "localhost", "9", "-w", "0"], ["-w/--window"]),
        (["bench", "localhost", "9", "-d", "inf"], ["-d/--duration"]),
        (["bench", "localhost", "9", "-s", "11"], ["-s/--size"]),
        (["listen", "9999", "-c", "-3"], ["-c/--count"]),
        (["demo", "--bogus"], ["--bogus"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_arguments_are_one_line(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line_error(captured.err, *needles)


@pytest.mark.parametrize(
    "argv",
    [
        ["ping", "bad..host", "9", "-c", "1"],
        ["send", "bad..host", "9", "x"],
        ["bench", "bad..host", "9", "-d", "0.1"],
        ["listen", "bad..host", "9999"],
        ["serve", "bad..host", "9999"],
        ["serve", "bad..host", "9999", "--workers", "2"],
    ],
)
def test_unknown_host(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line_error(captured.err, "cannot resolve host 'bad..host'")


@pytest.mark.parametrize(("backend", "module"), [("trio", "trio"), ("uvloop", "uvloop")])
def test_backend_not_installed(
    backend: str, module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    assert main(["ping", "127.0.0.1", "9", "-c", "1", "--backend", backend]) == 2
    _assert_one_line_error(
        capsys.readouterr().err, f"backend {backend!r}", f"pip install 'anydgram[{backend}]'"
    )


def test_protocol_extra_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    assert main(["serve", "127.0.0.1", "0", "--protocol", "msgpack"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "msgpack", "pip install 'anydgram[msgpack]'")


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as busy:
        assert main(["serve", "127.0.0.1", str(busy.port)]) == 2
        _assert_one_line_error(capsys.readouterr().err, f"127.0.0.1:{busy.port}", "in use")
        assert main(["listen", "127.0.0.1", str(busy.port)]) == 2
        _assert_one_line_error(capsys.readouterr().err, f"127.0.0.1:{busy.port}", "in use")
        # Checked before any worker process starts.
        assert main(["serve", "127.0.0.1", str(busy.port), "--workers", "2"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        _assert_one_line_error(captured.err, f"127.0.0.1:{busy.port}", "in use")


# -- serve --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_echo_answers_stdlib_clients(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = ["127.0.0.1", "::1"] if ipv6_loopback_available() else ["127.0.0.1"]
    port = free_port(hosts)
    replies: list[object] = []

    def client() -> None:
        for host in hosts:
            wait_until_bound(port, host)
            replies.append(exchange(host, port, f"hello {host}".encode()))

    status, errors = run_main_with(["serve", str(port), "--backend", backend], client)
    captured = capsys.readouterr()
    assert errors == []
    assert status == 0, captured.err
    assert replies == [(f"hello {host}".encode(), (host, port)) for host in hosts]
    lines = captured.out.splitlines()
    listening = LISTENING.match(lines[0])
    assert listening, lines[0]
    assert listening["where"] == ", ".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host in hosts
    )
    assert f"backend {backend})" in lines[0]
    assert "--- server statistics ---" in lines
    assert f"{len(hosts)} datagrams received" in captured.out
    assert f"{len(hosts)} answered" in captured.out


def test_serve_modes_loss_and_logging(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    answers: list[object] = []

    def client() -> None:
        wait_until_bound(port)
        # Seed 9 ignores the 3rd, 5th and 8th requests (the demo's loss pattern).
        answers.extend(exchange("127.0.0.1", port, b"ab%d" % i, timeout=0.3) for i in range(10))

    argv = ["serve", "127.0.0.1", str(port), "--mode", "upper", "--loss", "0.3", "--seed", "9"]
    status, errors = run_main_with([*argv, "-v"], client)
    captured = capsys.readouterr()
    assert errors == []
    assert status == 0
    expected = [None if i in (2, 4, 7) else (b"AB%d" % i, ("127.0.0.1", port)) for i in range(10)]
    assert answers == expected
    assert "7 answered, 3 ignored on purpose (loss 0.3)" in captured.out
    assert "10 datagrams received (30 bytes), 7 sent (21 bytes)" in captured.out
    # -v: a log line per datagram, on stderr.
    assert captured.err.count("(upper)") == 7
    assert captured.err.count("(ignored on purpose)") == 3
    assert "3 bytes: ab0 (upper)" in captured.err


def test_serve_print_and_discard(capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("print", "discard"):
        port = free_port()
        answers: list[object] = []

        def client(port: int = port, answers: list[object] = answers) -> None:
            wait_until_bound(port)
            answers.append(exchange("127.0.0.1", port, b"text\n", timeout=0.2))
            answers.append(exchange("127.0.0.1", port, b"\x00\x01", timeout=0.2))

        status, errors = run_main_with(["serve", "127.0.0.1", str(port), "--mode", mode], client)
        captured = capsys.readouterr()
        assert (status, errors, answers) == (0, [], [None, None])
        printed = [m for line in captured.out.splitlines() if (m := DATAGRAM_LINE.match(line))]
        if mode == "print":
            assert [(m["size"], m["rest"]) for m in printed] == [
                ("5", ": text\\n"),
                ("2", " (binary): 0001"),
            ]
            assert all(m["sender"].startswith("127.0.0.1:") for m in printed)
        else:
            assert printed == []
        assert "2 datagrams received" in captured.out
        assert "0 sent" in captured.out


def test_serve_json_upper_and_delay(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    results: list[tuple[object, float]] = []

    def client() -> None:
        wait_until_bound(port)
        started = time.perf_counter()
        reply = exchange("127.0.0.1", port, b'{"word": "quiet", "n": [1, "a"]}')
        results.append((reply and json.loads(reply[0]), time.perf_counter() - started))
        # Not JSON: counted as a parse error, not answered.
        results.append((exchange("127.0.0.1", port, b"{oops", timeout=0.3), 0.0))

    argv = ["serve", "127.0.0.1", str(port), "--protocol", "json", "--mode", "upper"]
    status, errors = run_main_with([*argv, "--delay", "100", "--backend", "trio"], client)
    captured = capsys.readouterr()
    assert (status, errors) == (0, [])
    (packet, elapsed), (bad, _) = results
    assert packet == {"word": "QUIET", "n": [1, "A"]}
    assert elapsed >= 0.1
    assert bad is None
    assert "1 parse errors" in captured.out


def test_serve_answers_socat_client(capsys: pytest.CaptureFixture[str]) -> None:
    socat = socat_path()
    port = free_port()
    outputs: list[str] = []

    def client() -> None:
        wait_until_bound(port)
        result = subprocess.run(
            [socat, "-t1", "-", f"UDP4:127.0.0.1:{port}"],
            input=b"from socat",
            capture_output=True,
            timeout=10,
            check=True,
        )
        outputs.append(result.stdout.decode())

    status, errors = run_main_with(["serve", "127.0.0.1", str(port), "--mode", "upper"], client)
    capsys.readouterr()
    assert (status, errors) == (0, [])
    assert outputs == ["FROM SOCAT"]


def test_serve_workers_subprocess() -> None:
    process = subprocess.Popen(
        anydgram_command("serve", "127.0.0.1", "0", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) with 2 worker processes", first)
        assert match, first
        port = int(match[1])
        deadline = time.monotonic() + 10
        reply = None
        while reply is None and time.monotonic() < deadline:  # workers may still be starting
            reply = exchange("127.0.0.1", port, b"to a worker", timeout=0.2)
        assert reply is not None
        assert reply[0] == b"to a worker"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:  # pragma: no cover
            process.kill()
            process.wait(5)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "Stopped." in out


def test_serve_sigterm_subprocess() -> None:
    process = subprocess.Popen(
        anydgram_command("serve", "127.0.0.1", "0", "--backend", "trio"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) ", first)
        assert match, first
        assert exchange("127.0.0.1", int(match[1]), b"ping") is not None
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:  # pragma: no cover
            process.kill()
            process.wait(5)
    assert process.returncode == 0, err
    assert err == ""
    assert "--- server statistics ---" in out
    assert "1 datagrams received (4 bytes), 1 sent (4 bytes)" in out


# -- listen -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_listen_prints_and_echoes(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    echoes: list[tuple[bytes, tuple[str, int]] | None] = []

    def client() -> None:
        wait_until_bound(port)
        for payload in (b"hello\tworld\n", b"\x00\xff\x10", b"", "h\u00e9".encode()):
            echoes.append(exchange("127.0.0.1", port, payload))

    argv = ["listen", "127.0.0.1", str(port), "--echo", "-c", "4", "--backend", backend]
    status, errors = run_main_with(argv, client, interrupt=False)
    captured = capsys.readouterr()
    assert (status, errors) == (0, [])
    assert [echo and echo[0] for echo in echoes] == [
        b"hello\tworld\n",
        b"\x00\xff\x10",
        b"",
        "h\u00e9".encode(),
    ]
    lines = captured.out.splitlines()
    assert lines[0] == f"Listening on 127.0.0.1:{port} (echoing). Press Ctrl-C to stop."
    matches = [DATAGRAM_LINE.match(line) for line in lines[1:]]
    assert all(matches), lines
    assert [(m["size"], m["rest"]) for m in matches if m] == [
        ("12", ": hello\\tworld\\n"),
        ("3", " (binary): 00ff10"),
        ("0", ""),
        ("3", ": h\u00e9"),
    ]


def test_listen_default_loopback_until_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    hosts = ["127.0.0.1", "::1"] if ipv6_loopback_available() else ["127.0.0.1"]
    port = free_port(hosts)

    def client() -> None:
        for host in hosts:
            wait_until_bound(port, host)
            assert exchange(host, port, b"hi", timeout=0.2) is None  # no --echo

    status, errors = run_main_with(["listen", str(port)], client)
    captured = capsys.readouterr()
    assert (status, errors) == (0, [])
    assert captured.out.splitlines()[-1] == f"{len(hosts)} datagrams received"
    if len(hosts) == 2:
        assert f"[::1]:{port}" in captured.out.splitlines()[0]


# -- send ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_message_and_wait_reply(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        argv = ["send", "127.0.0.1", str(server.port), "hello", "--wait-reply", "-W", "2"]
        assert main([*argv, "--backend", backend]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("hello\n", "")
    assert server.received == [b"hello"]


def test_send_stdin_lines_and_raw(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"one\ntwo\r\n\n\x00\xff\nlast"
    with EchoServer() as server:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert main(["send", "127.0.0.1", str(server.port), "--wait-reply"]) == 0
        lines_out = capsys.readouterr().out
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert main(["send", "127.0.0.1", str(server.port), "-", "--raw"]) == 0
        time.sleep(0.2)  # let the echo thread take the last datagram
    assert server.received == [b"one", b"two", b"", b"\x00\xff", b"last", data]
    # Text replies as text, binary ones as hex.
    assert lines_out == "one\ntwo\n\n00ff\nlast\n"
    assert capsys.readouterr().out == ""


def test_send_no_reply_and_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer(discard=True) as server:
        assert main(["send", "127.0.0.1", str(server.port), "x", "--wait-reply", "-W", "0.1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line_error(captured.err, "no reply", "0.1 s")

    port = free_port()
    assert main(["send", "127.0.0.1", str(port), "x", "--wait-reply", "-W", "2"]) == 1
    _assert_one_line_error(capsys.readouterr().err, "refused")


def test_send_too_large(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer(discard=True) as server:
        assert main(["send", "127.0.0.1", str(server.port), "x" * 70000]) == 2
    _assert_one_line_error(capsys.readouterr().err, "70000 bytes", "65507")


# -- bench --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_json(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        argv = ["bench", "127.0.0.1", str(server.port), "-d", "0.3", "-w", "8", "-s", "32"]
        assert main([*argv, "--json", "--backend", backend]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == backend
    assert result["target"] == result["address"] == f"127.0.0.1:{server.port}"
    assert (result["window"], result["size"]) == (8, 32)
    assert result["received"] > 0
    assert result["sent"] == result["received"] + result["lost"]
    assert result["errors"] == 0
    assert result["rate_per_s"] > 0
    latency = result["latency_ms"]
    names = ["min", "p50", "p90", "p99", "p99.9", "max"]
    assert [latency[name] for name in names] == sorted(latency[name] for name in names)
    assert all(len(data) == 32 for data in server.received)


def test_bench_text_and_live_progress(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with EchoServer() as server:
        assert main(["bench", "127.0.0.1", str(server.port), "-d", "0.6", "-w", "4"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"BENCH 127.0.0.1:{server.port} (127.0.0.1:{server.port}): ")
    assert re.match(r"sent (\d+), received (\d+), lost 0 \(0%\), late 0, errors 0$", lines[1])
    assert re.match(r"rate \d+ datagrams/s \(\d+\.\d\d MB/s of replies\)$", lines[2])
    assert re.match(
        r"latency min/p50/p90/p99/p99\.9/max = (\d+\.\d{3}/){5}\d+\.\d{3} ms$", lines[3]
    )
    # On a terminal: one line rewritten in place, cleared at the end.
    assert "\r\x1b[K" in captured.err
    assert "datagrams/s" in captured.err
    assert captured.err.endswith("\r\x1b[K")


def test_bench_interrupted_prints_results(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        argv = ["bench", "127.0.0.1", str(server.port), "-d", "60", "-w", "4", "-q", "--json"]
        status, errors = run_main_with(argv, lambda: time.sleep(0.5))
    assert (status, errors) == (0, [])
    result = json.loads(capsys.readouterr().out)
    assert result["received"] > 0
    assert result["sent"] == result["received"] + result["lost"]


def test_bench_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["bench", "127.0.0.1", str(port), "-d", "0.2", "-W", "0.1", "--json", "-q"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["received"] == 0
    assert result["errors"] > 0
    assert result["latency_ms"] is None
    assert captured.err == ""


# -- demo ---------------------------------------------------------------------------------------


def _check_demo(out: str) -> None:
    lines = out.splitlines()
    assert re.match(
        r"anydgram demo: an echo server on 127\.0\.0\.1:(\d+) ignores 30% of requests; "
        r"ping it 10 times \((asyncio|uvloop|trio)\)\.$",
        lines[0],
    ), lines[0]
    port = re.findall(r"127\.0\.0\.1:(\d+)", lines[0])[0]
    assert lines[1] == ""
    stats_at = lines.index("--- server statistics ---")
    assert lines[stats_at - 1] == ""
    ping = check_ping_output("\n".join(lines[2 : stats_at - 1]), target=f"127.0.0.1:{port}")
    assert ping.timeouts == [3, 5, 8]
    assert (ping.transmitted, ping.received) == (10, 7)
    assert "10 packets transmitted, 7 received, 30% packet loss" in out
    assert lines[stats_at + 1] == "10 datagrams received (560 bytes), 7 sent (392 bytes)"
    assert lines[-1] == "7 answered, 3 ignored on purpose (loss 0.3)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["demo", "--backend", backend]) == 0
    assert time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert captured.err == ""
    _check_demo(captured.out)


def test_python_dash_m_demo_smoke() -> None:
    # What the README's main-job command runs.
    result = subprocess.run(
        anydgram_command("demo"), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    _check_demo(result.stdout)
