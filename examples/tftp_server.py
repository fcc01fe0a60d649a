"""A read-only TFTP server: RFC 1350, with the blksize, tsize and timeout options.

TFTP is what network-boot firmware, IP phones and switches still fetch their files with, and
every Debian machine has a client for it (``tftp``, ``atftp``, ``curl``). It is a whole
protocol in a few hundred lines, and it shows the pieces of anydgram a real one needs:

- a :class:`~anydgram.DatagramServer` on the well-known port receives the requests (port 69
  needs root, so this one defaults to 6969);
- every transfer runs on its own endpoint, :func:`~anydgram.open_udp_endpoint` on port 0: in
  TFTP the kernel-chosen port *is* the transfer's identity (its "transfer ID"), and the
  client sends its acknowledgements there;
- the transfer is lock-step, one block in flight: each DATA packet goes out with
  :meth:`~anydgram.DatagramEndpoint.request`, which waits for the client's ACK of that block,
  considers only datagrams from the client's address and port, and drops (and counts) the
  rest, a duplicate ACK of an earlier block included. So a duplicate ACK never makes a block
  go out twice: the "Sorcerer's Apprentice" bug of early TFTP (RFC 1123, 4.2.3.1) cannot
  happen. A block is sent again only when its ACK has not come in time, not even late: an
  ACK that came in after the wait ended (the server busy elsewhere) still counts.

What the server does:

- serves the regular files under one directory (``--root``), and only reads: a write request
  gets error 2 (access violation);
- refuses, with an ERROR packet, names that are absolute, contain a ``..`` component or lead
  outside the directory through a symbolic link, and anything that is not a regular file;
- speaks ``octet`` and ``netascii`` (line ends sent as CR LF, as RFC 1350 asks);
- negotiates the options of RFC 2347 in an OACK: ``blksize`` (RFC 2348, 8 to 65464 bytes),
  ``tsize`` (RFC 2349, the file's size; octet mode only) and ``timeout`` (RFC 2349, 1 to 255
  seconds); other options are ignored, as the RFC allows;
- waits for an ACK as long as the client's ``timeout`` option says, or else for a time
  estimated from the round trips it measures (RFC 6298's estimator, doubled after each
  timeout), never less than 50 ms, so a lossy link costs tens of milliseconds per lost
  packet, not seconds, and a busy client is not sent every block twice;
- runs at most ``--max-transfers`` transfers at once (more are refused with error 0) and one
  per client address and port (a re-sent request is ignored while its transfer runs), and
  limits how many requests each source address may send per second (``--rate-limit``).

Run it, then point any TFTP client at it::

    python examples/tftp_server.py --root /srv/tftp --port 6969
    tftp -m binary 127.0.0.1 6969 -c get boot.img
    atftp --option "blksize 1428" -g -r boot.img -l boot.img 127.0.0.1 6969
    curl -o boot.img tftp://127.0.0.1:6969/boot.img
"""

from __future__ import annotations

import argparse
import enum
import os
import signal
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

import anyio
from anyio.abc import TaskGroup

from anydgram import (
    DatagramEndpoint,
    DatagramRequest,
    DatagramServer,
    RateLimit,
    open_udp_endpoint,
)

BACKENDS = ("asyncio", "uvloop", "trio")

# -- the wire format (RFC 1350, RFC 2347) ------------------------------------------------------

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
MODES: Final = ("octet", "netascii")
_OPCODE: Final = struct.Struct("!H")
_HEADER: Final = struct.Struct("!HH")  # opcode, then the block number (DATA, ACK) or error code

MAX_REQUEST: Final = 512  # RFC 2347: a request, options included, fits in 512 bytes
DEFAULT_BLKSIZE: Final = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255  # RFC 2349, in seconds


class ErrorCode(enum.IntEnum):
    """The error codes of RFC 1350 (and 8, RFC 2347's)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class TFTPError(Exception):
    """A request this server refuses; the client is told with an ERROR packet."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientAbort(Exception):
    """The client sent an ERROR packet: it ended the transfer."""


class ClientGone(Exception):
    """The client's port answers ICMP "port unreachable": nobody is there any more."""


@dataclass(frozen=True)
class Request:
    """A read or write request (RRQ or WRQ)."""

    opcode: int
    filename: str
    #: In lower case: ``"octet"`` or ``"netascii"``.
    mode: str
    #: Option names in lower case (they are case-insensitive), values as sent.
    options: dict[str, str]


def opcode_of(datagram: bytes) -> int | None:
    """The opcode of a datagram, or ``None`` if it is too short to have one."""
    return _OPCODE.unpack_from(datagram)[0] if len(datagram) >= 2 else None


def parse_request_untrusted(datagram: bytes) -> Request:
    """Parse an RRQ or WRQ: ``opcode | filename NUL | mode NUL | (option NUL value NUL)*``.

    Raises:
        TFTPError: ``ILLEGAL_OPERATION``, saying what is wrong with the request.
    """
    opcode = opcode_of(datagram)
    if opcode not in (RRQ, WRQ):
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, "not a read or write request")
    if len(datagram) > MAX_REQUEST:
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, "request longer than 512 bytes")
    fields = datagram[2:].split(b"\0")
    if len(fields) < 3 or fields.pop() != b"":
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, "a field is not ended by a NUL byte")
    try:
        filename, mode, *pairs = (item.decode("utf-8") for item in fields)
    except UnicodeDecodeError:
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, "the request is not UTF-8") from None
    if len(pairs) % 2:
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, "an option has no value")
    if mode.lower() not in MODES:
        raise TFTPError(ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {mode[:20]!r}")
    options: dict[str, str] = {}
    for name, value in zip(pairs[::2], pairs[1::2], strict=True):
        options.setdefault(name.lower(), value)  # of a repeated option, the first counts
    return Request(opcode, filename, mode.lower(), options)


def data_packet(block: int, payload: bytes) -> bytes:
    """A DATA packet; block numbers wrap from 65535 to 0 in transfers that long."""
    return _HEADER.pack(DATA, block & 0xFFFF) + payload


def error_packet(code: ErrorCode, message: str) -> bytes:
    """An ERROR packet."""
    return _HEADER.pack(ERROR, code) + message.encode("utf-8") + b"\0"


def oack_packet(options: dict[str, str]) -> bytes:
    """An option acknowledgement (RFC 2347): the options accepted, with their values."""
    fields = (f"{name}\0{value}\0" for name, value in options.items())
    return _OPCODE.pack(OACK) + "".join(fields).encode("ascii")


def answers(datagram: bytes, block: int) -> bool:
    """Whether a datagram from the client settles ``block``: its ACK, or an ERROR."""
    if len(datagram) < _HEADER.size:
        return False
    opcode: int
    number: int
    opcode, number = _HEADER.unpack_from(datagram)
    return (opcode == ACK and number == block & 0xFFFF) or opcode == ERROR


def describe_error_untrusted(datagram: bytes) -> str:
    """An ERROR packet from a client, for a log line: its code and (printable) message."""
    code = _HEADER.unpack_from(datagram)[1] if len(datagram) >= _HEADER.size else -1
    message = datagram[4:].split(b"\0", 1)[0][:100].decode("ascii", "replace")
    return f"error {code} {''.join(c if c.isprintable() else '?' for c in message)!r}"


# -- option negotiation (RFC 2347, 2348, 2349) -------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How a transfer runs, once negotiated."""

    blksize: int = DEFAULT_BLKSIZE
    #: The retransmission timeout the client asked for, in seconds; ``None``: adaptive.
    timeout: int | None = None


def _integer(text: str | None) -> int | None:
    # isascii() too: str.isdigit() accepts digits of every script ("٣", "²").
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    return int(text)


def negotiate(requested: dict[str, str], *, size: int | None) -> tuple[Options, dict[str, str]]:
    """The options of a read, and what the OACK says (empty: no OACK, start with DATA 1).

    Args:
        requested: The request's options.
        size: The number of bytes the transfer will carry, for ``tsize``; ``None`` when it
            is not known up front (netascii), which leaves ``tsize`` out.
    """
    accepted: dict[str, str] = {}
    blksize = _integer(requested.get("blksize"))
    if blksize is not None and blksize >= MIN_BLKSIZE:
        accepted["blksize"] = str(min(blksize, MAX_BLKSIZE))  # the server may offer less
    timeout = _integer(requested.get("timeout"))
    if timeout is not None and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        accepted["timeout"] = str(timeout)
    # Left out for an empty file too: curl (7.88) refuses an OACK that says "tsize 0", and the
    # client learns the size from the first, empty, DATA packet anyway.
    if _integer(requested.get("tsize")) is not None and size:
        accepted["tsize"] = str(size)
    options = Options(
        blksize=int(accepted.get("blksize", DEFAULT_BLKSIZE)),
        timeout=int(accepted["timeout"]) if "timeout" in accepted else None,
    )
    return options, accepted


# -- the served directory ----------------------------------------------------------------------


def resolve_untrusted(root: Path, filename: str) -> Path:
    """The file under ``root`` (absolute, symlinks resolved) that ``filename`` names.

    Raises:
        TFTPError: ``ACCESS_VIOLATION`` for an absolute name, a ``..`` component, or a name
            that resolves, through symbolic links, to a place outside ``root``.
    """
    name = PurePosixPath(filename)
    if name.is_absolute():
        raise TFTPError(ErrorCode.ACCESS_VIOLATION, "absolute paths are refused")
    if ".." in name.parts:
        raise TFTPError(ErrorCode.ACCESS_VIOLATION, "'..' is refused")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise TFTPError(ErrorCode.ACCESS_VIOLATION, "the path leads outside the directory")
    return path


def open_for_reading(root: Path, filename: str) -> tuple[IO[bytes], int]:
    """Open the regular file ``filename`` names under ``root``; the file and its size.

    Raises:
        TFTPError: The name is refused (see :func:`resolve_untrusted`), or the file is
            missing, unreadable or not a regular file.
    """
    path = resolve_untrusted(root, filename)
    try:
        # O_NOFOLLOW: had the last component become a symbolic link since it was resolved,
        # the open fails. O_NONBLOCK: opening a FIFO would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TFTPError(ErrorCode.FILE_NOT_FOUND, "file not found") from None
    except OSError:
        raise TFTPError(ErrorCode.ACCESS_VIOLATION, "cannot open the file") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise TFTPError(ErrorCode.ACCESS_VIOLATION, "not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), info.st_size


def blocks(file: IO[bytes], blksize: int, *, netascii: bool) -> Iterator[bytes]:
    """The payloads of the DATA packets: full blocks, then one shorter (maybe empty) block.

    The reads block the event loop, briefly: a block comes from the page cache in
    microseconds. A server reading from slow storage would read ahead in a worker thread.
    """
    if not netascii:
        while len(block := file.read(blksize)) == blksize:
            yield block
        yield block  # shorter than blksize: the client knows the file has ended
        return
    pending = b""
    while chunk := file.read(blksize):
        # CR becomes CR NUL, then LF becomes CR LF (RFC 764): each byte on its own, so a
        # line end split between two reads translates the same.
        pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        while len(pending) >= blksize:
            yield pending[:blksize]
            pending = pending[blksize:]
    yield pending


# -- retransmission ----------------------------------------------------------------------------


class RetransmitTimer:
    """How long to wait for an ACK before sending a packet again.

    The client's ``timeout`` option when it gave one; otherwise RFC 6298's estimate from the
    round trips measured so far (smoothed round trip plus four times its variation), doubled
    after each timeout until the next measurement, within :attr:`MIN` and :attr:`MAX`.
    """

    INITIAL: Final = 0.5  # before the first measurement
    # The floor. A round trip on a LAN takes a fraction of a millisecond, so the estimate
    # alone comes down to about that; but a client on a busy machine may wait for a CPU for
    # a scheduling period (tens of ms on Linux) before it answers, and an estimate that small
    # would send it nearly every block twice. Clients do not all take that well: atftp
    # answers one duplicate with an extra ACK, then ignores the duplicates and gives up. TCP
    # keeps 200 ms (Linux) or 1 s (RFC 6298) for its delayed ACKs, which TFTP does not have;
    # 50 ms is above the scheduling delays and still costs a lossy link little per loss.
    MIN: Final = 0.05
    MAX: Final = 2.0

    def __init__(self, fixed: float | None = None) -> None:
        self.fixed = fixed
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._backoff = 1.0

    @property
    def timeout(self) -> float:
        """The wait for the next send, in seconds."""
        if self.fixed is not None:
            return self.fixed
        base = self.INITIAL if self._srtt is None else self._srtt + 4 * self._rttvar
        return min(self.MAX, max(self.MIN, base) * self._backoff)

    def measured(self, rtt: float) -> None:
        """A round trip of a packet that was sent once (a re-sent one's ACK is ambiguous)."""
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._backoff = 1.0

    def timed_out(self) -> None:
        """No ACK came in time: wait twice as long next time."""
        self._backoff = min(self._backoff * 2, 1 << 10)


#: Seconds without an ACK after which a transfer is given up. Longer than clients wait before
#: they re-send an ACK themselves (atftp: 5 s), since some do not answer a re-sent DATA packet
#: at all; as long as tftp-hpa's client waits in all (25 s).
GIVE_UP_AFTER: Final = 30.0


@dataclass
class Sent:
    """What a transfer sent."""

    #: Distinct packets (OACK and DATA), each counted once however often it was sent.
    packets: int = 0
    #: DATA blocks the client acknowledged, and the bytes in them.
    blocks: int = 0
    bytes: int = 0
    #: Datagrams dropped while looking for a late ACK (those dropped while a request() waits
    #: are in the endpoint's ``unmatched_replies``).
    ignored: int = 0


async def late_answer(
    endpoint: DatagramEndpoint[bytes, bytes], client: Any, block: int, sent: Sent
) -> bytes | None:
    """The client's answer to ``block`` if it is already waiting, else ``None``.

    It can be: request() gives up at its deadline, and an ACK that came in just after (or
    while this process waited for a CPU) is still in the socket; the next request() would
    drop it as stale and send the block again. Whatever else is waiting (a duplicate ACK, a
    datagram from another port) is dropped and counted in ``sent.ignored``.
    """
    answer = None
    # To the end of what is waiting (timeout=0), not left at the answer: what follows it can
    # only be stale too, and an iteration left open would be closed by the garbage collector.
    async for datagram, sender in endpoint.iter_received_packets(timeout=0):
        mine = isinstance(sender, tuple) and (sender[0], sender[1]) == (client[0], client[1])
        if answer is None and mine and answers(datagram, block):
            answer = datagram
        else:
            sent.ignored += 1
    return answer


async def send_until_acknowledged(
    endpoint: DatagramEndpoint[bytes, bytes],
    client: Any,
    packet: bytes,
    block: int,
    timer: RetransmitTimer,
    sent: Sent,
) -> None:
    """Send ``packet`` to ``client`` until it acknowledges ``block``.

    Raises:
        TimeoutError: No ACK for :data:`GIVE_UP_AFTER` seconds.
        ClientAbort: The client answered with an ERROR packet.
        ClientGone: The kernel reported an ICMP error for a send of this packet (a client
            that quit without waiting after its last ACK, which may have been lost).
    """
    give_up = time.monotonic() + GIVE_UP_AFTER
    icmp_errors = endpoint.statistics().icmp_errors
    first = True
    while True:
        started = time.monotonic()
        try:
            # One send per call: the retry loop is here, to back the timer off between sends.
            reply = await endpoint.request(
                packet,
                client,
                timeout=timer.timeout,
                attempts=1,
                match=lambda d: answers(d, block),
            )
        except TimeoutError:
            late = await late_answer(endpoint, client, block, sent)
            if late is None:
                if endpoint.statistics().icmp_errors > icmp_errors:
                    raise ClientGone from None
                if time.monotonic() >= give_up:
                    raise TimeoutError(f"no ACK of block {block} for {GIVE_UP_AFTER:g} s") from None
                timer.timed_out()
                first = False
                continue
            reply = late
        if first:  # after a re-send, the ACK may answer either send: no measurement
            timer.measured(time.monotonic() - started)
        if opcode_of(reply) == ERROR:
            raise ClientAbort(describe_error_untrusted(reply))
        return


async def send_file(
    endpoint: DatagramEndpoint[bytes, bytes],
    client: Any,
    payloads: Iterator[bytes],
    options: Options,
    oack: dict[str, str],
    sent: Sent,
) -> None:
    """Send the blocks of a read to ``client``, lock-step, counting them in ``sent``.

    Raises:
        TimeoutError: The client stopped answering.
        ClientAbort: The client ended the transfer with an ERROR packet.
        ClientGone: The client's port is closed.
    """
    timer = RetransmitTimer(options.timeout)
    if oack:  # the client acknowledges the OACK as block 0 (or refuses it with error 8)
        sent.packets += 1
        await send_until_acknowledged(endpoint, client, oack_packet(oack), 0, timer, sent)
    for block, payload in enumerate(payloads, 1):
        sent.packets += 1
        packet = data_packet(block, payload)
        await send_until_acknowledged(endpoint, client, packet, block, timer, sent)
        sent.blocks += 1
        sent.bytes += len(payload)


# -- the server --------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TFTPServer:
    """Answers requests on one port and runs each transfer on its own endpoint.

    Args:
        root: The directory to serve.
        host: The address to bind, for the requests and for every transfer's endpoint.
        port: The request port (69 is the standard one).
        max_transfers: Transfers that may run at once.
        rate_limit: Requests per second a source address may send (twice that at once);
            ``0`` for no limit.
        quiet: Print nothing per request.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str,
        port: int,
        max_transfers: int = 64,
        rate_limit: float = 50,
        quiet: bool = False,
    ) -> None:
        self.root = root.resolve()
        self.host = host
        self.max_transfers = max_transfers
        self.quiet = quiet
        #: The running transfers, by client (address, port): the client's transfer ID.
        self.transfers: dict[tuple[str, int], str] = {}
        limit = RateLimit(rate_limit, max(1, int(rate_limit * 2))) if rate_limit > 0 else None
        self.server = DatagramServer(host, port, self.handle, rate_limit=limit)
        self._task_group: TaskGroup | None = None

    def log(self, line: str) -> None:
        """Print a line, unless quiet."""
        if not self.quiet:
            print(line, flush=True)

    async def handle(self, request: DatagramRequest[bytes, bytes]) -> bytes | None:
        """A datagram on the request port: start a transfer, or say why not."""
        if opcode_of(request.packet) not in (RRQ, WRQ):
            # A stray DATA, ACK or ERROR, or noise: answering an ERROR with an ERROR could
            # start two servers bouncing errors at each other.
            return None
        key = (request.address[0], request.address[1])
        if key in self.transfers:
            return None  # the client sent its request again before our first packet came
        try:
            read, file, size = self.accept(request.packet)
        except TFTPError as exc:
            self.log(f"{format_address(request.address)} refused: error {exc.code} {exc.message}")
            return error_packet(exc.code, exc.message)
        netascii = read.mode == "netascii"
        options, oack = negotiate(read.options, size=None if netascii else size)
        self.transfers[key] = read.filename
        assert self._task_group is not None
        self._task_group.start_soon(self.transfer, request.address, read, file, options, oack)
        return None

    def accept(self, datagram: bytes) -> tuple[Request, IO[bytes], int]:
        """The read request in ``datagram``, its file opened, and the file's size.

        Raises:
            TFTPError: The request is refused; the error says why.
        """
        request = parse_request_untrusted(datagram)
        if request.opcode == WRQ:
            raise TFTPError(ErrorCode.ACCESS_VIOLATION, "this server is read-only")
        if len(self.transfers) >= self.max_transfers:
            raise TFTPError(ErrorCode.NOT_DEFINED, "too many transfers, try again later")
        file, size = open_for_reading(self.root, request.filename)
        return request, file, size

    async def transfer(
        self,
        client: Any,
        request: Request,
        file: IO[bytes],
        options: Options,
        oack: dict[str, str],
    ) -> None:
        """Send one file to ``client`` from a fresh endpoint, then log how it went."""
        started = time.monotonic()
        sent = Sent()
        summary = f"{format_address(client)} RRQ {request.filename!r} {request.mode}"
        if oack:
            summary += " " + " ".join(f"{name}={value}" for name, value in oack.items())
        try:
            with file:
                # Port 0: the kernel picks a free port, which is the transfer's own ID.
                async with await open_udp_endpoint(self.host, 0) as endpoint:
                    try:
                        payloads = blocks(file, options.blksize, netascii=request.mode != "octet")
                        await send_file(endpoint, client, payloads, options, oack, sent)
                        outcome = "sent"
                    except TimeoutError:
                        outcome = "timed out after"
                    except ClientAbort as exc:
                        outcome = f"ended by the client ({exc}) after"
                    except ClientGone:
                        outcome = "the client has gone, after"
                    stats = endpoint.statistics()
        except OSError as exc:
            self.log(f"{summary}: failed: {exc}")
            return
        finally:
            del self.transfers[client[0], client[1]]
        self.log(
            f"{summary}: {outcome} {sent.bytes} bytes in {sent.blocks} blocks, "
            f"{stats.datagrams_sent - sent.packets} sent again, "
            f"{stats.unmatched_replies + sent.ignored} ignored, "
            f"{time.monotonic() - started:.2f} s"
        )

    async def serve(self) -> None:
        """Serve until SIGINT or SIGTERM, printing the bound address first."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                addresses = await tg.start(self.server.serve_forever)
                self.host = addresses[0][0]  # transfers leave from the address requests reach
                print("listening on", ", ".join(map(format_address, addresses)), flush=True)
                async for _ in signals:
                    await self.server.shutdown(grace_period=1.0)
                    tg.cancel_scope.cancel()  # transfers still running end here
                    break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the directory until interrupted."""
    parser = argparse.ArgumentParser(description="A read-only TFTP server for one directory.")
    parser.add_argument("--root", type=Path, required=True, help="the directory to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=6969, help="request port; 0 picks a free one (6969)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--max-transfers", type=int, default=64, help="transfers at once; more are refused (64)"
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=50,
        help="requests per second per source address, 0 for no limit (50)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing per transfer")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root}: not a directory")
    if args.max_transfers < 1:
        parser.error("--max-transfers must be at least 1")
    server = TFTPServer(
        args.root,
        host=args.host,
        port=args.port,
        max_transfers=args.max_transfers,
        rate_limit=args.rate_limit,
        quiet=args.quiet,
    )
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(server.serve, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
