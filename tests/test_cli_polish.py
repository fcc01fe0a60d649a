"""The command line's messages for mistakes a first-time user makes, each checked word for word."""

from __future__ import annotations

import json
import re
import socket

import pytest

from anydgram.__main__ import main
from cli_harness import EchoServer, exchange, free_port, run_main_with, wait_until_bound


def _only_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["bench", "127.0.0.1", "9", "-d", "0"],
            "argument -d/--duration: must be more than 0 and at most 86400, got 0 "
            "(see 'anydgram bench --help')",
        ),
        (
            ["ping", "127.0.0.1", "-1"],
            "argument PORT: must be between 1 and 65535, got -1 (see 'anydgram ping --help')",
        ),
        (
            ["serve", "127.0.0.1", "-5"],
            "argument PORT: must be between 0 and 65535, got -5 (see 'anydgram serve --help')",
        ),
        (
            ["ping", "127.0.0.1", "9", "-c", "-1"],
            "argument -c/--count: must be between 1 and 100000000, got -1 "
            "(see 'anydgram ping --help')",
        ),
        (
            ["ping", "127.0.0.1", "9", "--bogus"],
            "unrecognized arguments: --bogus (see 'anydgram ping --help')",
        ),
        (
            ["serve", "9999", "--bogus", "x"],
            "unrecognized arguments: --bogus x (see 'anydgram serve --help')",
        ),
        (
            ["serve", "9999", "--protocol", "xml"],
            "argument --protocol: invalid choice: 'xml' (choose from 'bytes', 'str', 'json', "
            "'msgpack', 'cbor') (see 'anydgram serve --help')",
        ),
    ],
)
def test_argument_errors_are_exact(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert _only_error_line(capsys) == f"anydgram: {message}"


def _localhost_has_ipv6() -> bool:
    try:
        socket.getaddrinfo("localhost", 9, socket.AF_INET6, socket.SOCK_DGRAM)
    except socket.gaierror:
        return False
    return True


@pytest.mark.parametrize(
    "argv",
    [
        ["ping", "-6", "localhost", "9", "-c", "1"],
        ["send", "-6", "localhost", "9", "x"],
        ["bench", "-6", "localhost", "9", "-d", "0.1"],
    ],
)
def test_no_address_of_the_family_asked_for(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if _localhost_has_ipv6():
        pytest.skip("localhost has an IPv6 address here")
    assert main(argv) == 2
    assert _only_error_line(capsys) == "anydgram: no IPv6 address for localhost"


def test_an_unknown_host_is_still_unknown_with_a_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ping", "-4", "bad..host", "9", "-c", "1"]) == 2
    assert _only_error_line(capsys).startswith("anydgram: cannot resolve host 'bad..host': ")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_bench_against_a_closed_port_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "127.0.0.1", str(_closed_port()), "-d", "0.2", "-w", "4", "-q"]
    assert main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = re.fullmatch(
        r"sent \d+, received 0, lost \d+ \(100%\), late 0, errors (\d+) "
        r"\(Destination Port Unreachable: is a server listening\?\)",
        lines[1],
    )
    assert errors is not None, lines
    assert int(errors[1]) > 0


def test_bench_shorter_than_its_first_window(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "127.0.0.1", str(_closed_port()), "-d", "0.0001", "-q", "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert json.loads(captured.out)["duration_s"] == 0.0001


def test_serve_cbor_echoes(capsys: pytest.CaptureFixture[str]) -> None:
    cbor2 = pytest.importorskip("cbor2")
    port = free_port()
    replies: list[object] = []

    def client() -> None:
        wait_until_bound(port)
        reply = exchange("127.0.0.1", port, cbor2.dumps({"n": [1, "a"]}))
        replies.append(reply and cbor2.loads(reply[0]))

    argv = ["serve", "127.0.0.1", str(port), "--protocol", "cbor"]
    assert run_main_with(argv, client) == (0, [])
    assert replies == [{"n": [1, "a"]}]
    assert "(protocol cbor," in capsys.readouterr().out


def test_serve_print_cuts_a_long_json_datagram(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    big = json.dumps({"text": "x" * 60_000}).encode()

    def client() -> None:
        wait_until_bound(port)
        exchange("127.0.0.1", port, big, timeout=0.2)

    argv = ["serve", "127.0.0.1", str(port), "--protocol", "json", "--mode", "print"]
    assert run_main_with(argv, client) == (0, [])
    out = capsys.readouterr().out
    printed = [line for line in out.splitlines() if "{'text': 'xxx" in line]
    assert len(printed) == 1, out[:1000]
    shown = printed[0].split(" ", 2)[2]  # after the time and the sender
    assert shown == "{'text': '" + "x" * (256 - len("{'text': '")) + "..."


def test_send_json_message_and_reply(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        argv = ["send", "127.0.0.1", str(server.port), '{"a": [1, "é"]}', "--protocol", "json"]
        assert main([*argv, "--wait-reply"]) == 0
    assert server.received == [b'{"a":[1,"\xc3\xa9"]}']
    assert capsys.readouterr().out == '{"a": [1, "é"]}\n'


def test_send_bad_json_message(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        assert main(["send", "127.0.0.1", str(server.port), "nope", "--protocol", "json"]) == 2
    assert server.received == []
    assert _only_error_line(capsys) == (
        "anydgram: --protocol json takes a JSON message: Expecting value: line 1 column 1 (char 0)"
    )


def test_send_cbor_message(capsys: pytest.CaptureFixture[str]) -> None:
    cbor2 = pytest.importorskip("cbor2")
    with EchoServer() as server:
        argv = ["send", "127.0.0.1", str(server.port), "[1, 2]", "--protocol", "cbor"]
        assert main([*argv, "--wait-reply"]) == 0
    assert [cbor2.loads(data) for data in server.received] == [[1, 2]]
    assert capsys.readouterr().out == "[1, 2]\n"


def test_ping_with_a_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with EchoServer() as server:
        argv = ["ping", "127.0.0.1", str(server.port), "-c", "2", "-i", "0", "--protocol", "json"]
        assert main(argv) == 0
    assert [json.loads(data)[:8] for data in server.received] == ["00000001", "00000002"]
    assert "2 packets transmitted, 2 received, 0% packet loss" in capsys.readouterr().out


def test_listen_decodes_with_a_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()

    def client() -> None:
        wait_until_bound(port)
        exchange("127.0.0.1", port, b'{"n": 1}', timeout=0.2)
        exchange("127.0.0.1", port, b"{oops", timeout=0.2)

    argv = ["listen", "127.0.0.1", str(port), "-c", "2", "--protocol", "json"]
    assert run_main_with(argv, client, interrupt=False) == (0, [])
    shown = [line.split(" ", 2)[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert shown == ["{'n': 1}", "(not json) 5 bytes: {oops"]
