"""examples/sntp_server.py: its packets, its kernel receive times, and Debian's ``sntp``.

The packet code is called directly (bytes in, bytes out) and decoded here with a decoder of
the test's own, so a field the example gets wrong is not read back wrong the same way. The
server then runs in this process on every backend, answering a plain socket, and once more
while its event loop is held busy: the receive time in the reply must be when the datagram
reached the kernel, well before the handler could run, and the transmit time after. A server
that read its own clock in the handler fails that test.

Last, the program answers ntpsec's ``sntp`` (``ntpdig``, Debian package ``sntp``), which only
asks port 123: so the server runs inside a network namespace made for the test, on that
namespace's loopback, and the client must accept the answer and report an offset within
10 ms. Without root, or without ``sntp``, those tests skip and say why.

Every wait is bounded, and waits for an event (a reply, a line, a process's exit).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Final

import anyio
import pytest

import anydgram
from example_harness import (
    EXAMPLES,
    ExampleProcess,
    load_example,
    mutations,
    require_tool,
    run_example,
)
from netns import netns_available, veth_pair

sntp = load_example("sntp_server")

BACKENDS = ["asyncio", "uvloop", "trio"]
SCRIPT: Final = "sntp_server.py"

#: Unix time of the NTP epoch, 1900-01-01, counted here and not taken from the example.
NTP_EPOCH: Final = -((70 * 365 + 17) * 86400)
_PACKET: Final = struct.Struct("!BBbbII4sQQQQ")

#: What the in-process servers say about their clock.
INFO: Final = sntp.ServerInfo(
    stratum=3, reference_id=b"\xc0\x00\x02\x01", precision=-22, reference_time=1.75e9
)

needs_metadata = pytest.mark.skipif(
    not hasattr(anydgram, "DatagramMetadata"),
    reason="this anydgram has no receive metadata (DatagramMetadata, issue 19) yet",
)


def to_ntp(unix_time: float) -> int:
    seconds = int(unix_time // 1)
    return (seconds - NTP_EPOCH) << 32 | int((unix_time - seconds) * 4294967296)


def to_unix(ntp: int) -> float:
    return (ntp >> 32) + NTP_EPOCH + (ntp & 0xFFFFFFFF) / 4294967296


def request_packet(transmit: int, *, version: int = 4, mode: int = 3, poll: int = 6) -> bytes:
    """A request as a client sends it: only the first byte, poll and transmit time set."""
    return _PACKET.pack(version << 3 | mode, 0, poll, 0, 0, 0, b"\0" * 4, 0, 0, 0, transmit)


@dataclass
class Reply:
    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int
    root_dispersion: int
    reference_id: bytes
    reference: int
    originate: int
    receive: int
    transmit: int


def decode(datagram: bytes) -> Reply:
    assert len(datagram) == 48, datagram
    first, *fields = _PACKET.unpack(datagram)
    return Reply(first >> 6, first >> 3 & 7, first & 7, *fields)


# -- the packets -------------------------------------------------------------------------------


def test_a_client_request_gets_a_server_reply() -> None:
    transmit = random.Random(1).getrandbits(64)  # opaque to the server: copied, never read
    datagram = request_packet(transmit, version=4, poll=10)
    reply, line = sntp.answer_untrusted(datagram, INFO, 1_800_000_000.25, lambda: 1_800_000_000.5)
    assert line == "v4 client"
    got = decode(reply)
    assert (got.leap, got.version, got.mode) == (0, 4, 4)
    assert (got.stratum, got.poll, got.precision) == (3, 10, -22)
    assert (got.root_delay, got.root_dispersion) == (0, 0)
    assert got.reference_id == bytes([192, 0, 2, 1])
    assert got.originate == transmit
    assert got.reference == to_ntp(1.75e9)
    assert got.receive == to_ntp(1_800_000_000.25)
    assert got.transmit == to_ntp(1_800_000_000.5)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_the_version_and_poll_are_copied(version: int) -> None:
    reply, _ = sntp.answer_untrusted(request_packet(7, version=version, poll=-3), INFO, 0.0)
    got = decode(reply)
    assert (got.version, got.poll, got.originate) == (version, -3, 7)


def test_symmetric_active_gets_symmetric_passive() -> None:
    reply, line = sntp.answer_untrusted(request_packet(7, mode=1), INFO, 0.0)
    assert (decode(reply).mode, line) == (2, "v4 symmetric active")


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "ignored a 0-byte datagram"),
        (request_packet(1)[:47], "ignored a 47-byte datagram"),
        (request_packet(1, version=0), "ignored version 0"),
        (request_packet(1, version=5), "ignored version 5"),
        (request_packet(1, version=7), "ignored version 7"),
        (request_packet(1, mode=0), "ignored mode 0"),
        (request_packet(1, mode=2), "ignored mode 2"),
        (request_packet(1, mode=4), "ignored mode 4"),  # a server's reply: never answered
        (request_packet(1, mode=5), "ignored mode 5"),
        (request_packet(1, mode=6), "ignored mode 6"),
        (request_packet(1, mode=7), "ignored mode 7"),
    ],
)
def test_what_gets_no_answer(datagram: bytes, reason: str) -> None:
    reply, line = sntp.answer_untrusted(datagram, INFO, 0.0)
    assert reply is None
    assert line.startswith(reason), line


def test_extension_fields_and_macs_are_ignored() -> None:
    header = request_packet(99)
    for tail in (b"\0\0\0\x01" + bytes(16), bytes(range(28)) * 3):
        reply, _ = sntp.answer_untrusted(header + tail, INFO, 0.0)
        assert decode(reply).originate == 99  # decode() checks the reply is 48 bytes


def test_the_leap_indicator_and_an_unknown_reference_time() -> None:
    info = sntp.ServerInfo(stratum=10, reference_id=b"LOCL", precision=-20, leap=3)
    got = decode(sntp.answer_untrusted(request_packet(5), info, 0.0)[0])
    assert (got.leap, got.stratum, got.reference_id, got.precision) == (3, 10, b"LOCL", -20)
    assert got.reference == 0  # "unknown"


def test_ntp_timestamps() -> None:
    assert sntp.ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert sntp.ntp_timestamp(0.5) == (2_208_988_800 << 32) + (1 << 31)
    assert sntp.ntp_timestamp(NTP_EPOCH + 1.0) == 1 << 32  # 1900-01-01T00:00:01
    # 2036-02-07T06:28:16: era 1 begins, the seconds field wraps to 0.
    assert sntp.ntp_timestamp(2**32 + NTP_EPOCH + 0.25) == 1 << 30
    now = time.time()
    assert sntp.ntp_timestamp(now) == to_ntp(now)
    assert abs(to_unix(sntp.ntp_timestamp(now)) - now) < 1e-6


def test_the_precision_is_the_float_clock_s() -> None:
    # A float Unix time now has 2**-22 s steps; the clock itself is finer on Linux.
    precision = sntp.clock_precision()
    assert 2.0**precision >= math.ulp(time.time())
    assert -30 <= precision <= -10


def test_reference_ids() -> None:
    assert sntp.reference_id("LOCL") == b"LOCL"
    assert sntp.reference_id("GPS") == b"GPS\0"
    assert sntp.reference_id("192.0.2.1") == bytes([192, 0, 2, 1])
    for bad in ("", "TOOLONG", "PPS\u00e9", "a\tb"):
        with pytest.raises(argparse.ArgumentTypeError):
            sntp.reference_id(bad)


def test_the_parser_never_raises_anything_else() -> None:
    seeds = [request_packet(1), request_packet(2, mode=1, version=3), request_packet(3)[:47]]
    for datagram in mutations(seeds, 3000, bytes(range(256)), seed=22):
        reply, line = sntp.answer_untrusted(datagram, INFO, 0.0)
        if reply is None:
            assert line.startswith("ignored ")
        else:
            assert len(reply) == 48
            assert decode(reply).originate == int.from_bytes(datagram[40:48])


# -- the server, in this process ---------------------------------------------------------------


@needs_metadata
async def test_answers_a_request_and_ignores_the_rest(family_host: tuple[int, str]) -> None:
    family, host = family_host
    server = sntp.make_server(host, 0, INFO)
    async with server.serving() as addresses:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(addresses[0][:2])
            for junk in (b"", b"x" * 47, request_packet(1, mode=4), request_packet(1, version=6)):
                sock.send(junk)
            before = time.time()
            sock.send(request_packet(to_ntp(before)))
            with anyio.fail_after(5):
                await anyio.wait_readable(sock)
            after = time.time()
            got = decode(sock.recv(1024))
            # The junk came first; had any of it been answered, that answer would be here too.
            with pytest.raises(BlockingIOError):
                sock.recv(1024)
    assert got.originate == to_ntp(before)
    assert before - 1e-6 <= to_unix(got.receive) <= to_unix(got.transmit) <= after + 1e-6
    stats = server.statistics()
    assert (stats.datagrams_received, stats.datagrams_sent) == (5, 1)


@needs_metadata
async def test_on_a_wildcard_the_reply_comes_from_the_address_asked() -> None:
    # Every 127.x.y.z is this host's; a connected socket takes datagrams only from its peer.
    server = sntp.make_server("0.0.0.0", 0, INFO)
    async with server.serving() as addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.2", addresses[0][1]))
            sock.send(request_packet(42))
            with anyio.fail_after(5):
                await anyio.wait_readable(sock)
            assert decode(sock.recv(1024)).originate == 42


#: How long the test holds the server's event loop after its request reached the kernel.
HOLD: Final = 0.05


@needs_metadata
async def test_the_receive_time_is_the_kernel_s(family_host: tuple[int, str]) -> None:
    family, host = family_host
    server = sntp.make_server(host, 0, INFO)
    async with server.serving() as addresses:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(addresses[0][:2])
            sent = time.time()
            sock.send(request_packet(to_ntp(sent)))
            # Hold the loop without yielding: no task of the server's can run, so whenever the
            # handler reads a clock it is after `released`; only the kernel saw the request
            # arrive. A busy loop, not a sleep: the point is to keep the loop from running.
            released = time.monotonic() + HOLD
            while time.monotonic() < released:
                pass
            released_at = time.time()
            with anyio.fail_after(5):
                await anyio.wait_readable(sock)
            got = decode(sock.recv(1024))
    receive, transmit = to_unix(got.receive), to_unix(got.transmit)
    assert sent - 1e-6 <= receive < released_at - HOLD / 2, (sent, receive, released_at)
    assert transmit >= released_at - 1e-6
    assert got.originate == to_ntp(sent)


async def test_the_request_log_drops_what_does_not_fit_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = sntp.RequestLog(max_lines=2)
    for line in ("one", "two", "three"):
        log.write(line)  # never waits: the handler writing it has a reply to send
    log.close()
    with anyio.fail_after(5):
        await log.print_lines()
    assert capsys.readouterr().out == "one\ntwo\n1 request lines dropped: printing fell behind\n"


# -- the program -------------------------------------------------------------------------------


def exchange(port: int, datagrams: list[bytes]) -> list[Reply]:
    """Send ``datagrams`` to 127.0.0.1:``port`` from one socket; one reply, and no other."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        for datagram in datagrams:
            sock.send(datagram)
        sock.settimeout(5)
        replies = [decode(sock.recv(1024))]
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            replies.append(decode(sock.recv(1024)))
        return replies


@needs_metadata
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_program_answers_and_says_when_the_kernel_got_it(backend: str) -> None:
    argv = ["--port", "0", "--backend", backend, "--stratum", "2", "--refid", "192.0.2.7"]
    with ExampleProcess(SCRIPT, *argv) as server:
        _, port = server.address()
        before = time.time()
        (got,) = exchange(port, [b"hello", request_packet(to_ntp(before), version=3)])
        assert server.stop() == 0, server.stderr()
        lines = server.rest_of_output()
    assert (got.version, got.mode, got.stratum, got.leap) == (3, 4, 2, 0)
    assert got.reference_id == bytes([192, 0, 2, 7])
    assert got.originate == to_ntp(before)
    assert to_unix(got.reference) < before <= to_unix(got.receive)  # the reference: its start
    assert any("ignored a 5-byte datagram" in line for line in lines), lines
    answered = [line for line in lines if " v3 client: answered " in line]
    assert len(answered) == 1, lines
    assert answered[0].endswith(" ms after the kernel received it")


@needs_metadata
def test_the_program_says_in_one_line_that_it_cannot_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = run_example(SCRIPT, "--port", str(port))
    assert done.returncode == 1
    assert (
        done.stderr == f"sntp_server.py: could not bind 127.0.0.1:{port}: Address already in use\n"
    )


def test_the_program_refuses_bad_settings() -> None:
    for args, message in [
        (["--stratum", "0"], "--stratum must be from 1 to 15"),
        (["--stratum", "16"], "--stratum must be from 1 to 15"),
        (["--refid", "TOOLONG"], "an IPv4 address or 1 to 4 ASCII characters"),
    ]:
        done = run_example(SCRIPT, "--port", "0", *args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


# -- Debian's sntp (ntpsec's ntpdig), on port 123 in a namespace of its own --------------------

_RUN_EXAMPLE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


#: The line ``sntp`` prints for the server it picked, the same in ntpsec's ``ntpdig`` and in
#: the older ntp's ``sntp``: ``2026-12-08 01:24:43.89067 (+0000) -0.000024 +/- 0.000175
#: 127.0.0.1 s10 no-leap``.
SNTP_REPORT: Final = re.compile(
    r"\([+-]\d{4}\) (?P<offset>[+-]\d+\.\d+) \+/- \d+\.\d+ .*"
    r" s(?P<stratum>\d+) (?P<leap>\S+)$",
    re.MULTILINE,
)


def sntp_against_the_example(backend: str, *server_args: str) -> tuple[Any, str]:
    """Run the program on 127.0.0.1:123 in a fresh namespace and ask it with ``sntp``.

    Returns ``sntp``'s completed process and the server's output lines after the first.
    """
    client = require_tool("sntp", "sntp")
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    with veth_pair() as net:
        argv = [str(EXAMPLES / SCRIPT), "--port", "123", "--backend", backend, *server_args]
        server = net.start_python(net.ns_a, _RUN_EXAMPLE, *argv)
        assert server.expect_line(timeout=10) == "listening on 127.0.0.1:123"
        done = net.run(net.ns_a, [client, "-t", "5", "127.0.0.1"], timeout=30, check=False)
        server.popen.terminate()
        lines, stderr = server.finish(timeout=10)
        assert server.popen.returncode == 0, stderr
    return done, "\n".join(lines)


@pytest.mark.netns
@needs_metadata
@pytest.mark.parametrize("backend", BACKENDS)
def test_sntp_accepts_the_answer(backend: str) -> None:
    done, log = sntp_against_the_example(backend)
    assert done.returncode == 0, done.stdout + done.stderr
    report = SNTP_REPORT.search(done.stdout)
    assert report is not None, done.stdout + done.stderr
    offset = float(report["offset"])
    print(f"{backend}: sntp offset {offset * 1000:+.3f} ms; {log}")
    assert abs(offset) < 0.010
    assert (report["stratum"], report["leap"]) == ("10", "no-leap")
    assert "v4 client: answered" in log


@pytest.mark.netns
@needs_metadata
def test_sntp_ignores_an_unsynchronized_server() -> None:
    done, log = sntp_against_the_example("asyncio", "--unsynchronized")
    assert done.returncode != 0, done.stdout + done.stderr
    assert SNTP_REPORT.search(done.stdout) is None, done.stdout
    assert "v4 client: answered" in log  # answered, and the answer refused
