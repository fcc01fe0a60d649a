"""The server's DTLS layer: cookies before state, a bounded session table, timers.

:class:`DTLSServerSide` sits between a server's intake and its handlers: a received batch
is opened (handshake records answered, application records decrypted) before parsing, and
each reply is sealed before it is sent. A peer without a session gets nothing but a
HelloVerifyRequest, built here without OpenSSL and smaller than the ClientHello it answers,
until it echoes a valid cookie; only then is a session (an OpenSSL connection) made.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from OpenSSL import SSL

from .._address import format_address
from .._io_core import Received, ReplySource
from .._metadata import Ancillary
from ._association import Association, flight_mtu, receive_room
from ._client import check_handshake_timeout
from ._contexts import DTLSError, check_context, prepare_connection
from ._records import (
    ClientHello,
    CookieJar,
    hello_verify_request,
    parse_client_hello_untrusted,
)

if TYPE_CHECKING:
    from .._logging import RateLimitedLog
    from .._socket_io import SocketIO

__all__ = ("DTLSServerConfig", "DTLSServerSide", "server_side")

#: The longest the maintenance task sleeps: idle expiry is checked at least this often.
_MAX_TICK: Final = 1.0


@dataclass(frozen=True, slots=True)
class DTLSServerConfig:
    """DTLS settings of a :class:`~anydgram.DatagramServer` (its ``dtls=`` argument).

    Attributes:
        ssl_context: A DTLS server context (:func:`~anydgram.dtls.server_context`, or any
            ``OpenSSL.SSL.Context`` made for DTLS).
        max_sessions: The size of the session table; past it the least recently active
            session is dropped to make room.
        idle_timeout: Seconds without a datagram after which a session is closed.
        handshake_timeout: Seconds a handshake may take once its cookie was accepted.
    """

    ssl_context: SSL.Context
    max_sessions: int = 4096
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_context(self.ssl_context)
        if not isinstance(self.max_sessions, int) or isinstance(self.max_sessions, bool):
            raise TypeError("max_sessions must be an int")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        for name in ("idle_timeout", "handshake_timeout"):
            check_handshake_timeout(getattr(self, name))


class _Session:
    __slots__ = ("address", "association", "hello", "last_seen", "source", "started", "transport")

    def __init__(
        self,
        association: Association,
        address: Any,
        transport: SocketIO,
        source: ReplySource | None,
        now: float,
        hello: ClientHello,
    ) -> None:
        self.association = association
        #: The hello that opened it: the same one again is a late duplicate, not a restart.
        self.hello = hello
        self.address = address
        self.transport = transport
        self.source = source
        self.started = self.last_seen = now


def _send_all(session: _Session, datagrams: list[bytes]) -> None:
    # Best effort, as UDP: what the kernel cannot take now, retransmission makes up for.
    for datagram in datagrams:
        try:
            session.transport.send_nowait(datagram, session.address, session.source)
        except (OSError, anyio.ClosedResourceError):
            return


class DTLSServerSide:
    """The DTLS sessions of one server and the counters the statistics report."""

    def __init__(self, config: DTLSServerConfig, mtu: int, log: RateLimitedLog) -> None:
        context = config.ssl_context
        _prepare_server_context(context)
        self._context = context
        self._config = config
        #: The protocol's limit: longer plaintexts are dropped.
        self._limit = mtu
        self._mtu = flight_mtu(mtu)
        self.overhead: int = receive_room(mtu) - mtu
        self._log = log
        self._jar = CookieJar()
        #: Every session, least recently active first.
        self._sessions: OrderedDict[Any, _Session] = OrderedDict()
        #: The sessions still in their handshake (a subset), for the timers.
        self._handshaking: dict[Any, _Session] = {}
        self.handshakes = 0
        self.failures = 0
        self.dropped = 0
        self.hello_verify_requests = 0

    # -- receiving ---------------------------------------------------------------------------

    def unseal_batch(self, transport: SocketIO, batch: list[Received]) -> list[Received]:
        """Handle a batch of encrypted datagrams; the plaintexts handlers should see."""
        opened: list[Received] = []
        now = time.monotonic()
        for data, address, source, ancillary in batch:
            try:
                self._one_untrusted(transport, data, address, (source, ancillary), now, opened)
            except Exception as exc:  # a bug here must not stop the server: count, log, go on
                self.dropped += 1
                self._forget(address)
                self._log.log(
                    "dtls",
                    logging.ERROR,
                    "DTLS datagram from %s dropped",
                    format_address(address),
                    exc_info=exc,
                    peer=address,
                )
        return opened

    def _one_untrusted(
        self,
        transport: SocketIO,
        data: bytes,
        address: Any,
        received: tuple[ReplySource | None, Ancillary | None],
        now: float,
        opened: list[Received],
    ) -> None:
        """One encrypted datagram; ``received``: its reply source and control messages."""
        source = received[0]
        sessions = self._sessions
        session = sessions.get(address)
        if session is not None and session.association.established and _is_hello(data):
            hello = parse_client_hello_untrusted(data)
            if hello is not None and hello.fingerprint == session.hello.fingerprint:
                self.dropped += 1  # a late copy of the hello that opened the session
                return
            session = None  # a peer that starts over (a restarted client)
        if session is None:
            # The cookie exchange first, whatever state the peer had.
            self._hello_untrusted(transport, data, address, source, now)
            return
        sessions.move_to_end(address)
        session.last_seen = now
        association = session.association
        dropped_before = association.records_dropped
        plaintexts = association.feed_untrusted(data)
        self.dropped += association.records_dropped - dropped_before
        if not association.established:
            self._advance(session)
        else:
            _send_all(session, association.outgoing())  # a retransmitted final flight
        for plaintext in plaintexts:
            if len(plaintext) > self._limit:
                self.dropped += 1  # over the protocol's limit, as an oversize datagram would be
            else:
                opened.append((plaintext, address, source, received[1]))  # metadata kept
        if association.closed_by_peer:
            self._forget(address)

    def _hello_untrusted(
        self,
        transport: SocketIO,
        data: bytes,
        address: Any,
        source: ReplySource | None,
        now: float,
    ) -> None:
        hello = parse_client_hello_untrusted(data)
        if hello is None:
            self.dropped += 1  # not a ClientHello, from a peer with no session
            return
        if not self._jar.valid(address, hello, now):
            reply = hello_verify_request(hello, self._jar.cookie(address, hello, now))
            if len(reply) >= len(data):
                self.dropped += 1  # never answer with more than was sent: no amplification
                return
            self.hello_verify_requests += 1
            # A reply the kernel cannot take is lost like any datagram: the client retries.
            with contextlib.suppress(OSError, anyio.ClosedResourceError):
                transport.send_nowait(reply, address, source)
            return
        # The peer has proved it receives at its address: now, and only now, state.
        self._forget(address)
        if len(self._sessions) >= self._config.max_sessions:
            self._evict()
        association = Association(self._context, mtu=self._mtu, server=True)
        session = _Session(association, address, transport, source, now, hello)
        try:
            association.listen(data)
        except DTLSError as exc:
            self._failed(session, exc)
            return
        self._sessions[address] = session
        self._handshaking[address] = session
        self._advance(session)

    def _advance(self, session: _Session) -> None:
        try:
            done = session.association.handshake()
        except DTLSError as exc:
            _send_all(session, session.association.outgoing())  # the alert
            self._failed(session, exc)
            self._forget(session.address)
            return
        _send_all(session, session.association.outgoing())
        if done:
            self.handshakes += 1
            self._handshaking.pop(session.address, None)

    def _failed(self, session: _Session, exc: Exception) -> None:
        self.failures += 1
        self._log.log(
            "dtls",
            logging.WARNING,
            "DTLS handshake with %s failed: %s",
            format_address(session.address),
            exc,
            peer=session.address,
        )

    def _forget(self, address: Any) -> None:
        self._sessions.pop(address, None)
        self._handshaking.pop(address, None)

    def _evict(self) -> None:
        address, session = self._sessions.popitem(last=False)
        if self._handshaking.pop(address, None) is not None:
            self.failures += 1  # an unfinished handshake lost its place
        else:
            _send_all(session, session.association.close_notify())

    # -- sending -----------------------------------------------------------------------------

    def seal(self, address: Any, data: bytes) -> bytes | None:
        """``data`` encrypted for ``address``'s session; ``None`` if it has none (yet)."""
        session = self._sessions.get(address)
        if session is None or not session.association.established:
            return None
        try:
            datagrams = session.association.seal(data)
        except DTLSError:
            self._forget(address)
            return None
        return datagrams[0] if len(datagrams) == 1 else b"".join(datagrams)

    # -- time --------------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Run handshake retransmissions and timeouts and idle expiry, until cancelled."""
        config = self._config
        idle_tick = min(_MAX_TICK, config.idle_timeout / 4)
        while True:
            now = time.monotonic()
            wait = idle_tick
            for address, session in list(self._handshaking.items()):
                if now - session.started > config.handshake_timeout:
                    self._failed(session, DTLSError("DTLS handshake timed out"))
                    self._forget(address)
                    continue
                timer = session.association.timer()
                if timer is not None and timer <= 0:
                    try:
                        session.association.on_timer()
                    except DTLSError as exc:
                        self._failed(session, exc)
                        self._forget(address)
                        continue
                    _send_all(session, session.association.outgoing())
                    timer = session.association.timer()
                if timer is not None:
                    wait = min(wait, max(timer, 0.01))
            idle_before = now - config.idle_timeout
            sessions = self._sessions
            # Least recently active first: stop at the first one still in use.
            while sessions:
                address, session = next(iter(sessions.items()))
                if session.last_seen > idle_before:
                    break
                if address in self._handshaking:
                    sessions.move_to_end(address)  # its own timeout applies
                    break
                sessions.popitem(last=False)
                _send_all(session, session.association.close_notify())
            await anyio.sleep(wait)

    def close_all(self) -> None:
        """Send close_notify to every established session and forget them all."""
        for session in self._sessions.values():
            _send_all(session, session.association.close_notify())
        self._sessions.clear()
        self._handshaking.clear()

    def counters(self) -> dict[str, int]:
        """The ``dtls_*`` statistics."""
        return {
            "dtls_handshakes": self.handshakes,
            "dtls_handshake_failures": self.failures,
            "dtls_sessions": len(self._sessions),
            "dtls_records_dropped": self.dropped,
        }


#: The contexts whose cookie callbacks are set (they are shared by every server using one).
_PREPARED: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def _prepare_server_context(context: SSL.Context) -> None:
    """Set the cookie callbacks ``DTLSv1_listen()`` needs, then check it is DTLS.

    The cookie is checked before OpenSSL sees a hello; the callbacks only need to exist (and
    OpenSSL never makes a cookie of its own).

    Raises:
        ValueError: A connection was made from ``context`` already (pyOpenSSL then refuses
            changes), or it is not a DTLS context.
    """
    if context not in _PREPARED:
        try:
            context.set_cookie_verify_callback(lambda conn, cookie: True)
            context.set_cookie_generate_callback(lambda conn: b"")
        except ValueError:
            raise ValueError(
                "the server's context was already used for a connection, so its cookie "
                "callbacks cannot be set: give the server a context of its own"
            ) from None
        _PREPARED.add(context)
    prepare_connection(SSL.Connection(context, None))


def _is_hello(data: bytes) -> bool:
    # An epoch-0 handshake record opening with a ClientHello message.
    return len(data) > 13 and data[0] == 22 and data[3:5] == b"\0\0" and data[13] == 1


def server_side(dtls: object, max_datagram_size: int, log: RateLimitedLog) -> DTLSServerSide:
    """The DTLS layer for a server's ``dtls=`` argument (a context or a config).

    Raises:
        TypeError: ``dtls`` is neither an ``OpenSSL.SSL.Context`` nor a
            :class:`DTLSServerConfig`.
    """
    if isinstance(dtls, SSL.Context):
        dtls = DTLSServerConfig(dtls)
    if not isinstance(dtls, DTLSServerConfig):
        raise TypeError(
            f"dtls must be an OpenSSL.SSL.Context or a DTLSServerConfig, not {type(dtls).__name__}"
        )
    return DTLSServerSide(dtls, max_datagram_size, log)
