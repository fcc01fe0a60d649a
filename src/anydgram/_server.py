"""The datagram server: its arguments, its life cycle and its statistics.

Following one datagram: a reading task of the :class:`~anydgram._handler_pool.HandlerPool`
takes a batch from a socket (:mod:`anydgram._socket_io`), the
:class:`~anydgram._server_intake.Intake` screens and parses it into
:class:`~anydgram.DatagramRequest` objects, the pool runs the handler for each, and
:meth:`~anydgram.DatagramRequest.respond` sends the reply through the same socket.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeAlias, cast, overload

import anyio
from anyio.abc import TaskStatus

from ._address import format_addresses
from ._errors import DatagramProtocolParseError
from ._handler_pool import HandlerPool
from ._logging import LogBudget, RateLimitedLog
from ._network import ServerNetwork
from ._open_endpoint import check_port
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._ratelimit import RateLimit
from ._server_args import check_grace_period, check_server_arguments, make_limiters
from ._server_intake import Intake
from ._server_life import Lifecycle
from ._server_request import DatagramRequest, Replies
from ._server_security import datagram_room, make_security
from ._server_sockets import check_hosts
from ._socket_proxy import SocketProxy
from ._statistics import ServerStatistics
from ._workers import run_server

if TYPE_CHECKING:
    from OpenSSL import SSL

    from ._endpoint import Address, IPAddress
    from .dtls import DTLSServerConfig

__all__ = ("DatagramRequest", "DatagramServer", "Handler", "ParseErrorHandler")

#: Pause after an unexpected receive error, so a broken socket cannot make the reader spin.
_RECV_ERROR_BACKOFF: Final = 0.05


#: ``async def handler(request: DatagramRequest[SendT, RecvT]) -> SendT | None``: a packet it
#: returns is sent as ``request.respond(packet)`` sends it; ``None`` sends nothing.
Handler: TypeAlias = Callable[[DatagramRequest[SendT, RecvT]], Awaitable[SendT | None]]
#: ``async def on_parse_error(request: DatagramRequest[SendT, DatagramProtocolParseError])``,
#: returning a reply or ``None`` as a handler does.
ParseErrorHandler: TypeAlias = Callable[
    [DatagramRequest[SendT, DatagramProtocolParseError]], Awaitable[SendT | None]
]


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
        handler: ``async def handler(request)``, called once per datagram. A packet it
            returns is the reply, sent as ``request.respond(packet)`` sends it (``None``, the
            default, sends nothing; ``respond()`` may also be called, any number of times).
            What it raises is logged (with the sender's address) and counted in
            ``handler_errors``; the server goes on.
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
            hostile peer cannot flood the log: past ``log_budget`` records of one kind per
            interval, the rest are summed up in one record when the interval ends.
        log_budget: That budget (:class:`~anydgram.LogBudget`); ``None``: 5 records of a
            kind per 10 s.
        parse_error_handler: ``async def on_parse_error(request)`` for undecodable datagrams:
            ``request.packet`` is the :class:`~anydgram.DatagramProtocolParseError` (raw bytes
            in ``.data``), and ``request.respond()`` works as usual. It runs like a handler,
            within the same bound. Without one, such datagrams are dropped. They are counted
            in ``parse_errors`` either way.
        network: An :class:`anydgram.testing.MemoryNetwork` to serve on instead of sockets
            (``host`` must then be IP address literals or ``None``; ``reuse_port`` and
            ``recv_buffer_size`` do not apply). ``None``: real sockets.
        dtls: Serve DTLS (extra ``dtls``): an ``OpenSSL.SSL.Context`` for DTLS or an
            :class:`anydgram.dtls.DTLSServerConfig`; handlers see decrypted packets and
            :meth:`~DatagramRequest.respond` encrypts. ``None``: plain UDP.
        receive_metadata: Ask for each datagram's metadata (timestamp, TTL, TOS, destination):
            :attr:`DatagramRequest.metadata`, parsed only when a handler reads it.
        tos: The TOS/traffic class byte of every datagram sent (``IP_TOS``/``IPV6_TCLASS``).

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
        log_budget: LogBudget | None = None,
        parse_error_handler: ParseErrorHandler[bytes] | None = None,
        network: object = None,
        dtls: SSL.Context | DTLSServerConfig | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
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
        log_budget: LogBudget | None = None,
        parse_error_handler: ParseErrorHandler[SendT] | None = None,
        network: object = None,
        dtls: SSL.Context | DTLSServerConfig | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
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
        log_budget: LogBudget | None = None,
        parse_error_handler: ParseErrorHandler[Any] | None = None,
        network: object = None,
        dtls: SSL.Context | DTLSServerConfig | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None:
        check_server_arguments(
            handler,
            parse_error_handler,
            max_concurrent_handlers,
            recv_buffer_size,
            logger,
            rate_limit,
            amplification_factor,
            network,
            log_budget,
        )
        self._rate_limit = rate_limit
        self._amplification_factor = amplification_factor
        # The per-source state (a server serves once, so it lives as long as the server).
        self._rate_limiter, self._amplification = make_limiters(rate_limit, amplification_factor)
        self._protocol: DatagramProtocol[SendT, RecvT] = (
            default_protocol() if protocol is None else protocol  # type: ignore[assignment]
        )
        self._make_datagram = self._protocol.make_datagram
        log = logger or logging.getLogger("anydgram.server")
        self._log = RateLimitedLog(log, budget=log_budget)
        self._security = make_security(dtls, self._protocol.max_datagram_size, self._log)
        self._replies = Replies(self._protocol, self._amplification, self._log, self._security)
        self._intake = Intake(
            self,
            self._protocol,
            self._replies,
            has_parse_error_handler=parse_error_handler is not None,
            rate_limiter=self._rate_limiter,
            amplification=self._amplification,
            log=self._log,
            security=self._security,
        )
        self._pool = HandlerPool(
            handler,
            parse_error_handler,
            max_concurrent_handlers,
            self._intake,
            self._replies,
            self._log,
        )
        self._life = Lifecycle(
            hosts=check_hosts(host),
            port=check_port(port),
            network=cast("ServerNetwork | None", network),
            reuse_port=bool(reuse_port),
            recv_buffer_size=recv_buffer_size,
            max_datagram_size=datagram_room(self._security, self._protocol.max_datagram_size),
            pool=self._pool,
            replies=self._replies,
            log=self._log,
            statistics=self.statistics,
            security=self._security,
            receive_metadata=bool(receive_metadata),
            tos=tos,
        )

    def __repr__(self) -> str:
        life = self._life
        where = format_addresses(life.addresses) if life.addresses else life.state
        return f"<{type(self).__name__} {where}>"

    # -- properties ----------------------------------------------------------------------------

    @property
    def protocol(self) -> DatagramProtocol[SendT, RecvT]:
        """The protocol that turns packets into datagrams and back."""
        return self._protocol

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The addresses the server is bound to while it serves (empty before and after)."""
        return self._life.addresses

    @property
    def sockets(self) -> tuple[SocketProxy, ...]:
        """Views of the server's sockets while it serves (empty before and after)."""
        return tuple(SocketProxy(t.sock) for t in self._life.transports if not t.closed)

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters, summed over the sockets; kernel counters are read now."""
        security = self._security
        return ServerStatistics(
            **self._life.socket_counters(),
            **self._intake.counters(),
            **self._pool.counters(),
            unmatched_replies=0,
            **({} if security is None else security.counters()),
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
        await self._life.open()
        await self._life.serve(task_status=task_status)

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
        check_grace_period(grace_period)
        await self._life.open()
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                addresses = await tasks.start(self._life.serve)
                try:
                    yield addresses
                except Exception as exc:
                    error = exc  # raised below, outside the task group: not wrapped in a group
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.shutdown(grace_period)
        finally:
            await self._life.abandon()  # cancelled between binding and serving
        if error is not None:
            raise error

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
            ValueError: No socket of the address's family (with ``dtls=``: no session).
            anyio.ClosedResourceError: The server is not serving.
            OSError: The kernel refused the send (counted in the statistics as well).
        """
        await self._life.send_packet(self._make_datagram(packet), address)

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
        check_grace_period(grace_period)
        await self._life.shutdown(grace_period)

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
        background: Callable[[int], Coroutine[Any, Any, None]] | None = None,
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
            background: ``async def background(worker: int)``, run in each serving process
                beside its server while it serves, cancelled when it stops; ``worker`` numbers
                the processes from 1 (1 without workers). For per-process work, such as
                reporting that process's :meth:`statistics`. What it raises stops the server
                and comes out of ``run()`` in an exception group (from a worker: as the
                cause of the RuntimeError).

        Raises:
            ValueError: An unknown backend, or ``workers < 1``.
            ImportError: The backend (trio, uvloop) is not installed.
            OSError: The address could not be bound.
            RuntimeError: The server is serving or was closed, or a worker process failed.
        """
        run_server(self._life, backend, backend_options, workers, background)
