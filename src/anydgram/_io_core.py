"""The I/O core: the system calls on one non-blocking datagram socket.

Every socket of the library (async endpoint, server socket, blocking endpoint, memory network
endpoint) is a :class:`SocketCore` with a receive strategy, and only the way its user waits
differs. This module is the one place where OS errors become anydgram's errors and are
counted. Nothing here waits: a call that would block returns empty-handed.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol, overload

import anyio

from ._errors import DatagramTooLargeError
from ._metadata import Ancillary, MetadataParser
from ._socket_os import (
    ICMP_ERRNOS,
    IS_LINUX,
    BoundPath,
    drain_unread,
    normalize_address,
    read_kernel_drops,
)

__all__ = (
    "FAMILY_LIMITS",
    "MAX_BATCH",
    "ReceiveStrategy",
    "Received",
    "RecvFrom",
    "ReplySource",
    "SocketCore",
    "SocketLike",
    "Tally",
)

#: The most datagrams one receive takes (a server's read batch), and the most it skips
#: (oversize datagrams, queued ICMP errors) before giving up the CPU; also one drain's bound.
MAX_BATCH: Final = 64

#: The largest UDP payload each IP family carries (65,535 minus the headers); a Unix datagram
#: socket's limit is its send buffer.
FAMILY_LIMITS: Final[dict[int, int]] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}

#: Ancillary data that makes a reply leave from the address a request was sent to (``sendmsg``
#: control messages), or ``None`` to let the kernel choose.
ReplySource = list[tuple[int, int, bytes]]
#: One received datagram: ``(payload, sender, reply source, control messages)``; the last is
#: ``None`` unless the socket receives metadata (parsed on demand, see ``_metadata.py``).
Received = tuple[bytes, Any, ReplySource | None, Ancillary | None]


class SocketLike(Protocol):
    """The part of :class:`socket.socket` the core uses; the memory network supplies a fake."""

    @property
    def family(self) -> socket.AddressFamily: ...
    @property
    def type(self) -> socket.SocketKind: ...
    @property
    def proto(self) -> int: ...

    def fileno(self) -> int: ...
    def recv(self, bufsize: int, flags: int = ..., /) -> bytes: ...
    def recvfrom(self, bufsize: int, flags: int = ..., /) -> tuple[bytes, Any]: ...
    def recvmsg(
        self, bufsize: int, ancbufsize: int = ..., flags: int = ..., /
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]: ...
    def send(self, data: bytes, flags: int = ..., /) -> int: ...
    def sendto(self, data: bytes, address: Any, /) -> int: ...
    def sendmsg(
        self,
        buffers: Iterable[bytes],
        ancdata: Iterable[tuple[int, int, bytes]] = ...,
        flags: int = ...,
        address: Any = ...,
        /,
    ) -> int: ...
    def getsockname(self) -> Any: ...
    def getpeername(self) -> Any: ...
    @overload
    def getsockopt(self, level: int, option: int, /) -> int: ...
    @overload
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...
    def setsockopt(self, level: int, option: int, value: int | bytes, /) -> None: ...
    def setblocking(self, flag: bool, /) -> None: ...
    def close(self) -> None: ...


class Tally:
    """The I/O counters of one socket (or of one blocking call, merged afterwards)."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "datagrams_received",
        "datagrams_sent",
        "icmp_errors",
        "metadata_truncated",
        "oversize",
        "send_errors",
        "unread_at_close",
    )

    def __init__(self) -> None:
        self.datagrams_received: int = 0
        self.bytes_received: int = 0
        self.datagrams_sent: int = 0
        self.bytes_sent: int = 0
        self.oversize: int = 0
        self.send_errors: int = 0
        self.icmp_errors: int = 0
        self.unread_at_close: int = 0
        #: Datagrams whose control messages did not fit (``MSG_CTRUNC``), delivered anyway.
        self.metadata_truncated: int = 0

    def add(self, other: Tally) -> None:
        """Add ``other``'s counts to these."""
        for name in Tally.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        """The counters by the names the statistics classes use."""
        return {name: getattr(self, name) for name in Tally.__slots__}


class ReceiveStrategy(Protocol):
    """One way of taking waiting datagrams off a socket (``recvfrom``, ``recvmmsg``, ...)."""

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        ...


class SocketCore:
    """One non-blocking socket: its receive strategy, its sends, its errors, its release."""

    __slots__ = (
        "_pending",
        "_pending_lock",
        "_saved",
        "bufsize",
        "closed",
        "connected",
        "family",
        "is_unix",
        "max_datagram_size",
        "metadata",
        "peer",
        "receive",
        "receive_many",
        "receive_one",
        "sock",
        "unlink_path",
    )

    def __init__(
        self,
        sock: SocketLike,
        *,
        max_datagram_size: int,
        connected: bool,
        unlink_path: BoundPath | None = None,
        strategy: Callable[[SocketCore], ReceiveStrategy] | None = None,
        metadata: bool = False,
    ) -> None:
        sock.setblocking(False)
        self.sock: SocketLike = sock
        self.family: int = sock.family
        self.is_unix: bool = sock.family == socket.AF_UNIX
        self.connected: bool = connected
        self.peer: Any = normalize_address(sock.family, sock.getpeername()) if connected else None
        self.max_datagram_size: int = max_datagram_size
        # One byte more than the limit: a longer datagram is detected, never silently cut.
        # (No IP datagram is longer than its family carries, whatever the protocol allows.)
        self.bufsize: int = min(max_datagram_size, FAMILY_LIMITS.get(sock.family, 1 << 30)) + 1
        self.unlink_path: BoundPath | None = unlink_path
        self.closed: bool = False
        #: Parses the control messages the receives keep; ``None``: the socket does not ask
        #: for metadata (``receive_metadata=False``), and no receive keeps any.
        self.metadata: MetadataParser | None = None
        if metadata:
            # (The strategy must be one that keeps control messages: RecvPktinfo, RecvMmsg.)
            if sock.family not in FAMILY_LIMITS:
                raise ValueError("receive metadata needs a UDP (IPv4 or IPv6) socket")
            name = sock.getsockname()
            self.metadata = MetadataParser(sock.family, name[1], short_ipv6=len(name) == 2)
        #: ``receive(max_count, tally) -> list[Received]``, the strategy's, bound once.
        chosen = RecvFrom(self) if strategy is None else strategy(self)
        self.receive: Callable[[int, Tally], list[Received]] = chosen.receive
        #: ``receive_one(tally) -> Received | None``: ``receive(1, tally)``'s datagram, with a
        #: fast path for the portable strategy (a client's every datagram takes it).
        self.receive_one: Callable[[Tally], Received | None] = (
            chosen.receive_one if isinstance(chosen, RecvFrom) else self._receive_one
        )
        #: ``receive_many(max_count, tally)``: what ``recv_packets`` takes its batches with;
        #: the strategy's unless :meth:`use_batch_receive` chose a batched one.
        self.receive_many: Callable[[int, Tally], list[Received]] = chosen.receive
        self._pending: deque[Received] | None = None
        self._pending_lock: threading.Lock | None = None
        self._saved: tuple[Callable[..., Any], ...] = ()

    def _receive_one(self, tally: Tally) -> Received | None:
        batch = self.receive(1, tally)
        return batch[0] if batch else None

    def use_batch_receive(self, strategy: ReceiveStrategy) -> None:
        """Take ``recv_packets`` batches with ``strategy`` (``recvmmsg``, say)."""
        self._use(receive_many=strategy.receive)

    def use_strategy(self, strategy: ReceiveStrategy) -> None:
        """Take every receive with ``strategy`` from now on (a socket with ``UDP_GRO``)."""

        def receive_one(tally: Tally) -> Received | None:
            batch = strategy.receive(1, tally)
            return batch[0] if batch else None

        self._use(strategy.receive, receive_one, strategy.receive)

    def _use(
        self,
        receive: Callable[[int, Tally], list[Received]] | None = None,
        receive_one: Callable[[Tally], Received | None] | None = None,
        receive_many: Callable[[int, Tally], list[Received]] | None = None,
    ) -> None:
        chosen = (receive, receive_one, receive_many)
        with self._lock_pending():
            current = self._saved if self._pending is not None else self._receives()
            merged = tuple(
                new if new is not None else old for new, old in zip(chosen, current, strict=True)
            )
            if self._pending is not None:
                self._saved = merged  # in force once the pending datagrams are gone
            else:
                self.receive, self.receive_one, self.receive_many = merged  # type: ignore[assignment]

    def _receives(self) -> tuple[Callable[..., Any], ...]:
        return (self.receive, self.receive_one, self.receive_many)

    def _lock_pending(self) -> threading.Lock:
        # The blocking endpoints receive from several threads: the pending queue and the swap
        # of the receive functions happen under one lock (made once, the first time).
        lock = self._pending_lock
        if lock is None:
            lock = self._pending_lock = threading.Lock()
        return lock

    # -- datagrams taken but not delivered --------------------------------------------------------

    def push_back(self, items: list[Received]) -> None:
        """Put datagrams taken from the kernel but not delivered in front of the next receive.

        They were counted when they were taken and are not counted again. Until they are gone,
        every receive takes them first (and only them), in order.
        """
        if not items:
            return
        with self._lock_pending():
            if self._pending is None:
                self._pending = deque(items)
                self._saved = self._receives()
                self.receive = self.receive_many = self._take_pending
                self.receive_one = self._take_one_pending
            else:
                self._pending.extendleft(reversed(items))

    def _take_pending(self, max_count: int, tally: Tally) -> list[Received]:
        with self._lock_pending():
            pending = self._pending
            if pending is None:  # another thread took the last one meanwhile: try again
                return []
            batch = [pending.popleft() for _ in range(min(max_count, len(pending)))]
            if not pending:
                self._pending = None
                self.receive, self.receive_one, self.receive_many = self._saved
                self._saved = ()
            return batch

    def _take_one_pending(self, tally: Tally) -> Received | None:
        batch = self._take_pending(1, tally)
        return batch[0] if batch else None

    # -- the one translation of OS errors -----------------------------------------------------

    def receive_failed(self, exc: OSError, tally: Tally) -> None:
        """Count a receive error; raise it (translated) unless the receive may go on."""
        if self.closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno not in ICMP_ERRNOS:
            raise exc
        if self.connected:
            tally.icmp_errors += 1
            raise exc
        # Unconnected: IP_RECVERR queued the same error; it is counted from the queue.
        if not self.drain_error_queue(tally):
            tally.icmp_errors += 1

    def send_failed(self, exc: OSError, size: int, tally: Tally, *, retried: bool) -> None:
        """Count a send error; return if one more attempt is worth it, else raise it."""
        if self.closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno == errno.EMSGSIZE:
            tally.send_errors += 1
            limit = FAMILY_LIMITS.get(self.family, size)
            raise DatagramTooLargeError(
                size,
                limit if size > limit else size - 1,
                f"the kernel refused a datagram of {size} bytes (EMSGSIZE)",
            ) from exc
        if exc.errno not in ICMP_ERRNOS:
            tally.send_errors += 1
            raise exc
        if self.connected or retried:
            tally.icmp_errors += 1
            raise exc
        # Unconnected: a pending ICMP error about an earlier send (to any peer) failed this
        # one. It is on the error queue too, counted from there; then send once more.
        if not self.drain_error_queue(tally):
            tally.icmp_errors += 1

    # -- system calls ---------------------------------------------------------------------------

    def send(
        self, tally: Tally, data: bytes, address: Any, source: ReplySource | None = None
    ) -> bool:
        """Send one datagram if the kernel takes it now (``False`` if it would block).

        ``address`` is ignored on a connected socket; ``source`` (from a receive) makes the
        datagram leave from the address that datagram was sent to.
        """
        sock = self.sock
        retried = False
        while True:
            try:
                if self.connected:
                    sock.send(data)
                elif source is None:
                    sock.sendto(data, address)
                else:
                    sock.sendmsg((data,), source, 0, address)
            except BlockingIOError:
                return False
            except OSError as exc:
                self.send_failed(exc, len(data), tally, retried=retried)
                retried = True
                continue
            tally.datagrams_sent += 1
            tally.bytes_sent += len(data)
            return True

    def drain_error_queue(self, tally: Tally) -> int:
        """Count queued ICMP errors (``MSG_ERRQUEUE``) into ``tally``; how many, bounded."""
        if not IS_LINUX or self.closed:
            return 0
        sock = self.sock
        drained = 0
        for _ in range(MAX_BATCH):
            try:
                sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                break
            drained += 1
        tally.icmp_errors += drained
        return drained

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (0 where the platform cannot say)."""
        return 0 if self.closed else read_kernel_drops(self.sock)

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes the kernel granted (0, 0 once closed)."""
        if self.closed:
            return 0, 0
        try:
            return (
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            )
        except OSError:  # closed by another thread meanwhile
            return 0, 0

    def release(self, tally: Tally) -> None:
        """Count what still waits in the receive buffer, close the socket, remove its file."""
        self.closed = True
        with contextlib.suppress(OSError):  # the socket is unusable already: nothing to count
            tally.unread_at_close += drain_unread(self.sock)
        self.sock.close()
        if self.unlink_path is not None:
            self.unlink_path.remove()


def receive_batch(
    core: SocketCore, take: Callable[[int], Received], max_count: int, tally: Tally
) -> list[Received]:
    """Take up to ``max_count`` datagrams with ``take`` (one system call each), counting them.

    The loop every one-datagram-per-call strategy shares: ``take(bufsize)`` returns one
    datagram or raises ``BlockingIOError`` when none waits.
    """
    bufsize = core.bufsize
    limit = core.max_datagram_size
    batch: list[Received] = []
    # Oversize datagrams and drained errors count towards the bound: junk cannot hold the
    # event loop. An empty result may then come back while more waits.
    for _ in range(max_count if max_count > MAX_BATCH else MAX_BATCH):
        try:
            item = take(bufsize)
        except BlockingIOError:
            break
        except OSError as exc:
            core.receive_failed(exc, tally)
            continue
        size = len(item[0])
        if size > limit:
            tally.oversize += 1
            continue
        tally.datagrams_received += 1
        tally.bytes_received += size
        batch.append(item)
        if len(batch) >= max_count:
            break
    return batch


class RecvFrom:
    """The portable receive: one ``recv``/``recvfrom`` per datagram."""

    __slots__ = ("_core", "_take")

    def __init__(self, core: SocketCore) -> None:
        self._core = core
        sock = core.sock
        peer = core.peer

        def take_connected(bufsize: int) -> Received:
            return sock.recv(bufsize), peer, None, None

        def take_unix(bufsize: int) -> Received:
            data, address = sock.recvfrom(bufsize)
            return data, normalize_address(socket.AF_UNIX, address), None, None

        def take_ip(bufsize: int) -> Received:
            data, address = sock.recvfrom(bufsize)
            return data, address, None, None

        self._take = take_connected if core.connected else take_unix if core.is_unix else take_ip

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        return receive_batch(self._core, self._take, max_count, tally)

    def receive_one(self, tally: Tally) -> Received | None:
        """One waiting datagram, or ``None``: ``receive(1)`` with its common case first."""
        core = self._core
        try:
            item = self._take(core.bufsize)
        except BlockingIOError:
            return None
        except OSError as exc:
            core.receive_failed(exc, tally)  # raises, or it was a counted ICMP error
            item = None
        if item is None or len(item[0]) > core.max_datagram_size:
            if item is not None:
                tally.oversize += 1
            batch = receive_batch(core, self._take, 1, tally)  # skip junk, bounded
            return batch[0] if batch else None
        tally.datagrams_received += 1
        tally.bytes_received += len(item[0])
        return item
