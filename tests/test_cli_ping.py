"""``anydgram ping``: the iputils output format, line by line, and its arithmetic."""

from __future__ import annotations

import signal
import subprocess

import pytest

from anydgram.__main__ import main
from cli_harness import (
    BACKENDS,
    EchoServer,
    anydgram_command,
    check_ping_output,
    child_env,
    free_port,
    ipv6_loopback_available,
    socat_echo_server,
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ping_lossy_server(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer(drop=[2, 4]) as server:
        status = main(
            [
                "ping", "127.0.0.1", str(server.port), "-c", "5", "-i", "0.02", "-W", "0.3",
                "--backend", backend,
            ]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""
    output = check_ping_output(captured.out, target=f"127.0.0.1:{server.port}")
    assert output.address == f"127.0.0.1:{server.port}"
    assert sorted(output.replies) == [1, 3, 5]
    assert output.timeouts == [2, 4]
    assert (output.transmitted, output.received) == (5, 3)
    assert "5 packets transmitted, 3 received, 40% packet loss" in captured.out
    assert len(server.received) == 5


def test_ping_late_reply_is_not_taken_for_the_next(capsys: pytest.CaptureFixture[str]) -> None:
    # The reply to seq 2 arrives while seq 3 is awaited: seq 3 must still get its own.
    with EchoServer(late={2: 0.35}) as server:
        status = main(["ping", "127.0.0.1", str(server.port), "-c", "4", "-i", "0.05", "-W", "0.3"])
    captured = capsys.readouterr()
    assert status == 0
    output = check_ping_output(captured.out, target=f"127.0.0.1:{server.port}")
    assert output.timeouts == [2]
    assert sorted(output.replies) == [1, 3, 4]
    # seq 3 was answered at once; had the late reply to 2 been taken, its time would show it.
    assert output.replies[3] < 300


def test_ping_size_and_ipv6(capsys: pytest.CaptureFixture[str]) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback here")
    with EchoServer("::1") as server:
        status = main(["ping", "::1", str(server.port), "-c", "2", "-i", "0", "-s", "100", "-6"])
    captured = capsys.readouterr()
    assert status == 0
    output = check_ping_output(captured.out, target=f"[::1]:{server.port}")
    assert output.size == 100
    assert output.address == f"[::1]:{server.port}"
    assert all(len(data) == 100 for data in server.received)
    assert [data[:8] for data in server.received] == [b"00000001", b"00000002"]


def test_ping_localhost_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        status = main(["ping", "localhost", str(server.port), "-c", "1", "-4"])
    captured = capsys.readouterr()
    assert status == 0
    output = check_ping_output(captured.out, target=f"localhost:{server.port}")
    assert output.address == f"127.0.0.1:{server.port}"


def test_ping_no_reply_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer(discard=True) as server:
        status = main(["ping", "127.0.0.1", str(server.port), "-c", "2", "-i", "0", "-W", "0.1"])
    captured = capsys.readouterr()
    assert status == 1
    output = check_ping_output(captured.out, target=f"127.0.0.1:{server.port}")
    assert output.timeouts == [1, 2]
    assert "2 packets transmitted, 0 received, 100% packet loss" in captured.out


def test_ping_refused_counts_errors(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    status = main(["ping", "127.0.0.1", str(port), "-c", "3", "-i", "0.05", "-W", "0.5"])
    captured = capsys.readouterr()
    assert status == 1
    output = check_ping_output(captured.out, target=f"127.0.0.1:{port}")
    assert output.errors, captured.out  # ICMP port unreachable, reported like iputils
    assert f"From 127.0.0.1:{port} seq=1 Destination Port Unreachable" in captured.out
    assert output.received == 0


def test_ping_socat_echo_server(capsys: pytest.CaptureFixture[str]) -> None:
    # A server that is not anydgram: socat with cat behind it.
    port = free_port()
    with socat_echo_server(port):
        status = main(["ping", "127.0.0.1", str(port), "-c", "3", "-i", "0.05", "-W", "2"])
    captured = capsys.readouterr()
    assert status == 0, captured.out
    output = check_ping_output(captured.out, target=f"127.0.0.1:{port}")
    assert output.received == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ping_interrupted_prints_the_summary(signum: signal.Signals) -> None:
    with EchoServer() as server:
        process = subprocess.Popen(
            anydgram_command("ping", "127.0.0.1", str(server.port), "-i", "0.05"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(3)]  # header and two replies
            assert "seq=2" in lines[2], lines
            process.send_signal(signum)
            rest, err = process.communicate(timeout=15)
        finally:
            if process.poll() is None:  # pragma: no cover
                process.kill()
                process.wait(5)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    output = check_ping_output("".join(lines) + rest, target=f"127.0.0.1:{server.port}")
    assert output.received >= 2
