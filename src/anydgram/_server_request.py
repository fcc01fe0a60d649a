"""A datagram as a server's handler sees it, and the way its reply goes out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic

import anyio.lowlevel

from ._address import format_address
from ._errors import DatagramProtocolParseError
from ._protocol import DatagramProtocol, RecvT, SendT
from ._ratelimit import source_key
from ._socket_io import SEND_FAIRNESS_INTERVAL
from .serializers import BytesSerializer

if TYPE_CHECKING:
    from ._endpoint import IPAddress
    from ._io_core import ReplySource
    from ._logging import RateLimitedLog
    from ._metadata import Ancillary, DatagramMetadata
    from ._ratelimit import AmplificationLimiter
    from ._server import DatagramServer
    from ._server_security import ServerSecurity
    from ._socket_io import SocketIO

__all__ = ("DatagramRequest", "ParseErrorRequest", "Replies")


class Replies:
    """What replying needs from a server: encoding, the amplification cap, fairness, logging."""

    __slots__ = (
        "amplification",
        "checkpoint",
        "log",
        "make_datagram",
        "raw_limit",
        "ready",
        "seal",
    )

    def __init__(
        self,
        protocol: DatagramProtocol[Any, Any],
        amplification: AmplificationLimiter | None,
        log: RateLimitedLog,
        security: ServerSecurity | None = None,
    ) -> None:
        self.make_datagram: Callable[[Any], bytes] = protocol.make_datagram
        # With the raw-bytes protocol parsing and serializing bytes are the identity: datagrams
        # and replies of at most this many bytes skip the calls. -1 (none is that short) else.
        self.raw_limit: int = (
            protocol.max_datagram_size
            if type(protocol) is DatagramProtocol and type(protocol.serializer) is BytesSerializer
            else -1
        )
        self.amplification: AmplificationLimiter | None = amplification
        self.log: RateLimitedLog = log
        #: Replies sent since the last full checkpoint (the server resets it per batch).
        self.ready: int = 0
        self.checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        #: Encrypts a reply for its peer (``None``: plain UDP); returns ``None`` to drop it.
        self.seal: Callable[[Any, bytes], bytes | None] | None = (
            None if security is None else security.seal
        )

    def failed(self, exc: Exception, address: Any) -> None:
        """Log a reply the kernel refused (it is counted by the socket already)."""
        self.log.log(
            "send",
            logging.WARNING,
            "could not send to %s: %s",
            format_address(address),
            exc,
            peer=address,
        )


class DatagramRequest(Generic[SendT, RecvT]):
    """One received datagram, as a handler sees it.

    Requests are made by the server; handlers read them and reply with :meth:`respond`.

    Attributes:
        packet: The parsed datagram (for a ``parse_error_handler``: the
            :class:`~anydgram.DatagramProtocolParseError`, with the raw bytes in ``.data``).
        address: The sender's address, as the :mod:`socket` module gives it.
        server: The server that received it.
    """

    __slots__ = ("_ancillary", "_replies", "_source", "_transport", "address", "packet", "server")

    packet: RecvT
    address: IPAddress
    server: DatagramServer[SendT, Any]

    def __init__(
        self,
        packet: RecvT,
        address: IPAddress,
        server: DatagramServer[SendT, Any],
        transport: SocketIO,
        source: ReplySource | None,
        replies: Replies,
        ancillary: Ancillary | None = None,
    ) -> None:
        self.packet = packet
        self.address = address
        self.server = server
        self._transport = transport
        self._source = source
        self._replies = replies
        self._ancillary = ancillary

    def __repr__(self) -> str:
        return f"<{type(self).__name__} from {self.address!r}: {self.packet!r}>"

    @property
    def metadata(self) -> DatagramMetadata | None:
        """What the kernel reported about the datagram (timestamp, TTL, TOS, destination).

        ``None`` unless the server was made with ``receive_metadata=True``; a field the
        platform did not give is ``None``. Parsed from the kept control messages at each
        read, so handlers that never read it do not pay for it.
        """
        parser = self._transport.core.metadata
        return None if parser is None else parser.parse(self._ancillary)

    async def respond(self, packet: SendT) -> None:
        """Send ``packet`` to the sender, from the socket and address the request came to.

        Waits only while the kernel's send buffer is full (and, every few dozen replies, passes
        a full checkpoint so that a handler replying in a loop lets other tasks run). A failed
        send (an ICMP error for an earlier datagram, no route, ...) is counted in the server's
        statistics and logged, not raised: a reply is best effort, like UDP itself. A
        cancellation leaves the reply sent whole or not at all.

        When the datagram leaves: at once, except on Linux sockets that receive in batches
        (``recvmmsg``, a server bound to a specific address), where a reply given while the
        server's reading task runs a batch's handlers is copied into the socket's send batch
        and the whole batch leaves with one ``sendmmsg`` before that task next waits, reads
        or yields, at the latest when the socket closes. It is counted in ``datagrams_sent``
        then, and a send error for it is counted and logged then too.
        ``ANYDGRAM_BATCHED_SYSCALLS=0`` sends every reply at once.

        With the server's ``amplification_factor`` set, a reply that would take the bytes
        sent to this source past the cap (and the source is not validated, see
        :meth:`validate_peer`) is not sent: it is counted in ``amplification_dropped`` and
        this returns normally, as for a lost datagram.

        Raises:
            DatagramTooLargeError: The packet serializes to more than the protocol's
                ``max_datagram_size`` (or the kernel refused its size); nothing was sent.
            anyio.ClosedResourceError: The server is closed.
            Exception: Whatever the serializer raises for a packet it cannot represent.
        """
        data = self.send_soon(packet)
        if data is not None:
            await self.send_later(data)

    def send_soon(self, packet: SendT) -> bytes | None:
        """:meth:`respond` without waiting: ``None`` if done, else the datagram to wait for.

        Done means sent, queued in the socket's batch, held back by the amplification cap, or
        failed (counted and logged). A datagram is returned when a fairness checkpoint is due
        or the kernel's buffer is full: :meth:`send_later` finishes the job. (For the
        server's handler pool, which sends a handler's returned reply with it.)

        :meta private:
        """
        replies = self._replies
        data: bytes
        if isinstance(packet, bytes) and len(packet) <= replies.raw_limit:
            data = packet  # the raw-bytes protocol: the same bytes go on the wire
        else:
            data = replies.make_datagram(packet)
        seal = replies.seal
        if seal is not None:  # DTLS: the peer's session encrypts it, or it has none yet
            sealed = seal(self.address, data)
            if sealed is None:
                return None
            data = sealed
        amplification = replies.amplification
        if amplification is not None and not amplification.may_send(
            source_key(self.address), len(data)
        ):
            return None
        # The server's fairness rule for replies: a full checkpoint every few, before the send.
        replies.ready += 1
        if replies.ready >= SEND_FAIRNESS_INTERVAL:
            return data
        transport = self._transport
        batch = transport.queueing
        if batch is not None and batch.put(data, self.address):
            return None  # copied into the socket's batch, sent (and counted) before it yields
        try:
            if transport.send_nowait(data, self.address, self._source):
                return None
        except OSError as exc:
            replies.failed(exc, self.address)
            return None
        return data

    async def send_later(self, data: bytes) -> None:
        """Send what :meth:`send_soon` could not: pass the checkpoint due, wait for room.

        :meta private:
        """
        replies = self._replies
        transport = self._transport
        if replies.ready >= SEND_FAIRNESS_INTERVAL:
            replies.ready = 0
            await transport.flush_replies()  # nothing queued waits across a yield
            await replies.checkpoint()
        try:
            await transport.send(data, self.address, self._source)
        except OSError as exc:
            replies.failed(exc, self.address)

    def validate_peer(self) -> None:
        """Mark the sender as genuine: lift the anti-amplification cap for its source.

        Call this once the request proves the sender really owns its address (it echoed a
        token or cookie the server sent it, it authenticated, ...). From then on replies and
        :meth:`DatagramServer.send_packet` to the sender's source (its IP address; for IPv6
        its /64) are not capped, for as long as the server remembers the source (see
        ``amplification_factor``). Without an ``amplification_factor`` this does nothing.
        """
        amplification = self._replies.amplification
        if amplification is not None:
            amplification.validate(source_key(self.address))


class ParseErrorRequest(DatagramRequest[SendT, DatagramProtocolParseError]):
    """A request for the ``parse_error_handler`` (told apart from others by its class)."""

    __slots__ = ()
