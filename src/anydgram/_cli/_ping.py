"""``anydgram ping``: round trips to any UDP echo server, printed in the shape of iputils ping.

Each datagram starts with its sequence number in 8 ASCII digits, so an echo server of any kind
(``socat``, a shell one-liner, ``anydgram serve``) sends back something the pinger can match; a
late reply to an earlier sequence number is never taken for the current one.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from .. import DatagramClient, connect_udp
from ._args import PING_MIN_SIZE as MIN_SIZE
from ._codec import Codec
from ._output import describe_os_error, format_address, format_host_port, write_line
from ._runner import Backend, CLIError, run

__all__ = ("MIN_SIZE", "PingOptions", "PingReport", "ping", "run_ping")

_SEQ_MODULO = 10**MIN_SIZE
_FILLER = b" anydgram ping" * 16


@dataclass(frozen=True)
class PingOptions:
    """What to ping and how (``count=None`` pings until interrupted)."""

    host: str
    port: int
    count: int | None = None
    interval: float = 1.0
    timeout: float = 1.0
    size: int = 56
    family: int = socket.AF_UNSPEC
    protocol: str = "bytes"


class PingReport:
    """Counts and round-trip sums for the summary; bounded memory however long the run."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.transmitted = 0
        self.received = 0
        self.errors = 0
        self.started: float | None = None
        self.finished: float | None = None
        self._rtt_sum = 0.0
        self._rtt_sum_squares = 0.0
        self._rtt_min = math.inf
        self._rtt_max = 0.0

    def add_reply(self, rtt_ms: float) -> None:
        """Count one reply that took ``rtt_ms`` milliseconds."""
        self.received += 1
        self._rtt_sum += rtt_ms
        self._rtt_sum_squares += rtt_ms * rtt_ms
        self._rtt_min = min(self._rtt_min, rtt_ms)
        self._rtt_max = max(self._rtt_max, rtt_ms)

    def summary_lines(self) -> list[str]:
        """The statistics block iputils prints at the end (no rtt line without replies)."""
        elapsed = 0.0
        if self.started is not None:
            end = self.finished if self.finished is not None else time.perf_counter()
            elapsed = end - self.started
        loss = 0.0
        if self.transmitted:
            loss = (self.transmitted - self.received) * 100 / self.transmitted
        errors = f", +{self.errors} errors" if self.errors else ""
        lines = [
            "",
            f"--- {self.target} ping statistics ---",
            f"{self.transmitted} packets transmitted, {self.received} received{errors}, "
            f"{loss:g}% packet loss, time {round(elapsed * 1000)}ms",
        ]
        if self.received:
            avg = self._rtt_sum / self.received
            # Population standard deviation, as iputils' mdev.
            mdev = math.sqrt(max(0.0, self._rtt_sum_squares / self.received - avg * avg))
            lines.append(
                f"rtt min/avg/max/mdev = {self._rtt_min:.3f}/{avg:.3f}/"
                f"{self._rtt_max:.3f}/{mdev:.3f} ms"
            )
        return lines


def make_payload(seq: int, size: int) -> bytes:
    """The datagram for ``seq``: its number in 8 ASCII digits, then filler up to ``size``."""
    head = b"%08d" % (seq % _SEQ_MODULO)
    filler = _FILLER * (1 + (size - MIN_SIZE) // len(_FILLER))
    return head + filler[: size - MIN_SIZE]


def sequence_of(reply: bytes) -> int | None:
    """The sequence number a reply echoes, or ``None`` when it does not start with one."""
    head = reply[:MIN_SIZE]
    if len(head) == MIN_SIZE and head.isdigit():
        return int(head)
    return None


def _describe_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "Destination Port Unreachable"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "Destination Host Unreachable"
    return exc.strerror or str(exc)


async def _resolves(host: str, port: int) -> bool:
    """Whether ``host`` has an address of any family (after a lookup for one family failed)."""
    try:
        await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return False
    return True


async def connect(host: str, port: int, family: int) -> DatagramClient[bytes, bytes]:
    """Connect a client, turning name and socket errors into one-line :class:`CLIError`."""
    try:
        return await connect_udp(host, port, family=family)
    except socket.gaierror as exc:
        if family != socket.AF_UNSPEC and await _resolves(host, port):
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise CLIError(f"no {kind} address for {host}") from None
        raise CLIError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    except UnicodeError as exc:
        raise CLIError(f"cannot resolve host {host!r}: {exc}") from None
    except OSError as exc:
        where = format_host_port(host, port)
        raise CLIError(f"cannot reach {where}: {describe_os_error(exc)}") from None


def _payload_of(reply: bytes, codec: Codec) -> bytes:
    """The ping payload a reply carries: itself, or the string packet the protocol holds."""
    if codec.protocol is None:
        return reply
    parsed, packet = codec.decode(reply)
    return packet.encode("utf-8", "replace") if parsed and isinstance(packet, str) else b""


async def _wait_reply(
    client: DatagramClient[bytes, bytes],
    seq: int,
    sent_at: float,
    timeout: float,
    codec: Codec,
) -> tuple[float, int] | None:
    """Wait for the reply to ``seq``: ``(rtt_ms, size)``, or ``None`` after ``timeout``."""
    expected = seq % _SEQ_MODULO
    with anyio.move_on_after(timeout):
        while True:
            reply = await client.recv_packet()
            received_at = time.perf_counter()
            if sequence_of(_payload_of(reply, codec)) == expected:
                return (received_at - sent_at) * 1000, len(reply)
            # Anything else is a late or duplicate reply to an earlier datagram: skipped.
    return None


async def ping(
    options: PingOptions, report: PingReport, write: Callable[[str], None] = write_line
) -> None:
    """Ping ``options.host``, writing a line per datagram and filling ``report`` as it goes.

    Raises:
        CLIError: The host does not resolve or cannot be reached at all.
    """
    codec = Codec(options.protocol)
    client = await connect(options.host, options.port, options.family)
    async with client:
        peer = format_address(client.remote_address)
        write(f"PING {report.target} ({peer}) {options.size} bytes of data.")
        report.started = time.perf_counter()
        try:
            seq = 0
            while options.count is None or seq < options.count:
                seq += 1
                sent_at = time.perf_counter()
                report.transmitted += 1
                try:
                    payload = make_payload(seq, options.size)
                    if codec.protocol is not None:
                        payload = codec.encode_text(payload.decode("ascii"))
                    await client.send_packet(payload)
                    reply = await _wait_reply(client, seq, sent_at, options.timeout, codec)
                except OSError as exc:
                    report.errors += 1
                    write(f"From {peer} seq={seq} {_describe_error(exc)}")
                else:
                    if reply is None:
                        write(f"Request timeout for seq={seq}")
                    else:
                        rtt_ms, size = reply
                        report.add_reply(rtt_ms)
                        write(f"{size} bytes from {peer}: seq={seq} time={rtt_ms:.3f} ms")
                if options.count is not None and seq >= options.count:
                    break
                await anyio.sleep(max(0.0, sent_at + options.interval - time.perf_counter()))
        finally:
            report.finished = time.perf_counter()


def run_ping(options: PingOptions, backend: Backend) -> int:
    """Run ``anydgram ping``; 0 when any reply came, 1 when none (2 is raised as CLIError)."""
    report = PingReport(format_host_port(options.host, options.port))
    run(backend, lambda: ping(options, report))
    if report.started is None:
        return 1  # interrupted before the first datagram
    for line in report.summary_lines():
        write_line(line)
    return 0 if report.received else 1
