"""The datagram server: a handler call per datagram, concurrently, on a pool of reused tasks.

Dispatch, following one datagram: the task *holding* a socket's slot takes a batch from the
kernel (never more than the concurrency bound leaves room for), parses it into a queue of
:class:`DatagramRequest`, and runs the handlers itself, back to back, before it reads again.
Quick handlers thus cost no hand-off between tasks; a fresh task per datagram would cost two
to three times the throughput, a hand-off to a worker per batch about a tenth.

A handler that blocks must hold up neither the rest of its batch nor the reading. So before
running handlers the holder wakes a *standby*: a parked task, or a new one. The standby runs at
the holder's next yield; if the holder is then inside a handler, the standby takes the slot
over (runs the rest of the queue and reads on, arming a standby of its own), and the former
holder, once its handler returns, carries on as a plain worker and parks. If the holder yielded
while reading, the standby parks again. Tasks are bounded by ``max_concurrent_handlers`` plus
one per socket.

When running plus queued handlers reach ``max_concurrent_handlers`` the holders stop reading
until a handler finishes: excess datagrams wait in the kernel buffer, which counts what it drops.
:meth:`DatagramServer.shutdown` cancels a holder only while it reads (a cancellation there
loses nothing); one running a handler stops before its next read, so handlers are never cut
short before the grace period ends. Nothing on the per-datagram path takes a lock, creates a
cancel scope or logs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeAlias, cast, overload

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._address import format_address, format_addresses
from ._backend import current_primitives
from ._errors import DatagramProtocolParseError
from ._logging import RateLimitedLog
from ._network import ServerNetwork
from ._open_endpoint import check_port
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._ratelimit import (
    DEFAULT_MAX_SOURCES,
    AmplificationLimiter,
    RateLimit,
    RateLimiter,
    source_key,
)
from ._server_io import (
    SEND_FAIRNESS_INTERVAL,
    Received,
    ServerTransport,
    check_hosts,
    open_server_sockets,
    resolve_bind_addresses,
)
from ._socket_io import MAX_BATCH, SocketProxy
from ._statistics import ServerStatistics
from ._workers import resolve_backend, run_in_this_process, run_workers
from .serializers import BytesSerializer

if TYPE_CHECKING:
    from ._endpoint import Address, IPAddress

__all__ = ("DatagramRequest", "DatagramServer", "Handler", "ParseErrorHandler")

#: Pause after an unexpected receive error, so a broken socket cannot make the reader spin.
_RECV_ERROR_BACKOFF: Final = 0.05


class DatagramRequest(Generic[SendT, RecvT]):
    """One received datagram, as a handler sees it.

    Requests are made by the server; handlers read them and reply with :meth:`respond`.

    Attributes:
        packet: The parsed datagram (for a ``parse_error_handler``: the
            :class:`~anydgram.DatagramProtocolParseError`, with the raw bytes in ``.data``).
        address: The sender's address, as the :mod:`socket` module gives it.
        server: The server that received it.
    """

    __slots__ = ("_local", "_transport", "address", "packet", "server")

    packet: RecvT
    address: IPAddress
    server: DatagramServer[SendT, Any]

    def __init__(
        self,
        packet: RecvT,
        address: IPAddress,
        server: DatagramServer[SendT, Any],
        transport: ServerTransport,
        local: Any,
    ) -> None:
        self.packet = packet
        self.address = address
        self.server = server
        self._transport = transport
        self._local = local

    def __repr__(self) -> str:
        return f"<{type(self).__name__} from {self.address!r}: {self.packet!r}>"

    async def respond(self, packet: SendT) -> None:
        """Send ``packet`` to the sender, from the socket and address the request came to.

        Waits only while the kernel's send buffer is full (and, every few dozen replies, passes
        a full checkpoint so that a handler replying in a loop lets other tasks run). A failed
        send (an ICMP error for an earlier datagram, no route, ...) is counted in the server's
        statistics and logged, not raised: a reply is best effort, like UDP itself. A
        cancellation leaves the reply sent whole or not at all.

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
        server = self.server
        data: bytes
        if isinstance(packet, bytes) and len(packet) <= server._raw_limit:
            data = packet  # the raw-bytes protocol: the same bytes go on the wire
        else:
            data = server._make_datagram(packet)
        amplification = server._amplification
        if amplification is not None and not amplification.may_send(
            source_key(self.address), len(data)
        ):
            return
        # Like ServerTransport.send_datagram, minus a coroutine per reply: the same fairness
        # rule (a full checkpoint every few replies, before the send), then a send that
        # waits only if the kernel's buffer is full.
        server._ready_sends += 1
        if server._ready_sends >= SEND_FAIRNESS_INTERVAL:
            server._ready_sends = 0
            await server._checkpoint()
        transport = self._transport
        local = self._local
        try:
            if local is None:
                sent = transport.send_nowait(data, self.address)
            else:
                sent = transport.send_datagram_nowait(data, self.address, local)
            if not sent:
                await transport.send_datagram(data, self.address, local)
        except OSError as exc:
            server._send_failed(exc, self.address)

    def validate_peer(self) -> None:
        """Mark the sender as genuine: lift the anti-amplification cap for its source.

        Call this once the request proves the sender really owns its address (it echoed a
        token or cookie the server sent it, it authenticated, ...). From then on replies and
        :meth:`DatagramServer.send_packet` to the sender's source (its IP address; for IPv6
        its /64) are not capped, for as long as the server remembers the source (see
        ``amplification_factor``). Without an ``amplification_factor`` this does nothing.
        """
        amplification = self.server._amplification
        if amplification is not None:
            amplification.validate(source_key(self.address))


class _ParseErrorRequest(DatagramRequest[SendT, DatagramProtocolParseError]):
    """A request for the ``parse_error_handler`` (told apart from others by its class)."""

    __slots__ = ()


#: ``async def handler(request: DatagramRequest[SendT, RecvT]) -> None``
Handler: TypeAlias = Callable[[DatagramRequest[SendT, RecvT]], Awaitable[None]]
#: ``async def on_parse_error(request: DatagramRequest[SendT, DatagramProtocolParseError])``
ParseErrorHandler: TypeAlias = Callable[
    [DatagramRequest[SendT, DatagramProtocolParseError]], Awaitable[None]
]


def _is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` gives a coroutine.

    True for an ``async def`` function or method, an object whose ``__call__`` is one, and a
    :func:`functools.partial` of either.
    """
    while isinstance(obj, functools.partial):
        obj = obj.func  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return False
    call = getattr(type(obj), "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(call)


class _ReaderSlot:
    """A socket's reading role, held by one task at a time (see :meth:`DatagramServer._read`)."""

    __slots__ = ("holder", "icmp_seen", "name", "reading", "transport")

    def __init__(self, transport: ServerTransport) -> None:
        self.transport = transport
        self.name = format_address(transport.local_address)
        #: The holding task's cancel scope (see :meth:`DatagramServer._task`); ``None`` before
        #: and after reading.
        self.holder: anyio.CancelScope | None = None
        #: The holder is receiving or waiting for room, not running a handler.
        self.reading = True
        #: ICMP errors already logged.
        self.icmp_seen = transport.icmp_errors


def _check_grace_period(grace_period: float) -> None:
    if not isinstance(grace_period, int | float) or isinstance(grace_period, bool):
        raise TypeError(f"grace_period must be a number, not {type(grace_period).__name__}")
    if not grace_period >= 0:
        raise ValueError(f"grace_period must be >= 0, got {grace_period!r}")


def _summary(stats: ServerStatistics) -> str:
    """The statistics logged when a server stops: the traffic, then the counters that are not 0."""
    parts = [
        f"{stats.datagrams_received} datagrams received ({stats.bytes_received} bytes), "
        f"{stats.datagrams_sent} sent ({stats.bytes_sent} bytes)"
    ]
    for name in (
        "handler_errors",
        "handlers_cancelled",
        "requests_abandoned",
        "parse_errors",
        "oversize",
        "send_errors",
        "icmp_errors",
        "kernel_drops",
        "unread_at_close",
        "rate_limited",
        "amplification_dropped",
    ):
        value = getattr(stats, name)
        if value:
            parts.append(f"{name} {value}")
    parts.append(f"handlers_peak {stats.handlers_peak}")
    return ", ".join(parts)


class DatagramServer(Generic[SendT, RecvT]):
    """A datagram (UDP) server that calls ``handler`` for every datagram it receives.

    ``SendT`` is what the server replies, ``RecvT`` what it receives; its protocol is a
    ``DatagramProtocol[SendT, RecvT]``. Handlers run concurrently, at most
    ``max_concurrent_handlers`` at a time; past that bound the server stops reading and the
    kernel buffers (and counts what it drops). Serve with :meth:`serve_forever` inside a task
    group, in the background of an ``async with`` block with :meth:`serving`, or with the
    blocking :meth:`run`. ``async with server:`` does not start serving; it
    closes the server (:meth:`aclose`) on the way out. A server serves once.

    Args:
        host: Where to bind. A string (an address or a name: every address a name resolves
            to is bound), a sequence of strings (one socket per address), or ``None`` for
            every interface (the IPv4 and IPv6 wildcards). IPv6 sockets are always
            ``IPV6_V6ONLY``: IPv4 clients are served by an IPv4 socket.
        port: The port; 0 lets the kernel pick one, the same on every address (see
            :attr:`addresses`).
        handler: ``async def handler(request)``, called once per datagram. What it raises is
            logged (with the sender's address) and counted in ``handler_errors``; the server
            goes on.
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        max_concurrent_handlers: How many handlers may run at once.
        reuse_port: Set ``SO_REUSEPORT``, so several servers (processes) can share the port.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes (``None``: the system default).
            Datagrams beyond what handlers can take wait here.
        rate_limit: A per-source rate limit (a :class:`~anydgram.RateLimit`), applied as
            datagrams are read, before parsing: datagrams over it never reach a handler and
            are counted in ``rate_limited`` (in log-only mode, only counted). ``None``: no
            limit, and no cost per datagram.
        amplification_factor: The anti-amplification cap, a number > 0: the payload bytes
            the server sends to a source (its IP address; IPv6 by /64), as replies or with
            :meth:`send_packet`, stay at most this many times the payload bytes received
            from it, until a handler calls :meth:`DatagramRequest.validate_peer` for it. A
            send over the cap is dropped and counted in ``amplification_dropped`` (not
            raised). Sources are remembered in a table bounded like the rate limit's
            (``rate_limit.max_sources``, else 4096), least recently seen forgotten first; a
            forgotten source starts from zero both ways and must be validated again.
            ``None``: no cap.
        logger: Where log records go; ``logging.getLogger("anydgram.server")`` by default.
            Records repeated in bursts (handler, parse and send errors) are rate-limited, so a
            hostile peer cannot flood the log.
        parse_error_handler: ``async def on_parse_error(request)`` for undecodable datagrams:
            ``request.packet`` is the :class:`~anydgram.DatagramProtocolParseError` (raw bytes
            in ``.data``), and ``request.respond()`` works as usual. It runs like a handler,
            within the same bound. Without one, such datagrams are dropped. They are counted
            in ``parse_errors`` either way.
        network: An :class:`anydgram.testing.MemoryNetwork` to serve on instead of sockets
            (``host`` must then be IP address literals or ``None``; ``reuse_port`` and
            ``recv_buffer_size`` do not apply). ``None``: real sockets.

    Raises:
        TypeError: An argument has the wrong type; ``handler`` or ``parse_error_handler`` is
            not an async callable (an ``async def`` function, an object whose ``__call__`` is
            one, or a :func:`functools.partial` of either).
        ValueError: An argument is out of range.
    """

    @overload
    def __init__(
        self: DatagramServer[bytes, bytes],
        host: str | Sequence[str] | None,
        port: int,
        handler: Handler[bytes, bytes],
        *,
        protocol: None = None,
        max_concurrent_handlers: int = 256,
        reuse_port: bool = False,
        recv_buffer_size: int | None = 1 << 20,
        rate_limit: RateLimit | None = None,
        amplification_factor: float | None = None,
        logger: logging.Logger | None = None,
        parse_error_handler: ParseErrorHandler[bytes] | None = None,
        network: object = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        host: str | Sequence[str] | None,
        port: int,
        handler: Handler[SendT, RecvT],
        *,
        protocol: DatagramProtocol[SendT, RecvT],
        max_concurrent_handlers: int = 256,
        reuse_port: bool = False,
        recv_buffer_size: int | None = 1 << 20,
        rate_limit: RateLimit | None = None,
        amplification_factor: float | None = None,
        logger: logging.Logger | None = None,
        parse_error_handler: ParseErrorHandler[SendT] | None = None,
        network: object = None,
    ) -> None: ...
    def __init__(
        self,
        host: str | Sequence[str] | None,
        port: int,
        handler: Handler[Any, Any],
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        max_concurrent_handlers: int = 256,
        reuse_port: bool = False,
        recv_buffer_size: int | None = 1 << 20,
        rate_limit: RateLimit | None = None,
        amplification_factor: float | None = None,
        logger: logging.Logger | None = None,
        parse_error_handler: ParseErrorHandler[Any] | None = None,
        network: object = None,
    ) -> None:
        self._hosts = check_hosts(host)
        self._port = check_port(port)
        if not _is_async_callable(handler):
            raise TypeError(
                f"handler must be an async function (async def), got {handler!r}: "
                "a plain def handler's call cannot be awaited"
            )
        if parse_error_handler is not None and not _is_async_callable(parse_error_handler):
            raise TypeError(
                "parse_error_handler must be an async function (async def) or None, "
                f"got {parse_error_handler!r}"
            )
        if not isinstance(max_concurrent_handlers, int) or isinstance(
            max_concurrent_handlers, bool
        ):
            raise TypeError(
                "max_concurrent_handlers must be an int, "
                f"not {type(max_concurrent_handlers).__name__}"
            )
        if max_concurrent_handlers < 1:
            raise ValueError(f"max_concurrent_handlers must be >= 1, got {max_concurrent_handlers}")
        if recv_buffer_size is not None and (
            not isinstance(recv_buffer_size, int) or isinstance(recv_buffer_size, bool)
        ):
            raise TypeError(
                f"recv_buffer_size must be an int or None, not {type(recv_buffer_size).__name__}"
            )
        if recv_buffer_size is not None and recv_buffer_size <= 0:
            raise ValueError(f"recv_buffer_size must be positive, got {recv_buffer_size}")
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(
                f"rate_limit must be a RateLimit or None, not {type(rate_limit).__name__}"
            )
        if amplification_factor is not None:
            if not isinstance(amplification_factor, int | float) or isinstance(
                amplification_factor, bool
            ):
                raise TypeError(
                    "amplification_factor must be a number or None, "
                    f"not {type(amplification_factor).__name__}"
                )
            if not (amplification_factor > 0 and math.isfinite(amplification_factor)):
                raise ValueError(
                    "amplification_factor must be a finite number > 0, "
                    f"got {amplification_factor!r}"
                )
        self._rate_limit = rate_limit
        self._amplification_factor = amplification_factor
        # The per-source state (a server serves once, so it lives as long as the server).
        self._rate_limiter = None if rate_limit is None else RateLimiter(rate_limit)
        self._amplification = (
            None
            if amplification_factor is None
            else AmplificationLimiter(
                amplification_factor,
                DEFAULT_MAX_SOURCES if rate_limit is None else rate_limit.max_sources,
            )
        )
        if network is not None and not isinstance(network, ServerNetwork):
            raise TypeError(
                f"network must be an anydgram.testing.MemoryNetwork or None, "
                f"not {type(network).__name__}"
            )
        self._network: ServerNetwork | None = network
        self._handler = handler
        self._parse_error_handler = parse_error_handler
        self._protocol: DatagramProtocol[SendT, RecvT] = (
            default_protocol() if protocol is None else protocol  # type: ignore[assignment]
        )
        self._make_datagram = self._protocol.make_datagram
        # With the raw-bytes protocol, parsing and serializing bytes are the identity: the hot
        # path skips those calls. -1 (no packet is that short) otherwise.
        self._raw_limit = (
            self._protocol.max_datagram_size
            if type(self._protocol) is DatagramProtocol
            and type(self._protocol.serializer) is BytesSerializer
            else -1
        )
        self._max_concurrent = max_concurrent_handlers
        self._reuse_port = bool(reuse_port)
        self._recv_buffer_size = recv_buffer_size
        self._log = RateLimitedLog(logger or logging.getLogger("anydgram.server"))

        # Life cycle: "new" -> "starting" -> "serving" -> "stopping" -> "closed".
        self._state = "new"
        self._transports: list[ServerTransport] = []
        self._addresses: tuple[Any, ...] = ()
        self._stop_requested = False
        self._stopped: anyio.Event | None = None
        self._stop_wakeup: anyio.Event | None = None
        self._grace_scope: anyio.CancelScope | None = None
        self._deadline = math.inf
        self._grace_period = math.inf
        self._kernel_drops_at_close = 0
        self._buffer_sizes_at_close = (0, 0)

        # Dispatch state, see the module docstring.
        self._pending: deque[DatagramRequest[SendT, Any]] = deque()
        self._idle: list[anyio.Event] = []
        self._slots: list[_ReaderSlot] = []
        self._readers_left = 0
        self._standby = False
        self._waking = 0
        self._tasks_started = 0
        self._task_limit = 0
        self._task_group: TaskGroup | None = None
        self._task_ids: set[int] = set()
        self._finish_waiter: anyio.Event | None = None
        self._active = 0
        self._peak = 0
        self._handler_errors = 0
        self._handlers_cancelled = 0
        self._requests_abandoned = 0
        self._parse_errors = 0
        self._ready_sends = 0
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint

    def __repr__(self) -> str:
        where = format_addresses(self._addresses) if self._addresses else self._state
        return f"<{type(self).__name__} {where}>"

    # -- properties ----------------------------------------------------------------------------

    @property
    def protocol(self) -> DatagramProtocol[SendT, RecvT]:
        """The protocol that turns packets into datagrams and back."""
        return self._protocol

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The addresses the server is bound to while it serves (empty before and after)."""
        return self._addresses

    @property
    def sockets(self) -> tuple[SocketProxy, ...]:
        """Views of the server's sockets while it serves (empty before and after)."""
        return tuple(
            SocketProxy(t.sock) for t in self._transports if t.sock is not None and not t.closed
        )

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters, summed over the sockets; kernel counters are read now."""
        transports = self._transports
        kernel_drops = self._kernel_drops_at_close
        if self._state == "closed":
            recv_buffer_size, send_buffer_size = self._buffer_sizes_at_close
        else:
            recv_buffer_size = send_buffer_size = 0
            for t in transports:
                rcv, snd = t.buffer_sizes()
                recv_buffer_size += rcv
                send_buffer_size += snd
                kernel_drops += t.kernel_drops()
        return ServerStatistics(
            datagrams_received=sum(t.datagrams_received for t in transports),
            datagrams_sent=sum(t.datagrams_sent for t in transports),
            bytes_received=sum(t.bytes_received for t in transports),
            bytes_sent=sum(t.bytes_sent for t in transports),
            parse_errors=self._parse_errors,
            oversize=sum(t.oversize for t in transports),
            send_errors=sum(t.send_errors for t in transports),
            icmp_errors=sum(t.icmp_errors for t in transports),
            unmatched_replies=0,
            kernel_drops=kernel_drops,
            unread_at_close=sum(t.unread_at_close for t in transports),
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
            handler_errors=self._handler_errors,
            handlers_cancelled=self._handlers_cancelled,
            requests_abandoned=self._requests_abandoned,
            handlers_active=self._active,
            handlers_peak=self._peak,
            rate_limited=0 if self._rate_limiter is None else self._rate_limiter.limited,
            amplification_dropped=(
                0 if self._amplification is None else self._amplification.dropped
            ),
        )

    # -- serving -------------------------------------------------------------------------------

    async def serve_forever(
        self, *, task_status: TaskStatus[tuple[IPAddress, ...]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the sockets and serve until :meth:`shutdown` or :meth:`aclose`, then return.

        Use ``addresses = await task_group.start(server.serve_forever)`` to learn the bound
        addresses (with the port the kernel chose for port 0).

        Each datagram becomes one handler call. A handler that raises does not stop the
        server: the exception is logged once with the sender's address (rate-limited) and
        counted in ``handler_errors``, and the other handlers carry on. Undecodable
        datagrams, ICMP errors and failed sends are counted and logged, never fatal.

        Cancelling the task that runs this stops the server like :meth:`aclose`: handlers
        are cancelled and the sockets closed before the cancellation propagates.

        Raises:
            OSError: An address could not be bound (nothing is left open).
            RuntimeError: The server is already serving.
            anyio.ClosedResourceError: The server was closed (a server serves once).
        """
        await self._open()
        await self._serve(task_status=task_status)

    @asynccontextmanager
    async def serving(self, *, grace_period: float = 5.0) -> AsyncGenerator[tuple[IPAddress, ...]]:
        """Serve in the background while the ``async with`` block runs; yield the addresses.

        The sockets are bound before the block begins, so a bind failure is a plain
        :class:`OSError` raised by ``async with`` (not an exception group). The server then
        serves in a task group of its own; when the block ends, however it ends, the server
        shuts down (:meth:`shutdown` with ``grace_period``) before ``async with`` returns,
        and an exception from the block propagates as it is. This is the one-liner for an
        application's lifespan (see the embedding guide). If the enclosing scope is
        cancelled, running handlers are cancelled at once, as by :meth:`aclose`.

        Raises:
            OSError: An address could not be bound (nothing is left open).
            RuntimeError: The server is already serving.
            anyio.ClosedResourceError: The server was closed (a server serves once).
            TypeError: ``grace_period`` is not a number.
            ValueError: ``grace_period`` is negative or NaN.
        """
        _check_grace_period(grace_period)
        await self._open()
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                addresses = await tasks.start(self._serve)
                try:
                    yield addresses
                except Exception as exc:
                    error = exc  # raised below, outside the task group: not wrapped in a group
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.shutdown(grace_period)
        finally:
            if self._state == "starting":  # cancelled before _serve ran: close what _open made
                with anyio.CancelScope(shield=True):
                    for transport in self._transports:
                        await transport.aclose()
                self._state = "closed"
                self._addresses = ()
                assert self._stopped is not None
                self._stopped.set()
        if error is not None:
            raise error

    async def _open(self) -> None:
        """Bind the sockets (the first half of :meth:`serve_forever`)."""
        if self._state == "closed":
            raise anyio.ClosedResourceError
        if self._state != "new":
            raise RuntimeError("the server is already serving")
        self._state = "starting"
        self._stopped = anyio.Event()
        self._stop_wakeup = anyio.Event()
        self._checkpoint = current_primitives().checkpoint
        try:
            if self._network is not None:
                self._transports = list(
                    self._network.open_server_transports(
                        self._hosts, self._port, self._protocol.max_datagram_size
                    )
                )
                await self._checkpoint()
            else:
                bind_addresses = await resolve_bind_addresses(self._hosts, self._port)
                self._transports = list(
                    open_server_sockets(
                        bind_addresses,
                        max_datagram_size=self._protocol.max_datagram_size,
                        reuse_port=self._reuse_port,
                        recv_buffer_size=self._recv_buffer_size,
                    )
                )
        except BaseException:
            self._state = "closed"
            self._stopped.set()
            raise
        self._addresses = tuple(t.local_address for t in self._transports)

    async def _serve(
        self, *, task_status: TaskStatus[tuple[IPAddress, ...]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on the sockets :meth:`_open` bound until stopped, then close them."""
        assert self._stopped is not None
        assert self._stop_wakeup is not None
        transports = self._transports
        logger = self._log.logger
        try:
            logger.info("serving on %s", format_addresses(self._addresses))
            async with anyio.create_task_group() as tasks:
                self._task_group = tasks
                try:
                    if not self._stop_requested:
                        self._state = "serving"
                        self._slots = [_ReaderSlot(transport) for transport in transports]
                        self._readers_left = self._tasks_started = len(self._slots)
                        # Room for every handler to block, each in its own task, plus a
                        # task per socket that goes on reading.
                        self._task_limit = self._max_concurrent + len(self._slots)
                        for slot in self._slots:
                            tasks.start_soon(
                                self._task, slot, name=f"anydgram server reader {slot.name}"
                            )
                    task_status.started(self._addresses)
                    await self._stop_wakeup.wait()
                    self._state = "stopping"
                    await self._wait_for_handlers()
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                recv_buffer_size = send_buffer_size = 0
                for transport in transports:
                    self._kernel_drops_at_close += transport.kernel_drops()
                    rcv, snd = transport.buffer_sizes()
                    recv_buffer_size += rcv
                    send_buffer_size += snd
                    await transport.aclose()
                self._buffer_sizes_at_close = (recv_buffer_size, send_buffer_size)
            self._state = "closed"
            # Read, but no handler started before the grace period ended. Undecodable ones
            # waiting for the parse_error_handler are in parse_errors already.
            self._requests_abandoned += sum(
                1 for request in self._pending if request.__class__ is not _ParseErrorRequest
            )
            self._pending.clear()
            self._idle.clear()
            self._slots = []
            self._task_group = None
            self._log.flush()
            logger.info(
                "stopped serving on %s: %s",
                format_addresses(self._addresses),
                _summary(self.statistics()),
            )
            self._addresses = ()
            self._stopped.set()

    async def _wait_for_handlers(self) -> None:
        with anyio.CancelScope(deadline=self._deadline) as grace:
            self._grace_scope = grace
            while self._readers_left or self._active or self._pending:
                # Requests queued by a reader that has stopped still need tasks to run them.
                await self._dispatch_pending()
                if not (self._readers_left or self._active):
                    break
                await self._wait_for_finish()
        self._grace_scope = None
        if grace.cancelled_caught and (self._active or self._pending):
            # Expected after aclose(); worth a warning when a grace period was not enough.
            self._log.logger.log(
                logging.INFO if self._grace_period == 0 else logging.WARNING,
                "cancelling %d handlers still running after the grace period (%.1f s)",
                self._active + len(self._pending),
                self._grace_period,
            )

    async def _task(self, slot: _ReaderSlot | None) -> None:
        """The body of every task of the server: read (holding ``slot``), run handlers, park.

        A task started for a socket holds its slot first. Any task with nothing queued to run
        takes over a slot whose holder is blocked in a handler, or parks until woken.
        """
        self._task_ids.add(anyio.get_current_task().id)
        if slot is None:  # started by _wake_one
            slot = self._woken()
        # One scope for the task's life, not one per turn at a slot: a turn begins whenever a
        # handler blocks, and a scope costs microseconds. shutdown() cancels it only while
        # this task reads; the task then goes on outside it, as a plain worker.
        with anyio.CancelScope() as scope:
            await self._work(slot, scope)
        await self._work(None, None)

    async def _work(self, slot: _ReaderSlot | None, scope: anyio.CancelScope | None) -> None:
        """Read (holding ``slot``), run handlers, take over a stuck slot, park; repeat.

        Returns when ``scope`` was cancelled: what runs next must run outside it. Without a
        ``scope`` (after that) this only runs handlers: the server is stopping.
        """
        idle = self._idle
        while True:
            if slot is not None and scope is not None:
                await self._read(slot, scope)
                if scope.cancel_called:
                    return
            await self._run_handlers(None, None)
            slot = self._stuck_slot()
            if slot is not None:
                continue
            # Parking lets every other task run: the fairness count of respond() starts over.
            self._ready_sends = 0
            event = anyio.Event()
            idle.append(event)
            await event.wait()
            slot = self._woken()

    def _woken(self) -> _ReaderSlot | None:
        """Account for a task woken (or started) by :meth:`_wake_one`; return a slot to take."""
        self._waking -= 1
        self._standby = False
        return self._stuck_slot()

    def _stuck_slot(self) -> _ReaderSlot | None:
        """A socket whose holder is blocked in a handler (the caller runs, so it is suspended)."""
        if self._stop_requested:
            return None
        for slot in self._slots:
            if slot.holder is not None and not slot.reading:
                return slot
        return None

    async def _read(self, slot: _ReaderSlot, scope: anyio.CancelScope) -> None:
        """Hold ``slot``: run what is queued, read a batch, repeat; until stopped or relieved.

        Handlers run here, in the reading task, with a standby task woken first: if a handler
        blocks, the standby runs, finds this slot's holder in a handler and takes the slot
        over (it runs the rest of the queue and reads on), and this task, once its handler
        returns, carries on as a plain worker. Quick handlers thus cost no hand-off at all.

        The holder is known by ``scope``, its task's. :meth:`shutdown` cancels it only while
        the holder reads (a cancellation there loses nothing); a holder running handlers stops
        before its next read. Returns when relieved, when the server stops, or when ``scope``
        was cancelled.
        """
        pending = self._pending
        transport = slot.transport
        bound = self._max_concurrent
        log = self._log
        relief = slot.holder is not None
        slot.holder = scope
        slot.reading = True
        if relief and len(self._slots) > 1:
            self._wake_standby()  # another socket's holder may be blocked as well
        try:
            # After a batch comes in, this checks for a shutdown first: shutdown() may have
            # cancelled the scope meanwhile, so the batch must run outside it.
            while not self._stop_requested:
                if pending and self._active < bound:
                    slot.reading = False
                    # The read loop passes a full checkpoint every few reads; count the
                    # replies of one batch's handlers towards respond()'s fairness only.
                    self._ready_sends = 0
                    if not self._standby:
                        self._wake_standby()
                    await self._run_handlers(slot, scope)
                    if slot.holder is not scope:
                        return  # relieved while a handler here was blocked
                    slot.reading = True
                    continue
                room = bound - self._active - len(pending)
                if room <= 0:
                    # Every handler slot is taken: leave the rest in the kernel buffer. (With
                    # several sockets, requests read meanwhile by another holder may wait here
                    # for a slot: a room computed before a wait goes stale.)
                    await self._wait_for_finish()
                    continue
                try:
                    batch = await transport.recv_datagrams(room if room < MAX_BATCH else MAX_BATCH)
                except anyio.ClosedResourceError:
                    break
                except OSError as exc:
                    log.log("recv", logging.ERROR, "receive failed: %s", exc)
                    await anyio.sleep(_RECV_ERROR_BACKOFF)
                    continue
                self._queue_batch(transport, batch)
                if transport.icmp_errors != slot.icmp_seen:
                    log.log(
                        "icmp",
                        logging.INFO,
                        "%d ICMP errors (peers unreachable) reported for earlier replies",
                        transport.icmp_errors - slot.icmp_seen,
                    )
                    slot.icmp_seen = transport.icmp_errors
        finally:
            if slot.holder is scope:
                slot.holder = None
                self._readers_left -= 1
                self._notify_finish()

    def _queue_batch(self, transport: ServerTransport, batch: list[Received]) -> None:
        """Screen and parse a batch; queue a request per datagram a handler should see."""
        pending = self._pending
        if self._rate_limiter is not None or self._amplification is not None:
            batch = self._screen(batch)
        request_class = DatagramRequest
        if self._raw_limit >= 0:
            # The raw-bytes protocol's parse is the identity (the transport has already set
            # oversize datagrams aside): skip two calls per datagram.
            for data, address, local in batch:
                pending.append(request_class(data, address, self, transport, local))
            return
        parse = self._protocol.build_packet_from_datagram
        hook = self._parse_error_handler
        for data, address, local in batch:
            try:
                packet = parse(data)
            except DatagramProtocolParseError as exc:
                self._parse_errors += 1
                exc.address = address
                self._log.log(
                    "parse",
                    logging.WARNING,
                    "undecodable datagram of %d bytes from %s: %s",
                    len(data),
                    format_address(address),
                    exc,
                )
                if hook is not None:
                    pending.append(_ParseErrorRequest(exc, address, self, transport, local))
                continue
            pending.append(request_class(packet, address, self, transport, local))

    def _screen(self, batch: list[Received]) -> list[Received]:
        """Apply the per-source limits to a batch; return the datagrams left to handle.

        The rate limit drops (or, log-only, just counts) datagrams over it; the
        anti-amplification cap counts the bytes of those that remain as received.
        """
        limiter = self._rate_limiter
        amplification = self._amplification
        if limiter is None:
            assert amplification is not None
            for data, address, _ in batch:
                amplification.received(source_key(address), len(data))
            return batch
        kept: list[Received] = []
        over_from: Any = None
        now = time.monotonic()  # one clock read per batch, not per datagram
        admit = limiter.admit
        log_only = limiter.log_only
        for item in batch:
            key = source_key(item[1])
            if not admit(key, now):
                if over_from is None:
                    over_from = item[1]
                if not log_only:
                    continue
            kept.append(item)
            if amplification is not None:
                amplification.received(key, len(item[0]))
        if over_from is not None:
            self._log.log(
                "rate",
                logging.WARNING,
                "rate limit exceeded by %s (and perhaps others): %s",
                format_address(over_from),
                "logged only" if log_only else "dropping datagrams",
            )
        return kept

    async def _dispatch_pending(self) -> None:
        """Wake tasks until every queued request is taken (used once the readers stopped).

        One task is woken, then this yields: that task runs handlers back to back until the
        queue is empty, unless a handler blocks; then the next round wakes another. Each round
        a woken task takes at least one request, so this ends. While every handler slot (or
        every task) is taken this waits instead: the handler that finishes takes the next one.
        """
        pending = self._pending
        checkpoint = self._checkpoint
        while pending and self._task_group is not None:  # no task group: nobody to wake
            if self._active >= self._max_concurrent or (not self._waking and not self._wake_one()):
                # Every handler slot, or every task, is taken: a handler that finishes takes
                # the next request itself.
                await self._wait_for_finish()
            else:
                await checkpoint()

    def _wake_standby(self) -> None:
        """Make sure a task will run at the next yield, to relieve a holder blocked in a handler."""
        if self._wake_one():
            self._standby = True

    def _wake_one(self) -> bool:
        """Wake a parked task, or start one if the limit allows; ``False`` if neither."""
        if self._idle:
            self._waking += 1
            self._idle.pop().set()
            return True
        if self._tasks_started < self._task_limit and self._task_group is not None:
            self._tasks_started += 1
            self._waking += 1
            self._task_group.start_soon(
                self._task, None, name=f"anydgram server task {self._tasks_started}"
            )
            return True
        return False

    async def _wait_for_finish(self) -> None:
        """Wait until a handler finishes or a reader stops."""
        waiter = self._finish_waiter
        if waiter is None:
            waiter = self._finish_waiter = anyio.Event()
        await waiter.wait()

    def _notify_finish(self) -> None:
        waiter = self._finish_waiter
        if waiter is not None:
            self._finish_waiter = None
            waiter.set()

    async def _run_handlers(self, slot: _ReaderSlot | None, scope: object) -> None:
        """Run handlers for queued requests back to back, until the queue is empty.

        Stops, leaving the rest queued, when ``max_concurrent_handlers`` handlers run: the
        task whose handler finishes next takes it on. A holder (``slot`` given, ``scope`` its
        task's) stops as well when relieved of the slot.
        """
        pending = self._pending
        handler = self._handler
        hook = self._parse_error_handler
        bound = self._max_concurrent
        cancelled_class = anyio.get_cancelled_exc_class()
        while pending:
            if slot is not None and slot.holder is not scope:
                return
            active = self._active
            if active >= bound:
                return
            request = pending.popleft()
            active = self._active = active + 1
            if active > self._peak:
                self._peak = active
            try:
                if hook is not None and request.__class__ is _ParseErrorRequest:
                    await hook(request)
                else:
                    await handler(request)
            except Exception as exc:
                self._handler_failed(exc, request)
            except cancelled_class:
                # Only the server cancels a running handler: it is stopping (see _serve).
                self._handlers_cancelled += 1
                raise
            finally:
                self._active -= 1
                # _notify_finish(), inlined: this runs once per datagram.
                waiter = self._finish_waiter
                if waiter is not None:
                    self._finish_waiter = None
                    waiter.set()

    def _handler_failed(self, exc: Exception, request: DatagramRequest[Any, Any]) -> None:
        self._handler_errors += 1
        what = "parse_error_handler" if request.__class__ is _ParseErrorRequest else "handler"
        self._log.log(
            "handler",
            logging.ERROR,
            "%s raised for a datagram from %s",
            what,
            format_address(request.address),
            exc_info=exc,
        )

    def _send_failed(self, exc: OSError, address: Any) -> None:
        self._log.log(
            "send", logging.WARNING, "could not send to %s: %s", format_address(address), exc
        )

    # -- server-initiated sends ----------------------------------------------------------------

    async def send_packet(self, packet: SendT, address: Address) -> None:
        """Send ``packet`` to ``address`` from the server's first socket of that family.

        Unlike :meth:`DatagramRequest.respond`, this is an API call and raises what goes
        wrong. On a wildcard socket the kernel picks the source address. A cancellation
        leaves the datagram sent whole or not at all.

        The anti-amplification cap (``amplification_factor``) applies here as to replies: a
        send over it is not made, but counted in ``amplification_dropped``, and this returns
        normally (a cap is not the caller's error; a peer that never sent anything has no
        budget until it is validated).

        Args:
            packet: What to send.
            address: A literal IP address tuple, ``(host, port)`` or
                ``(host, port, flowinfo, scope_id)``.

        Raises:
            DatagramTooLargeError: The packet is too large; nothing was sent.
            ValueError: The server has no socket of the address's family.
            anyio.ClosedResourceError: The server is not serving.
            OSError: The kernel refused the send (counted in the statistics as well).
        """
        data = self._make_datagram(packet)
        if self._state not in ("serving", "stopping"):
            raise anyio.ClosedResourceError
        transport = self._transport_for(address)
        amplification = self._amplification
        if amplification is not None and not amplification.may_send(source_key(address), len(data)):
            return
        await transport.send_datagram(data, address, None)

    def _transport_for(self, address: Any) -> ServerTransport:
        host: object = None
        if isinstance(address, tuple) and address:
            items = cast("Any", address)
            host = items[0]
        if not isinstance(host, str):
            raise TypeError(f"expected a (host, port) address tuple, got {address!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for transport in self._transports:
            if transport.family == family:
                return transport
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise ValueError(f"the server has no {kind} socket to send to {address!r}")

    # -- stopping ------------------------------------------------------------------------------

    async def shutdown(self, grace_period: float = 5.0) -> None:
        """Stop serving: stop reading at once, give running handlers time, then close.

        Handlers already running (and datagrams already read) get up to ``grace_period``
        seconds to finish, and can still reply; the rest are cancelled, the sockets closed,
        and :meth:`serve_forever` returns. This returns once all that is done, except when
        called from a handler: then it returns at once (a handler cannot wait for itself).
        A later call with a shorter grace period shortens the wait. Calling it on a server
        that is not serving closes the server.

        If this call is cancelled, the shutdown still goes on; only the waiting stops.

        Raises:
            TypeError: ``grace_period`` is not a number.
            ValueError: ``grace_period`` is negative or NaN.
        """
        _check_grace_period(grace_period)
        if self._state == "new":
            self._state = "closed"
            await anyio.lowlevel.checkpoint()
            return
        if self._state != "closed":
            deadline = anyio.current_time() + grace_period
            if deadline < self._deadline:
                self._deadline = deadline
                self._grace_period = grace_period
                if self._grace_scope is not None:
                    self._grace_scope.deadline = deadline
            if not self._stop_requested:
                self._stop_requested = True
                self._log.logger.info(
                    "shutting down (grace period %.1f s) on %s",
                    grace_period,
                    format_addresses(self._addresses),
                )
            for slot in self._slots:
                # A holder that is reading loses nothing to a cancellation; one running a
                # handler sees _stop_requested before its next read.
                if slot.holder is not None and slot.reading:
                    slot.holder.cancel()
            if self._stop_wakeup is not None:
                self._stop_wakeup.set()
        stopped = self._stopped
        if stopped is None or anyio.get_current_task().id in self._task_ids:
            await anyio.lowlevel.checkpoint()
            return
        await stopped.wait()

    async def aclose(self) -> None:
        """Stop serving at once: cancel running handlers and close the sockets.

        The same as ``shutdown(grace_period=0)``: returns when the sockets are closed (their
        ports free again), except when called from a handler. Closing twice is fine. If this
        call is cancelled, the closing still goes on; only the waiting stops.
        """
        await self.shutdown(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- blocking entry point ------------------------------------------------------------------

    def run(
        self,
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        workers: int = 1,
    ) -> None:
        """Serve until SIGINT (Ctrl-C) or SIGTERM, blocking the calling thread.

        The first signal shuts the server down gracefully (:meth:`shutdown`, 5 s of grace), a
        second one closes it at once; then this returns normally. Signals are only handled
        when called from the main thread.

        With ``workers > 1`` the calling process becomes a supervisor of that many worker
        processes (forked: the handler may be any callable, closures included), each with
        its own event loop and its own sockets on the same port (``SO_REUSEPORT``, so the
        kernel spreads clients over them). A port of 0 is chosen once, by the first worker,
        and shared by all; the supervisor itself keeps no socket. SIGINT or SIGTERM to the
        supervisor stops every worker gracefully (workers leave SIGINT to the supervisor, so
        Ctrl-C in a terminal counts once). If a worker dies on its own, the others are stopped
        and this raises.

        Args:
            backend: ``"asyncio"``, ``"trio"``, or ``"uvloop"`` (shorthand for asyncio with
                ``use_uvloop=True``).
            backend_options: Passed to :func:`anyio.run`.
            workers: How many processes serve (Linux and other POSIX systems with ``fork``
                and ``SO_REUSEPORT``).

        Raises:
            ValueError: An unknown backend, or ``workers < 1``.
            ImportError: The backend (trio, uvloop) is not installed.
            OSError: The address could not be bound.
            RuntimeError: The server is serving or was closed, or a worker process failed.
        """
        backend_name, options = resolve_backend(backend, backend_options)
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if self._state != "new":
            raise RuntimeError(f"the server cannot run: it is {self._state}")
        if workers == 1:
            run_in_this_process(self, backend_name, options)
        else:
            run_workers(self, workers, backend_name, options)

    def _use_port(self, port: int) -> None:
        # For worker processes: bind this port, shared with the other workers.
        self._port = port
        self._reuse_port = True
