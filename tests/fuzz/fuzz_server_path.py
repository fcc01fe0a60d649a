"""Fuzz harness: the receive path from a socket to a parsed packet, in servers and endpoints.

What it covers, per input (a list of datagrams, a protocol and a mode):

1. The datagrams are sent over a Unix datagram socket pair (the kernel keeps their
   boundaries; no network is involved) and taken with the non-waiting half of the shared
   receive code, :class:`anydgram._socket_io.SocketIO` (``receive_nowait`` over the core's
   portable strategy, and the skipping of datagrams over ``max_datagram_size``).
2. Server modes: batches are read through a :class:`~anydgram._socket_io.SocketIO`
   whose ``receive`` does not wait (it returns what the socket holds and raises
   :exc:`anyio.ClosedResourceError` when it holds nothing; the coroutine is stepped by hand,
   with no event loop), at most ``MAX_BATCH`` and the room the handler bound leaves at a
   time (computed here: the server's reader loop also runs handlers and waits, so it is not
   stepped), and each batch goes through the server's own intake
   (``anydgram._server_intake.Intake.queue_batch``).
   That runs, per datagram, the parse, the ``parse_errors`` count, the sender filled into the
   error, the rate-limited log record (formatted by a handler that raises on failure) and the
   queued :class:`~anydgram.DatagramRequest` (or the request for ``parse_error_handler``).
3. Endpoint modes: an unconnected :class:`~anydgram.DatagramEndpoint` or a connected
   :class:`~anydgram.DatagramClient` parses each datagram with its ``_parse`` step, the one
   ``recv_packet`` and ``iter_received_packets`` use.

Checked: only :class:`~anydgram.DatagramProtocolParseError` comes out of a parse, carrying the
datagram and the sender; every datagram is in exactly one of ``datagrams_received`` and
``oversize``; ``bytes_received``, ``parse_errors`` and the queued requests (kind, order, sender,
packet) agree with parsing the same bytes directly; the kernel dropped nothing; nothing is left
unread.

Not covered: waiting for the socket (``wait_readable``, fairness checkpoints, cancellation),
the ``recvmsg``/``IP_PKTINFO`` receive path of wildcard-bound server sockets (it needs IP
sockets), the server's reader loop (its room computation, stop checks and ICMP log), its
tasks, handlers, replies and sends, ICMP error handling and the ``request()`` machinery.
The formats themselves are fuzzed more thoroughly by ``fuzz_serializers.py``. Linux only
(abstract Unix socket names).

Input layout: byte 0 picks the protocol (``data[0] % len(PROTOCOLS)``, append-only), byte 1
the mode (:data:`MODES`, bits 0-1) and how much room the server's handler bound leaves (bits
2-4); the rest is a sequence of datagrams, each a length byte ``n < 255`` followed by ``n``
bytes, or ``255`` followed by the rest of the input. At most :data:`MAX_DATAGRAMS` are used.

Run ``python tests/fuzz/fuzz_server_path.py [libFuzzer flags] [corpus dirs]`` with atheris
installed (``nox -s fuzz`` does), or call :func:`test_one_input` from plain Python.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from anydgram import (
    DatagramClient,
    DatagramEndpoint,
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
)
from anydgram._io_core import MAX_BATCH, Received
from anydgram._socket_io import SocketIO
from anydgram._socket_os import normalize_address
from anydgram.serializers import (
    BytesSerializer,
    HMACSerializer,
    JSONSerializer,
    MessagePackSerializer,
    StructSerializer,
    ZlibSerializer,
)

#: Most datagrams taken from one input.
MAX_DATAGRAMS = 64
#: Datagrams sent before the receiver drains them: below Linux's default queue length for
#: Unix datagram sockets (``net.unix.max_dgram_qlen`` = 10), so a send never blocks.
SEND_CHUNK = 8

MODES = ("server", "server-with-parse-error-handler", "endpoint", "client")

HMAC_KEY = b"anydgram-fuzz-server-key"

#: Protocols the receive path is run with; append-only (the first byte of corpus files).
PROTOCOLS: tuple[tuple[str, DatagramProtocol[Any, Any]], ...] = (
    ("bytes", DatagramProtocol(BytesSerializer())),
    ("bytes-max64", DatagramProtocol(BytesSerializer(), max_datagram_size=64)),
    ("bytes-max1", DatagramProtocol(BytesSerializer(), max_datagram_size=1)),
    ("json", DatagramProtocol(JSONSerializer(use_orjson=False), max_datagram_size=512)),
    ("msgpack", DatagramProtocol(MessagePackSerializer())),
    ("struct", DatagramProtocol(StructSerializer("!IHd"))),
    ("hmac-bytes", DatagramProtocol(HMACSerializer(BytesSerializer(), HMAC_KEY))),
    ("zlib-json", DatagramProtocol(ZlibSerializer(JSONSerializer(), max_size=1024))),
)


class _FormatEveryRecord(logging.Handler):
    """Formats each record and drops it; a record that cannot be formatted raises."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


_LOGGER = logging.getLogger("anydgram.fuzz.server_path")
_LOGGER.propagate = False
_LOGGER.setLevel(logging.DEBUG)
if not _LOGGER.handlers:
    _LOGGER.addHandler(_FormatEveryRecord())


class _NoWaitSocketIO(SocketIO):
    """A server socket whose receive never waits: "nothing there" ends the reader loop."""

    __slots__ = ()

    async def receive(self, max_count: int) -> list[Received]:
        # SocketIO.receive is this, after a fairness checkpoint and with a wait where the
        # batch is empty.
        batch = self.receive_nowait(max_count)
        if not batch:
            raise anyio.ClosedResourceError
        return batch


async def _never_called(request: DatagramRequest[Any, Any]) -> None:
    raise AssertionError("no handler runs in this harness")


def split_input(data: bytes) -> tuple[DatagramProtocol[Any, Any], str, int, list[bytes]]:
    """Decode an input into (protocol, mode, extra handler room, datagrams)."""
    protocol = PROTOCOLS[data[0] % len(PROTOCOLS)][1]
    mode = MODES[data[1] & 3]
    room = (data[1] >> 2) & 7
    datagrams: list[bytes] = []
    rest = memoryview(data)[2:]
    while rest and len(datagrams) < MAX_DATAGRAMS:
        size = rest[0]
        if size == 255:
            datagrams.append(bytes(rest[1:]))
            break
        datagrams.append(bytes(rest[1 : 1 + size]))
        rest = rest[1 + size :]
    return protocol, mode, room, datagrams


def join_input(
    protocol_index: int, mode: str, datagrams: Sequence[bytes], *, room: int = 0
) -> bytes:
    """The input :func:`split_input` decodes into these values (for the seed corpus)."""
    out = bytearray([protocol_index, MODES.index(mode) | room << 2])
    for index, datagram in enumerate(datagrams):
        if len(datagram) < 255:
            out += bytes([len(datagram)]) + datagram
        else:
            assert index == len(datagrams) - 1, "only the last datagram may be 255 bytes or more"
            out += b"\xff" + datagram
    return bytes(out)


def _expected_outcome(protocol: DatagramProtocol[Any, Any], datagram: bytes) -> Any:
    """The packet, or the parse error, the protocol gives for ``datagram`` on its own."""
    try:
        return protocol.build_packet_from_datagram(datagram)
    except DatagramProtocolParseError as exc:
        return exc


def _open_pair(connected: bool) -> tuple[socket.socket, socket.socket]:
    """A (receiver, sender) pair of Unix datagram sockets; unconnected ones autobind."""
    if connected:
        receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    else:
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind("")  # Linux: an abstract name chosen by the kernel
            sender.bind("")
            sender.connect(receiver.getsockname())
        except BaseException:
            receiver.close()
            sender.close()
            raise
    sender.settimeout(5.0)  # a full queue is a harness bug, not a reason to hang
    return receiver, sender


def _step_without_loop(coroutine: Any) -> Any:
    """Run a coroutine that must complete without ever suspending; return its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("the receive suspended: this harness needs updating")


def _check_counters(
    io: SocketIO, protocol: DatagramProtocol[Any, Any], datagrams: Sequence[bytes]
) -> list[bytes]:
    """Check the socket side's counters; return the datagrams it should have delivered."""
    expected = [d for d in datagrams if len(d) <= protocol.max_datagram_size]
    assert not io.receive_nowait(1), "a datagram was left unread"
    assert io.datagrams_received == len(expected)
    assert io.oversize == len(datagrams) - len(expected)
    assert io.bytes_received == sum(map(len, expected))
    assert io.kernel_drops() == 0
    return expected


def _check_error(error: object, outcome: object, data: bytes, address: Any) -> None:
    """``error`` is the parse error the protocol gave for ``data``, with the sender filled in."""
    assert isinstance(error, DatagramProtocolParseError), f"expected a parse error, got {error!r}"
    assert isinstance(outcome, DatagramProtocolParseError), "parsed here but not on its own"
    assert error.data == data == outcome.data
    assert error.address == address


def _run_server(
    protocol: DatagramProtocol[Any, Any],
    with_hook: bool,
    room: int,
    datagrams: list[bytes],
    receiver: socket.socket,
    sender: socket.socket,
) -> None:
    # One slot more than the datagrams: the reader must never wait for a free slot.
    bound = len(datagrams) + 1 + room
    server = DatagramServer(
        "127.0.0.1",
        0,
        _never_called,
        protocol=protocol,
        max_concurrent_handlers=bound,
        logger=_LOGGER,
        parse_error_handler=_never_called if with_hook else None,
    )
    io = _NoWaitSocketIO(receiver, max_datagram_size=protocol.max_datagram_size)
    # statistics() sums the counters of the serving transports.
    server._life.transports = [io]
    sender_address = normalize_address(socket.AF_UNIX, sender.getsockname())
    try:
        for start in range(0, len(datagrams), SEND_CHUNK):
            for datagram in datagrams[start : start + SEND_CHUNK]:
                sender.send(datagram)
            while True:
                take = min(bound - len(server._intake.pending), MAX_BATCH)
                try:
                    batch = _step_without_loop(io.receive(take))
                except anyio.ClosedResourceError:
                    break
                server._intake.queue_batch(io, batch)
        server._log.flush()
        received = _check_counters(io, protocol, datagrams)
        outcomes = [_expected_outcome(protocol, d) for d in received]
        errors = [o for o in outcomes if isinstance(o, DatagramProtocolParseError)]
        queued = [o for o in outcomes if with_hook or not isinstance(o, DatagramProtocolParseError)]
        requests = list(server._intake.pending)
        assert len(requests) == len(queued), "a request was lost or invented"
        for request, outcome in zip(requests, queued, strict=True):
            assert request.address == sender_address
            assert request.server is server
            if isinstance(outcome, DatagramProtocolParseError):
                _check_error(request.packet, outcome, outcome.data, sender_address)
            else:
                assert not isinstance(request.packet, DatagramProtocolParseError)
                assert repr(request.packet) == repr(outcome)
        stats = server.statistics()
        assert stats.parse_errors == len(errors)
        assert stats.datagrams_received == len(received)
        assert stats.oversize == len(datagrams) - len(received)
        assert stats.bytes_received == sum(map(len, received))
        assert stats.handlers_active == 0
    finally:
        io.close_now()


def _run_endpoint(
    protocol: DatagramProtocol[Any, Any],
    connected: bool,
    datagrams: list[bytes],
    receiver: socket.socket,
    sender: socket.socket,
) -> None:
    endpoint: DatagramClient[Any, Any] | DatagramEndpoint[Any, Any]
    if connected:
        endpoint = DatagramClient.from_socket(receiver, protocol=protocol)
        sender_address = endpoint.remote_address
    else:
        endpoint = DatagramEndpoint.from_socket(receiver, protocol=protocol)
        sender_address = normalize_address(socket.AF_UNIX, sender.getsockname())
    io = endpoint._io
    try:
        received: list[bytes] = []
        errors = 0
        for start in range(0, len(datagrams), SEND_CHUNK):
            for datagram in datagrams[start : start + SEND_CHUNK]:
                sender.send(datagram)
            while batch := io.receive_nowait(1):
                data, address, _, _ = batch[0]
                assert address == sender_address
                received.append(data)
                outcome = _expected_outcome(protocol, data)
                try:
                    packet = endpoint._parse(data, address)
                except DatagramProtocolParseError as exc:
                    _check_error(exc, outcome, data, address)
                    errors += 1
                else:
                    assert not isinstance(outcome, DatagramProtocolParseError)
                    assert repr(packet) == repr(outcome)
        expected = _check_counters(io, protocol, datagrams)
        assert received == expected, "datagrams lost, reordered or altered on the way in"
        stats = endpoint.statistics()
        assert stats.parse_errors == errors
        assert stats.datagrams_received == len(received)
        assert stats.oversize == len(datagrams) - len(received)
        assert stats.kernel_drops == 0
    finally:
        io.close_now()


def test_one_input(data: bytes) -> None:
    """Receive one input's datagrams; raise (crash) if any invariant above breaks."""
    if len(data) < 2:
        return
    protocol, mode, room, datagrams = split_input(data)
    receiver, sender = _open_pair(connected=mode == "client")
    try:
        if mode.startswith("server"):
            _run_server(protocol, mode != "server", room, datagrams, receiver, sender)
        else:
            _run_endpoint(protocol, mode == "client", datagrams, receiver, sender)
    finally:
        receiver.close()
        sender.close()


def seed_inputs() -> dict[str, bytes]:
    """The seed corpus: representative datagram sequences for every protocol and mode."""
    seeds: dict[str, bytes] = {}
    samples: dict[str, list[bytes]] = {
        "bytes": [b"", b"hello", b"x" * 300],
        "bytes-max64": [b"a" * 64, b"b" * 65, b"", b"c" * 200],
        "bytes-max1": [b"", b"a", b"ab", b"a"],
        "json": [b'{"op":"ping","seq":1}', b"[1,2", b'"\xff"', b"null", b"[" * 600],
        "msgpack": [b"\x82\xa2op\xa4ping\xa3seq\x01", b"\xc1", b"\x93\x01\x02"],
        "struct": [bytes(14), bytes(13), b"\x00\x00\x00\x01\x00\x50" + bytes(8)],
        "hmac-bytes": [
            HMACSerializer(BytesSerializer(), HMAC_KEY).serialize(b"signed"),
            b"\x00" * 40,
            b"short",
        ],
        "zlib-json": [
            ZlibSerializer(JSONSerializer()).serialize({"op": "ping"}),
            ZlibSerializer(JSONSerializer()).serialize(" " * 2000),
            b"x\x9c",
        ],
    }
    for index, (name, _protocol) in enumerate(PROTOCOLS):
        for mode in MODES:
            seeds[f"{index:02d}-{name}-{mode}"] = join_input(
                index, mode, samples[name], room=index % 8
            )
    return seeds


if __name__ == "__main__":
    # Imported by name: atheris ships no type information, and the type checkers run
    # where it is not installed.
    atheris: Any = importlib.import_module("atheris")

    # anydgram was imported above, before atheris was, so instrument the code already
    # loaded (anydgram, anyio and the pure-Python parts of the decoders) instead of hooks.
    atheris.instrument_all()
    # libFuzzer runs argv[0] through the shell for -merge (and -fork, -jobs): make it a
    # command that starts this script with this interpreter.
    command = shlex.join([sys.executable, os.path.abspath(__file__)])
    atheris.Setup([command, *sys.argv[1:]], test_one_input)
    atheris.Fuzz()
