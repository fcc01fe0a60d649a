"""Peers for the command-line tests that are not anydgram: stdlib sockets in threads.

Every loop here is bounded in time, and every socket is on the loopback interface.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import pytest

from anydgram.__main__ import main

#: The ``--backend`` choices, as the command line spells them.
BACKENDS = ["asyncio", "uvloop", "trio"]


def ipv6_loopback_available() -> bool:
    """Whether ``::1`` can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A UDP port free on every host right now (the kernel's choice for the first)."""
    for _ in range(20):
        sockets: list[socket.socket] = []
        try:
            port = 0
            for host in hosts:
                sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, port))
                port = sock.getsockname()[1]
        except OSError:
            continue
        else:
            return port
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no free port")


def _proc_hex(family: int, host: str) -> str:
    """``host`` as /proc/net/udp* prints it: 32-bit words in host byte order, as hex."""
    packed = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words)


def _udp_port_bound(host: str, port: int) -> bool | None:
    """Whether a UDP socket is bound to ``host``:``port`` or its wildcard (from /proc).

    None where /proc cannot say.
    """
    family = family_of(host)
    table = "/proc/net/udp" if family == socket.AF_INET else "/proc/net/udp6"
    wanted = {
        _proc_hex(family, host),
        _proc_hex(family, "0.0.0.0" if family == socket.AF_INET else "::"),
    }
    try:
        with open(table) as lines:
            next(lines, None)  # the header
            for line in lines:
                address, _, hex_port = line.split()[1].rpartition(":")
                if int(hex_port, 16) == port and address in wanted:
                    return True
    except OSError:
        return None
    return False


def wait_until_bound(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Wait until something binds ``host``:``port``.

    On Linux this reads /proc/net/udp*, which takes nothing from the server. Elsewhere it probes
    with a bind of its own, which can, for a moment, take the port from a server binding at the
    same instant.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bound = _udp_port_bound(host, port)
        if bound:
            return
        if bound is None:
            with socket.socket(family_of(host), socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        return
                    raise
        time.sleep(0.01)
    raise AssertionError(f"nothing bound {host}:{port} within {timeout} s")


def exchange(
    host: str, port: int, payload: bytes, *, timeout: float = 2.0
) -> tuple[bytes, tuple[str, int]] | None:
    """Send ``payload`` from a fresh stdlib socket; the reply and its sender, or ``None``."""
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        try:
            data, sender = sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data, (sender[0], sender[1])


class EchoServer:
    """A stdlib UDP echo server in a thread, with ping-aware misbehaviour.

    Datagrams starting with 8 ASCII digits (ping's sequence number) in ``drop`` are not
    answered; those in ``late`` are answered after that many seconds.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        drop: Sequence[int] = (),
        late: dict[int, float] | None = None,
        discard: bool = False,
        lifetime: float = 30.0,
    ) -> None:
        self.sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._drop = set(drop)
        self._late = dict(late or {})
        self._discard = discard
        self._lifetime = lifetime
        self._stop = threading.Event()
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        for timer in self._timers:
            timer.cancel()
            timer.join(5)
        self.sock.close()

    def _reply(self, data: bytes, address: tuple[str, int]) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.sock.sendto(data, address)

    def _serve(self) -> None:
        deadline = time.monotonic() + self._lifetime
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append(data)
            seq = int(data[:8]) if data[:8].isdigit() and len(data) >= 8 else None
            if self._discard or seq in self._drop:
                continue
            if seq is not None and seq in self._late:
                timer = threading.Timer(self._late[seq], self._reply, (data, address))
                self._timers.append(timer)
                timer.start()
                continue
            self._reply(data, address)


def run_main_with(
    argv: list[str],
    client: Callable[[], None],
    *,
    interrupt: bool = True,
    timeout: float = 20.0,
) -> tuple[int, list[BaseException]]:
    """Run ``main(argv)`` here (the main thread) while ``client`` runs in a thread.

    With ``interrupt``, a SIGINT (Ctrl-C) follows the client, sent only while ``main`` still
    runs. Returns the exit status and whatever ``client`` raised.
    """
    errors: list[BaseException] = []
    running = threading.Event()
    running.set()

    def drive() -> None:
        try:
            client()
        except BaseException as exc:
            errors.append(exc)
        finally:
            if interrupt and running.is_set():
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        status = main(argv)
    finally:
        running.clear()
    try:
        thread.join(timeout)
    except KeyboardInterrupt:  # pragma: no cover - only when the command ended early
        pytest.fail("SIGINT arrived after the command had ended")
    assert not thread.is_alive()
    return status, errors


def socat_path() -> str:
    """The socat executable, or skip the test."""
    path = shutil.which("socat")
    if path is None:
        pytest.skip("socat is not installed (apt-get install socat): the non-anydgram peer")
    return path


@contextlib.contextmanager
def socat_echo_server(port: int) -> Generator[subprocess.Popen[bytes]]:
    """``socat`` as a UDP echo server on 127.0.0.1:``port`` (a child of this process)."""
    process = subprocess.Popen(
        [socat_path(), f"UDP4-RECVFROM:{port},bind=127.0.0.1,fork", "EXEC:cat"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_bound(port)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait(5)


def anydgram_command(*args: str) -> list[str]:
    """``python -m anydgram ARGS`` with this interpreter."""
    return [sys.executable, "-m", "anydgram", *args]


def child_env() -> dict[str, str]:
    """The environment for child processes: unbuffered, so lines arrive as printed."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


HEADER = re.compile(r"PING (?P<target>\S+) \((?P<address>\S+)\) (?P<size>\d+) bytes of data\.$")
REPLY = re.compile(
    r"(?P<size>\d+) bytes from (?P<address>\S+): seq=(?P<seq>\d+) time=(?P<time>\d+\.\d{3}) ms$"
)
TIMEOUT = re.compile(r"Request timeout for seq=(?P<seq>\d+)$")
ERROR = re.compile(r"From (?P<address>\S+) seq=(?P<seq>\d+) (?P<reason>.+)$")
TITLE = re.compile(r"--- (?P<target>\S+) ping statistics ---$")
COUNTS = re.compile(
    r"(?P<transmitted>\d+) packets transmitted, (?P<received>\d+) received"
    r"(?:, \+(?P<errors>\d+) errors)?, (?P<loss>[\d.]+)% packet loss, time (?P<time>\d+)ms$"
)
RTT = re.compile(
    r"rtt min/avg/max/mdev = (?P<min>\d+\.\d{3})/(?P<avg>\d+\.\d{3})/"
    r"(?P<max>\d+\.\d{3})/(?P<mdev>\d+\.\d{3}) ms$"
)


@dataclass
class PingOutput:
    target: str
    address: str
    size: int
    replies: dict[int, float]
    timeouts: list[int]
    errors: list[int]
    transmitted: int
    received: int


def check_ping_output(text: str, *, target: str) -> PingOutput:
    """Check ``text`` line by line against the iputils shape; recompute the statistics."""
    lines = text.splitlines()
    header = HEADER.match(lines[0])
    assert header, lines[0]
    assert header["target"] == target
    replies: dict[int, float] = {}
    timeouts: list[int] = []
    errors: list[int] = []
    order: list[int] = []
    index = 1
    while lines[index] != "":
        line = lines[index]
        if reply := REPLY.match(line):
            assert int(reply["size"]) == int(header["size"])
            assert reply["address"] == header["address"]
            replies[int(reply["seq"])] = float(reply["time"])
            order.append(int(reply["seq"]))
        elif timeout := TIMEOUT.match(line):
            timeouts.append(int(timeout["seq"]))
            order.append(int(timeout["seq"]))
        elif error := ERROR.match(line):
            assert error["address"] == header["address"]
            errors.append(int(error["seq"]))
            order.append(int(error["seq"]))
        else:
            pytest.fail(f"unexpected line {line!r}")
        index += 1
    # One line per datagram, in sequence from 1.
    assert order == list(range(1, len(order) + 1))
    title = TITLE.match(lines[index + 1])
    assert title, lines[index + 1]
    assert title["target"] == target
    counts = COUNTS.match(lines[index + 2])
    assert counts, lines[index + 2]
    transmitted, received = int(counts["transmitted"]), int(counts["received"])
    assert received == len(replies)
    assert transmitted >= len(order)  # an interrupted run counts the datagram in flight
    assert int(counts["errors"] or 0) == len(errors)
    expected_loss = (transmitted - received) * 100 / transmitted
    assert counts["loss"] == f"{expected_loss:g}"
    rest = lines[index + 3 :]
    if received:
        assert len(rest) == 1, rest
        rtt = RTT.match(rest[0])
        assert rtt, rest[0]
        times = list(replies.values())
        mean = sum(times) / len(times)
        mdev = math.sqrt(sum((t - mean) ** 2 for t in times) / len(times))
        # The printed times are rounded to the microsecond: allow for that.
        assert float(rtt["min"]) == pytest.approx(min(times), abs=0.0015)
        assert float(rtt["max"]) == pytest.approx(max(times), abs=0.0015)
        assert float(rtt["avg"]) == pytest.approx(mean, abs=0.0015)
        assert float(rtt["mdev"]) == pytest.approx(mdev, abs=0.003)
        assert float(rtt["min"]) <= float(rtt["avg"]) <= float(rtt["max"])
    else:
        assert rest == []  # as iputils: no rtt line without replies
    return PingOutput(
        target=target,
        address=header["address"],
        size=int(header["size"]),
        replies=replies,
        timeouts=timeouts,
        errors=errors,
        transmitted=transmitted,
        received=received,
    )


class LineReader:
    """Lines of a child's stdout pipe as they come, each wait bounded.

    Reads the pipe unbuffered: a buffered reader can hold a line ``select()`` no longer sees.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._fd = process.stdout.fileno()
        self._pending = b""
        self.seen: list[str] = []

    def next_line(self, deadline: float) -> str | None:
        """The next line, or ``None`` if none came before ``deadline`` (time.monotonic) or EOF."""
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        raw, self._pending = self._pending.split(b"\n", 1)
        line = raw.decode(errors="replace")
        self.seen.append(line)
        return line
