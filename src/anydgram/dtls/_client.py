"""The async DTLS client: a :class:`~anydgram.DatagramClient` whose socket side encrypts.

:class:`DTLSSocketIO` is a :class:`~anydgram._socket_io.SocketIO` that seals what is sent
and opens what is received, so every method of the client (``request()`` and the iteration
included) works unchanged over the association.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar, overload

import anyio
from cryptography import x509
from OpenSSL import SSL

from .._endpoint import DatagramClient
from .._errors import DatagramTooLargeError
from .._io_core import MAX_BATCH, Received, ReplySource
from .._metadata import MetadataParser
from .._open_endpoint import check_host, check_port, connect_first
from .._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from .._socket_io import SocketIO
from .._socket_os import BoundPath
from .._statistics import EndpointStatistics
from ._association import MAX_RECORD_PLAINTEXT, Association, flight_mtu, receive_room
from ._contexts import DTLSError, check_context

__all__ = ("DTLSClient", "DTLSSocketIO", "check_handshake_timeout", "connect_dtls")

_S = TypeVar("_S")
_R = TypeVar("_R")

#: The wait when OpenSSL reports no retransmission timer during a handshake (it always
#: should; this only bounds a surprise).
_FALLBACK_TIMER: Final = 1.0


def check_handshake_timeout(value: object) -> float:
    """``value`` if it is a positive number of seconds, else ``TypeError``/``ValueError``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"handshake_timeout must be a number, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"handshake_timeout must be > 0, got {value!r}")
    return float(value)


class ClientSetup:
    """A DTLS client's checked arguments, shared by the async and the blocking client."""

    __slots__ = ("context", "protocol", "server_hostname", "timeout")

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: object,
        protocol: DatagramProtocol[Any, Any] | None,
        server_hostname: str | None,
        handshake_timeout: object,
    ) -> None:
        check_host(host)
        check_port(port)
        self.context: SSL.Context = check_context(ssl_context)
        self.timeout = check_handshake_timeout(handshake_timeout)
        self.protocol: DatagramProtocol[Any, Any] = (
            default_protocol() if protocol is None else protocol
        )
        self.server_hostname = host if server_hostname is None else server_hostname

    def association(self) -> Association:
        """A client association whose flights fit the protocol's datagram size."""
        return Association(
            self.context,
            mtu=flight_mtu(self.protocol.max_datagram_size),
            server=False,
            server_hostname=self.server_hostname,
        )


def check_plaintext(data: bytes) -> None:
    """Refuse what one DTLS record cannot carry.

    Raises:
        DatagramTooLargeError: ``data`` is longer than one record carries.
        ValueError: ``data`` is empty (OpenSSL sends no empty record).
    """
    if len(data) > MAX_RECORD_PLAINTEXT:
        raise DatagramTooLargeError(len(data), MAX_RECORD_PLAINTEXT)
    if not data:
        raise ValueError("DTLS cannot carry an empty packet (OpenSSL sends no empty record)")


def peer_closed() -> DTLSError:
    """The error for an association the peer has closed."""
    return DTLSError("the peer closed the DTLS association (close_notify or fatal alert)")


class DTLSSocketIO(SocketIO):
    """A connected socket whose datagrams are DTLS records of one association."""

    __slots__ = ("_plain", "association")

    def __init__(self, sock: socket.socket, association: Association, max_datagram_size: int):
        super().__init__(sock, max_datagram_size=receive_room(max_datagram_size), connected=True)
        self.association: Association = association
        #: Plaintexts opened but not yet returned (one datagram may carry several records).
        self._plain: deque[bytes] = deque()

    async def handshake(self, timeout: float) -> None:
        """Run the handshake to its end within ``timeout`` seconds.

        Raises:
            DTLSError: It failed (OpenSSL's reason) or ran out of time.
        """
        association = self.association
        with anyio.move_on_after(timeout) as scope:
            try:
                while not association.handshake():
                    for datagram in association.outgoing():
                        await SocketIO.send(self, datagram, None)
                    wait = association.timer()
                    batch: list[Received] = []
                    with anyio.move_on_after(_FALLBACK_TIMER if wait is None else wait):
                        batch = await SocketIO.receive(self, 1)
                    if not batch:
                        association.on_timer()  # OpenSSL retransmits its last flight
                    for data, _, _, _ in batch:
                        association.feed_untrusted(data)
            except DTLSError:
                self._flush_nowait()  # the alert that tells the peer why
                raise
            except OSError as exc:
                raise DTLSError(f"DTLS handshake failed: {exc}") from exc
            self._flush_nowait()  # the final flight
        if scope.cancelled_caught:
            raise DTLSError(f"DTLS handshake timed out after {timeout:g} s")

    def _flush_nowait(self) -> None:
        # Best effort, like UDP: a flight the kernel cannot take now is retransmitted later.
        for datagram in self.association.outgoing():
            try:
                self.send_nowait(datagram, None)
            except OSError:
                return

    def _open(self, batch: list[Received]) -> None:
        feed = self.association.feed_untrusted
        for data, _, _, _ in batch:
            self._plain.extend(feed(data))
        self._flush_nowait()  # OpenSSL may answer a retransmitted flight

    def receive_nowait(self, max_count: int) -> list[Received]:
        """Open waiting datagrams; up to ``max_count`` plaintexts (possibly none).

        Raises:
            DTLSError: The peer closed the association and nothing is left to read.
        """
        plain = self._plain
        while not plain:
            batch = SocketIO.receive_nowait(self, MAX_BATCH)
            if not batch:
                break
            self._open(batch)
        if not plain and self.association.closed_by_peer:
            raise peer_closed()
        peer = self.peer
        return [(plain.popleft(), peer, None, None) for _ in range(min(max_count, len(plain)))]

    async def receive(self, max_count: int) -> list[Received]:
        """Wait for plaintexts; cancellation loses nothing (opened ones stay queued)."""
        await self.fairness_checkpoint()
        woke = False
        while True:
            batch = self.receive_nowait(max_count)
            if batch:
                return batch
            await SocketIO.wait_readable(self, after_wakeup=woke)
            woke = True

    async def receive_one(self) -> tuple[bytes, Any]:
        """Wait for one plaintext; ``(payload, peer)``."""
        item = (await self.receive(1))[0]
        return item[0], item[1]

    async def wait_readable(self, *, after_wakeup: bool = False) -> None:
        """Return at once if a plaintext is queued, else wait for the socket."""
        if not self._plain:
            await SocketIO.wait_readable(self, after_wakeup=after_wakeup)

    async def send(self, data: bytes, address: Any, source: ReplySource | None = None) -> None:
        """Seal ``data`` into one record and send it (whole or, if cancelled, not at all).

        Raises:
            DatagramTooLargeError: ``data`` is longer than one record carries.
            DTLSError: The peer closed the association.
        """
        check_plaintext(data)
        if self.association.closed_by_peer:
            raise peer_closed()
        for datagram in self.association.seal(data):
            await SocketIO.send(self, datagram, address, source)

    async def receive_many(self, max_count: int) -> list[Received]:
        """:meth:`receive`: records are opened one datagram at a time."""
        return await self.receive(max_count)

    def push_back(self, items: list[Received]) -> None:
        """Put plaintexts back in front of the next receive."""
        self._plain.extendleft(reversed([data for data, _, _, _ in items]))

    async def send_many(self, datagrams: Sequence[bytes], addresses: Sequence[Any] | None) -> None:
        """Seal and send each datagram in turn, every one checked first."""
        for data in datagrams:
            check_plaintext(data)
        for data in datagrams:
            await self.send(data, None)

    async def aclose(self) -> None:
        """Send close_notify (best effort), then close the socket."""
        if not self.closed:
            for datagram in self.association.close_notify():
                try:
                    self.send_nowait(datagram, None)
                except (OSError, anyio.ClosedResourceError):
                    break
        await super().aclose()


class DTLSClient(DatagramClient[SendT, RecvT]):
    """A :class:`~anydgram.DatagramClient` over a DTLS association.

    Made by :func:`connect_dtls`, with the handshake done. Every method of
    :class:`~anydgram.DatagramClient` works as there, on plaintext packets: a packet is one
    DTLS record (at most 16,384 bytes, and never empty). A receive raises
    :exc:`~anydgram.dtls.DTLSError` once the server has closed the association (its
    close_notify, sent when it shuts down) and nothing is left to read; records that fail to
    authenticate, replays and garbage are dropped and counted in ``dtls_records_dropped``.
    ``datagrams_received`` and the other socket counters count encrypted datagrams.
    """

    __slots__ = ("_dtls",)

    def __init__(self, io: DTLSSocketIO, protocol: DatagramProtocol[SendT, RecvT]) -> None:
        super().__init__(io, protocol)
        self._dtls = io

    @classmethod
    def _adopt(
        cls,
        sock: socket.socket,
        protocol: DatagramProtocol[Any, Any] | None,
        unlink_path: BoundPath | None = None,
        metadata: bool = False,
    ) -> DatagramClient[Any, Any]:
        # from_socket() would hand back a plain client: a handshake needs connect_dtls().
        raise TypeError("a DTLSClient is made by connect_dtls(), not from a socket")

    def _metadata_parser(self) -> MetadataParser:
        # A record's metadata is its datagram's; records and datagrams are not one to one.
        raise ValueError("a DTLSClient does not receive metadata (receive_metadata is plain UDP)")

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The server's certificate (verified, unless the context does not verify)."""
        return self._dtls.association.peer_certificate

    @property
    def cipher(self) -> str | None:
        """The name of the cipher suite the handshake chose."""
        return self._dtls.association.cipher

    def statistics(self) -> EndpointStatistics:
        """A snapshot of the counters, with the DTLS ones."""
        association = self._dtls.association
        return replace(
            super().statistics(),
            dtls_handshakes=1,
            dtls_sessions=0 if self._dtls.closed or association.closed_by_peer else 1,
            dtls_records_dropped=association.records_dropped,
        )


@overload
async def connect_dtls(
    host: str,
    port: int,
    ssl_context: SSL.Context,
    *,
    protocol: None = None,
    server_hostname: str | None = None,
    handshake_timeout: float = 10.0,
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
) -> DTLSClient[bytes, bytes]: ...
@overload
async def connect_dtls(
    host: str,
    port: int,
    ssl_context: SSL.Context,
    *,
    protocol: DatagramProtocol[_S, _R],
    server_hostname: str | None = None,
    handshake_timeout: float = 10.0,
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
) -> DTLSClient[_S, _R]: ...
async def connect_dtls(
    host: str,
    port: int,
    ssl_context: SSL.Context,
    *,
    protocol: DatagramProtocol[Any, Any] | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float = 10.0,
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
) -> DTLSClient[Any, Any]:
    """Connect a UDP socket to ``host``:``port`` and complete a DTLS handshake over it.

    The handshake retransmits on RFC 6347's timers (OpenSSL's: 1 s, doubling, at most 60 s)
    and is done when this returns. Handshake records are packed into datagrams of at most
    the protocol's ``max_datagram_size`` (the path MTU OpenSSL fragments its flights to).

    Args:
        host: A host name or a literal IP address.
        port: The server's port.
        ssl_context: A DTLS context (:func:`~anydgram.dtls.client_context`, or any
            ``OpenSSL.SSL.Context`` made for DTLS).
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        server_hostname: The name the server's certificate must carry (and the SNI sent);
            ``None``: ``host``.
        handshake_timeout: The budget for the whole handshake, in seconds.
        local_address: ``(host, port)`` to bind before connecting.
        family: ``AF_INET`` or ``AF_INET6`` to restrict the addresses tried.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``port`` is out of range or ``handshake_timeout`` not positive.
        DTLSError: The handshake failed (OpenSSL's reason: certificate verify failed, a
            name the certificate does not carry, no shared cipher, ...) or took longer than
            ``handshake_timeout``. Nothing is left open.
        OSError: The name does not resolve, or no address could be connected.
    """
    setup = ClientSetup(host, port, ssl_context, protocol, server_hostname, handshake_timeout)
    proto = setup.protocol
    infos = await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    sock = connect_first(
        infos,
        f"could not connect to {host}:{port}",
        local_address=local_address,
        recv_buffer_size=None,
        send_buffer_size=None,
    )
    try:
        io = DTLSSocketIO(sock, setup.association(), proto.max_datagram_size)
    except BaseException:
        sock.close()
        raise
    try:
        await io.handshake(setup.timeout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await SocketIO.aclose(io)
        raise
    return DTLSClient(io, proto)
