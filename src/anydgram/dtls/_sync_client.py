"""The blocking DTLS client: a :class:`~anydgram.SyncDatagramClient` whose socket encrypts.

:class:`ThreadedDTLSSocketIO` is the blocking socket side (``poll()`` and a waker, the same
core) with one association; a lock serializes the calls into OpenSSL, never held while a
thread waits on the socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final, overload

import anyio
from cryptography import x509
from OpenSSL import SSL

from .._client_request import BUSY_ACTION, ThreadedRequests
from .._io_core import Received
from .._metadata import MetadataParser
from .._open_endpoint import connect_first
from .._protocol import DatagramProtocol, RecvT, SendT
from .._statistics import EndpointStatistics
from .._sync import SyncDatagramClient
from .._sync_base import getaddrinfo
from .._sync_socket import ThreadedSocketIO
from ._association import Association, receive_room
from ._client import ClientSetup, check_plaintext, peer_closed
from ._contexts import DTLSError

__all__ = ("SyncDTLSClient",)

#: The wait when OpenSSL reports no retransmission timer during a handshake.
_FALLBACK_TIMER: Final = 1.0


class ThreadedDTLSSocketIO(ThreadedSocketIO):
    """A connected blocking socket whose datagrams are records of one DTLS association."""

    __slots__ = ("_plain", "_tls_lock", "association")

    def __init__(self, sock: socket.socket, association: Association, max_datagram_size: int):
        super().__init__(sock, max_datagram_size=receive_room(max_datagram_size), connected=True)
        self.association: Association = association
        self._plain: deque[bytes] = deque()
        self._tls_lock = threading.Lock()

    def handshake(self, timeout: float) -> None:
        """Run the handshake within ``timeout`` seconds (``DTLSError`` if it fails or ends)."""
        association = self.association
        deadline = time.monotonic() + timeout
        try:
            while True:
                done = association.handshake()
                self._send_flight(association.outgoing(), deadline)
                if done:
                    return
                wait = association.timer()
                step = time.monotonic() + (_FALLBACK_TIMER if wait is None else wait)
                try:
                    data, _ = ThreadedSocketIO.receive_one(self, min(step, deadline))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise DTLSError(f"DTLS handshake timed out after {timeout:g} s") from None
                    association.on_timer()
                    continue
                association.feed_untrusted(data)
        except DTLSError:
            self._send_flight(association.outgoing(), time.monotonic())  # the alert, if any
            raise
        except OSError as exc:
            raise DTLSError(f"DTLS handshake failed: {exc}") from exc

    def _send_flight(self, datagrams: list[bytes], deadline: float) -> None:
        # Best effort, as UDP: what cannot leave by the deadline a retransmission makes up for.
        for datagram in datagrams:
            try:
                ThreadedSocketIO.send(self, datagram, None, deadline)
            except (TimeoutError, OSError, anyio.ClosedResourceError):
                return

    def _open(self, data: bytes) -> None:
        with self._tls_lock:
            self._plain.extend(self.association.feed_untrusted(data))
            flight = self.association.outgoing()
        self._send_flight(flight, time.monotonic())

    def receive_one(self, deadline: float | None, busy: Any = None) -> tuple[bytes, Any]:
        """Wait for one plaintext; ``(payload, peer)``.

        Errors are the plain socket's, and ``DTLSError`` once the peer has closed the
        association and nothing is left to read.
        """
        while True:
            with self._tls_lock:
                if self._plain:
                    if busy is not None and busy.pending:
                        raise anyio.BusyResourceError(BUSY_ACTION)
                    return self._plain.popleft(), self.peer
                if self.association.closed_by_peer:
                    raise peer_closed()
            data, _ = ThreadedSocketIO.receive_one(self, deadline, busy)
            self._open(data)

    def receive_many(
        self, max_count: int, deadline: float | None, busy: Any = None
    ) -> list[Received]:
        """Wait for one plaintext, then take those already opened, up to ``max_count``."""
        first, peer = self.receive_one(deadline, busy)
        batch: list[Received] = [(first, peer, None, None)]
        with self._tls_lock:
            while len(batch) < max_count and self._plain:
                batch.append((self._plain.popleft(), peer, None, None))
        return batch

    def push_back(self, items: list[Received]) -> None:
        """Put plaintexts back in front of the next receive."""
        with self._tls_lock:
            self._plain.extendleft(reversed([data for data, _, _, _ in items]))

    def send_many(
        self, datagrams: Sequence[bytes], addresses: Sequence[Any] | None, deadline: float | None
    ) -> None:
        """Seal and send each datagram in turn, every one checked first."""
        for data in datagrams:
            check_plaintext(data)
        for data in datagrams:
            self.send(data, None, deadline)

    def discard_waiting(self, limit: int) -> int:
        """Drop up to ``limit`` plaintexts already waiting; how many."""
        count = 0
        while count < limit:
            with self._tls_lock:
                if self._plain:
                    self._plain.popleft()
                    count += 1
                    continue
            try:
                data, _ = ThreadedSocketIO.receive_one(self, time.monotonic())
            except TimeoutError:
                break
            self._open(data)
        return count

    def send(self, data: bytes, address: Any, deadline: float | None) -> None:
        """Seal ``data`` into one record and send it.

        Raises:
            DatagramTooLargeError: ``data`` is longer than one record carries.
            ValueError: ``data`` is empty.
            DTLSError: The peer closed the association.
        """
        check_plaintext(data)
        with self._tls_lock:
            if self.association.closed_by_peer:
                raise peer_closed()
            datagrams = self.association.seal(data)
        for datagram in datagrams:
            ThreadedSocketIO.send(self, datagram, address, deadline)

    def close(self) -> None:
        """Send close_notify (best effort), then close the socket."""
        if not self.closed:
            with self._tls_lock:
                flight = self.association.close_notify()
            self._send_flight(flight, time.monotonic())
        super().close()


class SyncDTLSClient(SyncDatagramClient[SendT, RecvT]):
    """The blocking twin of :class:`~anydgram.dtls.DTLSClient`, for threaded programs.

    The constructor connects and completes the handshake (it blocks up to
    ``handshake_timeout``); then the whole :class:`~anydgram.SyncDatagramClient` API works
    on plaintext packets, from any number of threads. Arguments and errors are those of
    :func:`~anydgram.dtls.connect_dtls`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``port`` is out of range or ``handshake_timeout`` not positive.
        DTLSError: The handshake failed or took longer than ``handshake_timeout``.
        OSError: The name does not resolve, or no address could be connected.
    """

    __slots__ = ("_dtls",)

    @overload
    def __init__(
        self: SyncDTLSClient[bytes, bytes],
        host: str,
        port: int,
        ssl_context: SSL.Context,
        *,
        protocol: None = None,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
    ) -> None: ...
    @overload
    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: SSL.Context,
        *,
        protocol: DatagramProtocol[SendT, RecvT],
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
    ) -> None: ...
    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: SSL.Context,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        server_hostname: str | None = None,
        handshake_timeout: float = 10.0,
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
    ) -> None:
        setup = ClientSetup(host, port, ssl_context, protocol, server_hostname, handshake_timeout)
        proto = setup.protocol
        sock = connect_first(
            getaddrinfo(host, port, family),
            f"could not connect to {host}:{port}",
            local_address=local_address,
            recv_buffer_size=None,
            send_buffer_size=None,
        )
        try:
            io = ThreadedDTLSSocketIO(sock, setup.association(), proto.max_datagram_size)
        except BaseException:
            sock.close()
            raise
        try:
            io.handshake(setup.timeout)
        except BaseException:
            ThreadedSocketIO.close(io)
            raise
        self._dtls = io
        self._io = io
        self._protocol = proto
        self._parse_errors = 0
        self._parse_lock = threading.Lock()
        self._requests = ThreadedRequests(io, self._parse, keyed=False)

    def _setup(
        self,
        sock: socket.socket,
        protocol: DatagramProtocol[Any, Any] | None,
        *,
        connected: bool,
        metadata: bool = False,
    ) -> None:
        # from_socket() would make a client with no association: the constructor handshakes.
        raise TypeError("a SyncDTLSClient is made by its constructor, not from a socket")

    def _metadata_parser(self) -> MetadataParser:
        raise ValueError(
            "a SyncDTLSClient does not receive metadata (receive_metadata is plain UDP)"
        )

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The server's certificate (verified, unless the context does not verify)."""
        return self._dtls.association.peer_certificate

    def statistics(self) -> EndpointStatistics:
        """A snapshot of the counters, with the DTLS ones."""
        association = self._dtls.association
        return replace(
            super().statistics(),
            dtls_handshakes=1,
            dtls_sessions=0 if self._dtls.closed or association.closed_by_peer else 1,
            dtls_records_dropped=association.records_dropped,
        )
