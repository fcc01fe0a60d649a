"""A server's life cycle: binding its sockets, serving on them, stopping, closing.

States: ``"new"`` -> ``"starting"`` (bound) -> ``"serving"`` -> ``"stopping"`` -> ``"closed"``.
A server serves once. :func:`~anydgram._workers.run_in_this_process` drives the same object.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._address import format_addresses
from ._backend import current_primitives
from ._io_core import Tally
from ._logging import flush_periodically
from ._metadata import check_tos
from ._ratelimit import source_key
from ._server_security import seal_for_send
from ._server_sockets import open_server_sockets, resolve_bind_addresses

if TYPE_CHECKING:
    from ._endpoint import IPAddress
    from ._handler_pool import HandlerPool
    from ._logging import RateLimitedLog
    from ._network import ServerNetwork
    from ._server_request import Replies
    from ._server_security import ServerSecurity
    from ._socket_io import SocketIO
    from ._statistics import ServerStatistics

__all__ = ("Lifecycle",)


class Lifecycle:
    """Binds a server's sockets, serves on them with its pool, and closes them."""

    def __init__(
        self,
        *,
        hosts: list[str] | None,
        port: int,
        network: ServerNetwork | None,
        reuse_port: bool,
        recv_buffer_size: int | None,
        max_datagram_size: int,
        pool: HandlerPool,
        replies: Replies,
        log: RateLimitedLog,
        statistics: Callable[[], ServerStatistics],
        security: ServerSecurity | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None:
        self._hosts = hosts
        self.port = port
        self._network = network
        self._reuse_port = reuse_port
        self._recv_buffer_size = recv_buffer_size
        self._max_datagram_size = max_datagram_size
        self._pool = pool
        self._replies = replies
        self._log = log
        self._statistics = statistics
        self._security = security
        self._receive_metadata = receive_metadata
        self._tos = check_tos(tos)
        self.state = "new"
        self.transports: list[SocketIO] = []
        self.addresses: tuple[Any, ...] = ()
        self._stopped: anyio.Event | None = None
        self._stop_wakeup: anyio.Event | None = None
        #: Read from the sockets as they close: the statistics of a closed server keep them.
        self.kernel_drops_at_close = 0
        self.buffer_sizes_at_close = (0, 0)

    @property
    def logger(self) -> logging.Logger:
        """The server's logger."""
        return self._log.logger

    def use_port(self, port: int | None) -> None:
        """For worker processes: bind this port (or the configured one), shared with others."""
        if port is not None:
            self.port = port
        self._reuse_port = True

    async def open(self) -> None:
        """Bind the sockets (the first half of serving)."""
        if self.state == "closed":
            raise anyio.ClosedResourceError
        if self.state != "new":
            raise RuntimeError("the server is already serving")
        self.state = "starting"
        self._stopped = anyio.Event()
        self._stop_wakeup = anyio.Event()
        checkpoint = current_primitives().checkpoint
        self._pool.checkpoint = self._replies.checkpoint = checkpoint
        try:
            transports: Sequence[SocketIO]
            if self._network is not None:
                transports = self._network.open_server_transports(
                    self._hosts,
                    self.port,
                    self._max_datagram_size,
                    receive_metadata=self._receive_metadata,
                )
                await checkpoint()
            else:
                transports = open_server_sockets(
                    await resolve_bind_addresses(self._hosts, self.port),
                    max_datagram_size=self._max_datagram_size,
                    reuse_port=self._reuse_port,
                    recv_buffer_size=self._recv_buffer_size,
                    receive_metadata=self._receive_metadata,
                    tos=self._tos,
                )
            self.transports = list(transports)
        except BaseException:
            self.state = "closed"
            self._stopped.set()
            raise
        self.addresses = tuple(t.local_address for t in self.transports)

    async def serve(
        self, *, task_status: TaskStatus[tuple[IPAddress, ...]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on the sockets :meth:`open` bound until stopped, then close them."""
        assert self._stopped is not None
        assert self._stop_wakeup is not None
        transports = self.transports
        logger = self._log.logger
        try:
            logger.info("serving on %s", format_addresses(self.addresses))
            async with anyio.create_task_group() as tasks:
                try:
                    if not self._pool.stop_requested:
                        self.state = "serving"
                        self._pool.start(tasks, transports)
                        # Suppressed-record summaries come when their interval ends.
                        tasks.start_soon(flush_periodically, self._log, name="anydgram log")
                        if self._security is not None:
                            tasks.start_soon(self._security.maintain, name="anydgram dtls")
                    task_status.started(self.addresses)
                    await self._stop_wakeup.wait()
                    self.state = "stopping"
                    await self._pool.wait_for_handlers()
                finally:
                    tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self._security is not None:
                    self._security.close_all()  # close_notify, while the sockets are open
                recv_buffer_size = send_buffer_size = 0
                for transport in transports:
                    self.kernel_drops_at_close += transport.kernel_drops()
                    rcv, snd = transport.buffer_sizes()
                    recv_buffer_size += rcv
                    send_buffer_size += snd
                    await transport.aclose()
                self.buffer_sizes_at_close = (recv_buffer_size, send_buffer_size)
            self.state = "closed"
            self._pool.close()  # counts what was read and never handled
            self._log.flush()
            logger.info(
                "stopped serving on %s: %s",
                format_addresses(self.addresses),
                _summary(self._statistics()),
            )
            self.addresses = ()
            self._stopped.set()

    async def abandon(self) -> None:
        """Close what :meth:`open` bound if :meth:`serve` never ran (cancelled in between)."""
        if self.state != "starting":
            return
        with anyio.CancelScope(shield=True):
            for transport in self.transports:
                await transport.aclose()
        self.state = "closed"
        self.addresses = ()
        assert self._stopped is not None
        self._stopped.set()

    async def shutdown(self, grace_period: float) -> None:
        """Stop reading, give handlers ``grace_period`` seconds, close; wait unless a handler."""
        if self.state == "new":
            self.state = "closed"
            await anyio.lowlevel.checkpoint()
            return
        if self.state != "closed":
            deadline = anyio.current_time() + grace_period
            if self._pool.stop(deadline, grace_period):
                self._log.logger.info(
                    "shutting down (grace period %.1f s) on %s",
                    grace_period,
                    format_addresses(self.addresses),
                )
            if self._stop_wakeup is not None:
                self._stop_wakeup.set()
        stopped = self._stopped
        if stopped is None or anyio.get_current_task().id in self._pool.task_ids:
            await anyio.lowlevel.checkpoint()  # a handler cannot wait for itself
            return
        await stopped.wait()

    async def aclose(self) -> None:
        """Close at once: ``shutdown(0)``."""
        await self.shutdown(0)

    def socket_counters(self) -> dict[str, int]:
        """The sockets' counters summed, under ServerStatistics' names; kernel ones read now."""
        transports = self.transports
        counters = {name: sum(getattr(t, name) for t in transports) for name in Tally.__slots__}
        if self.state == "closed":
            kernel_drops = self.kernel_drops_at_close
            recv_buffer_size, send_buffer_size = self.buffer_sizes_at_close
        else:
            kernel_drops = self.kernel_drops_at_close + sum(t.kernel_drops() for t in transports)
            sizes = [t.buffer_sizes() for t in transports]
            recv_buffer_size = sum(rcv for rcv, _ in sizes)
            send_buffer_size = sum(snd for _, snd in sizes)
        counters.update(
            kernel_drops=kernel_drops,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
        )
        return counters

    def transport_for(self, address: Any) -> SocketIO:
        """The first socket of ``address``'s family (TypeError, ValueError if none)."""
        host: object = None
        if isinstance(address, tuple) and address:
            host = cast("tuple[object, ...]", address)[0]
        if not isinstance(host, str):
            raise TypeError(f"expected a (host, port) address tuple, got {address!r}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for transport in self.transports:
            if transport.family == family:
                return transport
        kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise ValueError(f"the server has no {kind} socket to send to {address!r}")

    async def send_packet(self, data: bytes, address: Any) -> None:
        """``DatagramServer.send_packet`` once serialized: sealed, capped, sent."""
        if self.state not in ("serving", "stopping"):
            raise anyio.ClosedResourceError
        transport = self.transport_for(address)
        data = seal_for_send(self._security, address, data)
        amplification = self._replies.amplification
        if amplification is not None and not amplification.may_send(source_key(address), len(data)):
            return
        await transport.send(data, address)

    async def wait_closed(self) -> None:
        """Return once the server has closed (after :meth:`open`)."""
        assert self._stopped is not None
        await self._stopped.wait()


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
        "dtls_handshakes",
        "dtls_handshake_failures",
        "dtls_records_dropped",
    ):
        value = getattr(stats, name)
        if value:
            parts.append(f"{name} {value}")
    parts.append(f"handlers_peak {stats.handlers_peak}")
    return ", ".join(parts)
