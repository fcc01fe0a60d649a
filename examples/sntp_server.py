"""An SNTP server (RFC 4330, server mode) whose receive time is the kernel's, not Python's.

A time server's answer carries two readings of its own clock: when the request arrived
(*receive*) and when the reply left (*transmit*). The client subtracts the time the server held
the request from the round trip, so a receive time read late, by a handler that ran some time
after the datagram arrived, is wrong by that delay, and so is the round trip the client works
out; its offset is wrong by half of it. On a busy event loop that can be milliseconds. This
server asks the kernel to stamp every datagram as it arrives (``DatagramServer(...,
receive_metadata=True)``, ``SO_TIMESTAMPNS`` on Linux) and sends that stamp,
:attr:`request.metadata.timestamp <anydgram.DatagramMetadata.timestamp>`, as the receive time;
only the transmit time is read in the handler, just before the reply is built.

What it answers:

- a client request (mode 3) with a server reply (mode 4), and a symmetric active one (mode 1)
  with symmetric passive (mode 2), as RFC 4330 section 5 asks; the version (1 to 4) and the
  poll interval are copied from the request and its transmit timestamp becomes the reply's
  originate timestamp, which is how the client matches the reply to its request;
- nothing to datagrams shorter than the 48-byte NTP header, to versions 0 and 5 to 7, and to
  the other modes (server replies, broadcasts, control and private messages), so two servers
  can never bounce packets at each other. Extension fields and MACs after the header are
  ignored; the reply is never authenticated.

It serves the host's own clock and cannot know how good that is, so by default it says so the
way ntpd's undisciplined local clock did: stratum 10, reference ID ``LOCL``. On a host whose
clock is kept by chrony or ntpd from a stratum-1 server, say ``--stratum 2 --refid
192.0.2.1`` (that server's address); ``--unsynchronized`` sets the leap indicator to 3 ("clock
not synchronized"), which tells every client to ignore this server. The precision field is the
coarser of the clock's resolution and a float timestamp's (about 2**-22 s today).

Port 123 needs root (or ``CAP_NET_BIND_SERVICE``), and most clients ask no other port::

    sudo python examples/sntp_server.py &
    sntp 127.0.0.1        # ntpsec's ntpdig (Debian package sntp)

A client on another machine is pointed at ``--host``, the address bound (``server 192.0.2.10
iburst`` in chrony.conf or ntp.conf, ``NTP=192.0.2.10`` in timesyncd.conf).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from errno import EACCES
from typing import Any, Final

import anyio

from anydgram import DatagramRequest, DatagramServer

BACKENDS = ("asyncio", "uvloop", "trio")

# -- the wire format (RFC 4330 section 4) ------------------------------------------------------

#: LI VN Mode, stratum, poll, precision, root delay, root dispersion, reference ID, then the
#: reference, originate, receive and transmit timestamps.
_HEADER: Final = struct.Struct("!BBbbII4sQQQQ")
HEADER_SIZE: Final = _HEADER.size  # 48
#: Seconds from the NTP epoch (1900-01-01) to the Unix one (1970-01-01).
NTP_UNIX_OFFSET: Final = 2_208_988_800

LEAP_NONE, LEAP_INSERT, LEAP_DELETE, LEAP_UNSYNCHRONIZED = 0, 1, 2, 3
SYMMETRIC_ACTIVE, SYMMETRIC_PASSIVE, CLIENT, SERVER = 1, 2, 3, 4
#: The reply's mode for each request mode this server answers (RFC 4330 section 5).
REPLY_MODE: Final = {CLIENT: SERVER, SYMMETRIC_ACTIVE: SYMMETRIC_PASSIVE}
MODE_NAMES: Final = {SYMMETRIC_ACTIVE: "symmetric active", CLIENT: "client"}
VERSIONS: Final = range(1, 5)


class IgnoredRequest(ValueError):
    """A datagram this server does not answer; the message says why."""


@dataclass(frozen=True)
class Request:
    """The fields of a request a reply needs."""

    version: int
    mode: int
    poll: int
    #: The client's transmit timestamp, as sent (64-bit NTP format): the reply echoes it.
    transmit: int


@dataclass(frozen=True)
class ServerInfo:
    """What the server says about its clock in every reply."""

    stratum: int
    #: Four bytes: an ASCII code (stratum 1, or ``LOCL``) or the upstream server's IPv4 address.
    reference_id: bytes
    #: log2 of the clock's precision in seconds (-22: about 0.24 microseconds).
    precision: int
    leap: int = LEAP_NONE
    #: When the clock was last set, Unix time (this server only knows when it started);
    #: ``None`` sends 0, "unknown".
    reference_time: float | None = None


def ntp_timestamp(unix_time: float) -> int:
    """A Unix time as a 64-bit NTP timestamp: 32 bits of seconds (mod 2**32), 32 of fraction.

    The seconds wrap in 2036, where NTP era 1 begins; clients resolve the era from their own
    clock (RFC 4330 section 3).
    """
    seconds = math.floor(unix_time)
    fraction = int((unix_time - seconds) * 2**32)  # exact: the subtraction loses nothing
    return ((seconds + NTP_UNIX_OFFSET) & 0xFFFF_FFFF) << 32 | fraction


def clock_precision() -> int:
    """The precision field: log2 of the coarser of the clock's and a float time's resolution."""
    resolution = max(time.get_clock_info("time").resolution, math.ulp(time.time()))
    return math.ceil(math.log2(resolution))


def parse_request_untrusted(datagram: bytes) -> Request:
    """The request in a datagram from anyone.

    Raises:
        IgnoredRequest: It is too short, or its version or mode is not one this server
            answers; the message says which.
    """
    if len(datagram) < HEADER_SIZE:
        raise IgnoredRequest(f"a {len(datagram)}-byte datagram (an NTP header is 48)")
    first, _, poll, *_, transmit = _HEADER.unpack_from(datagram)
    version, mode = first >> 3 & 0b111, first & 0b111
    if version not in VERSIONS:
        raise IgnoredRequest(f"version {version}")
    if mode not in REPLY_MODE:
        raise IgnoredRequest(f"mode {mode} (only client and symmetric active requests)")
    return Request(version, mode, poll, transmit)


def build_reply(request: Request, info: ServerInfo, received: float, transmit: float) -> bytes:
    """The reply to ``request``: received at ``received``, leaving at ``transmit`` (Unix time)."""
    return _HEADER.pack(
        info.leap << 6 | request.version << 3 | REPLY_MODE[request.mode],
        info.stratum,
        request.poll,
        info.precision,
        0,  # root delay and root dispersion: this clock is its own reference
        0,
        info.reference_id,
        0 if info.reference_time is None else ntp_timestamp(info.reference_time),
        request.transmit,  # the originate timestamp: the client's own, unchanged
        ntp_timestamp(received),
        ntp_timestamp(transmit),
    )


def answer_untrusted(
    datagram: bytes, info: ServerInfo, received: float, clock: Callable[[], float] = time.time
) -> tuple[bytes | None, str]:
    """The reply to one datagram (``None``: send nothing) and a line describing it.

    ``clock`` gives the transmit time; it is read last, once the request has been parsed.
    """
    try:
        request = parse_request_untrusted(datagram)
    except IgnoredRequest as exc:
        return None, f"ignored {exc}"
    reply = build_reply(request, info, received, clock())
    return reply, f"v{request.version} {MODE_NAMES[request.mode]}"


def reference_id(text: str) -> bytes:
    """``--refid``: an IPv4 address (stratum 2 and up) or an ASCII code of up to 4 characters."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        pass
    if not (0 < len(text) <= 4 and text.isascii() and text.isprintable()):
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv4 address or 1 to 4 ASCII characters")
    return text.encode("ascii").ljust(4, b"\0")


# -- the server --------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RequestLog:
    """A line per request, printed by a task of its own, so that writing one never delays a reply.

    A reply a handler returns leaves after the handler does (on Linux with the rest of its
    batch), and the transmit timestamp in it is read before: a print in the handler, a system
    call of its own, would fall between the two (some 20 microseconds on loopback) and be an
    error in every client's offset. Lines that find the buffer full are dropped and counted:
    under a flood the replies matter more than the log.
    """

    def __init__(self, max_lines: int = 1024) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[str](max_lines)
        self.dropped = 0

    def write(self, line: str) -> None:
        """Queue ``line`` for printing, without waiting; drop it if the queue is full."""
        try:
            self._send.send_nowait(line)
        except anyio.WouldBlock:
            self.dropped += 1

    def close(self) -> None:
        """No more lines: :meth:`print_lines` prints those queued, then ends."""
        self._send.close()

    async def print_lines(self) -> None:
        """Print the lines as they come until :meth:`close`, then how many were dropped."""
        async with self._receive:
            async for line in self._receive:
                print(line, flush=True)
        if self.dropped:
            print(f"{self.dropped} request lines dropped: printing fell behind", flush=True)


def make_server(
    host: str, port: int, info: ServerInfo, log: RequestLog | None = None
) -> DatagramServer[bytes, bytes]:
    """A server answering SNTP on ``host``:``port`` with kernel receive timestamps."""

    async def handler(request: DatagramRequest[bytes, bytes]) -> bytes | None:
        metadata = request.metadata
        stamped = metadata.timestamp if metadata is not None else None
        # Without a kernel timestamp (a platform that has none) the handler's clock is the
        # best there is; it is late by however long the datagram waited for the handler.
        received = time.time() if stamped is None else stamped
        reply, description = answer_untrusted(request.packet, info, received)
        if log is not None:
            if reply is None:
                note = ""
            elif stamped is None:
                note = ": answered; no kernel timestamp, received at the handler's time"
            else:
                held = (time.time() - stamped) * 1000
                note = f": answered {held:.3f} ms after the kernel received it"
            log.write(f"{format_address(request.address)} {description}{note}")
        return reply

    return DatagramServer(host, port, handler, receive_metadata=True)


async def serve(server: DatagramServer[bytes, bytes], log: RequestLog | None) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first.

    Raises:
        OSError: The address cannot be bound (port 123 needs root, say).
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server.serving(grace_period=1.0) as addresses:
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async with anyio.create_task_group() as tg:
                if log is not None:
                    tg.start_soon(log.print_lines)
                async for _ in signals:
                    break
                await server.shutdown(grace_period=1.0)
                if log is not None:
                    log.close()  # every handler has finished: the printer ends with the last line


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and answer SNTP requests until interrupted."""
    parser = argparse.ArgumentParser(description="An SNTP server (RFC 4330) for this host's clock.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=123, help="port to bind; 0 picks a free one (123)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--stratum", type=int, default=10, help="1 to 15; the upstream server's plus one (10)"
    )
    parser.add_argument(
        "--refid",
        type=reference_id,
        default=b"LOCL",
        help="reference ID: a code such as GPS, or the upstream server's IPv4 address (LOCL)",
    )
    parser.add_argument(
        "--unsynchronized",
        action="store_true",
        help="send leap indicator 3: clients then know not to use this clock",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print a line per request")
    args = parser.parse_args(argv)
    if not 1 <= args.stratum <= 15:
        parser.error("--stratum must be from 1 to 15")
    info = ServerInfo(
        stratum=args.stratum,
        reference_id=args.refid,
        precision=clock_precision(),
        leap=LEAP_UNSYNCHRONIZED if args.unsynchronized else LEAP_NONE,
        reference_time=time.time(),
    )
    log = None if args.quiet else RequestLog()
    server = make_server(args.host, args.port, info, log)
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    try:
        anyio.run(serve, server, log, backend=backend, backend_options=options)
    except OSError as exc:  # the bind failed: say so in one line, not a traceback
        message = f"{parser.prog}: {exc.strerror or exc}"
        if exc.errno == EACCES:
            message += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        parser.exit(1, message + "\n")


if __name__ == "__main__":
    main()
