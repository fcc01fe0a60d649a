"""The socket side of the blocking endpoints: a non-blocking socket, ``poll()`` and a waker.

Every operation tries the system call first and waits in ``poll()`` only when the kernel says
it would block. The wait also watches a *waker* (an eventfd, or a pipe where there is none)
that :meth:`ThreadedSocketIO.close` makes readable, so a thread blocked in a receive or a send
wakes at once when another thread closes the endpoint, instead of after a polling interval.

Sending and receiving share no lock: each direction has its own, held only to update its
counters, never across a system call or a wait. The number of threads inside a socket call is
counted per direction so that ``close()`` releases the file descriptor only after they have
left: closing it under them could let a new file reuse the number while they still use it.

OS errors are translated here exactly as :class:`~anydgram._socket_io.SocketIO` translates them
for the async endpoints (the same exceptions, the same counters).
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import anyio

from ._batches import BatchSender, choose_batch_receive
from ._io_core import Received, SocketCore, Tally
from ._metadata import MetadataParser
from ._pktinfo import RecvPktinfo
from ._socket_io import UNIX_BACKOFF_FIRST, UNIX_BACKOFF_MAX
from ._socket_os import IS_LINUX, BoundPath
from ._sync_wait import Waker

__all__ = ("ThreadedSocketIO",)

_BUSY_ACTION: Final = "waiting for a request() reply on"

#: The longest single ``poll()`` wait, in milliseconds (a day); longer waits poll again.
_MAX_POLL_MS: Final = 86_400_000


class _Busy(Protocol):
    """Something whose ``pending`` count refuses other receivers while it is non-zero."""

    pending: int


class _Side:
    """One direction's lock, the threads inside it, and its counters."""

    __slots__ = ("left", "lock", "tally", "threads", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        #: How many of ``users`` each thread (by ident) is: a signal handler's ``close()`` runs
        #: on a thread that may itself be inside a call, and must not wait for itself.
        self.threads: dict[int, int] = {}
        #: Notified (once the endpoint is closed) whenever a user leaves.
        self.left = threading.Condition(self.lock)
        self.tally = Tally()


def _make_core(
    sock: socket.socket,
    max_datagram_size: int,
    connected: bool,
    unlink_path: BoundPath | None,
    metadata: bool,
) -> SocketCore:
    return SocketCore(
        sock,
        max_datagram_size=max_datagram_size,
        connected=connected,
        unlink_path=unlink_path,
        strategy=RecvPktinfo.without_reply_sources if metadata else None,  # keeps control data
        metadata=metadata,
    )


class ThreadedSocketIO:
    """Blocking datagram I/O on one non-blocking socket, safe to share between threads.

    The system calls and their errors are the core's; this adds ``poll()``, the waker and the
    accounting of the threads inside each direction.
    """

    __slots__ = (
        "_batch_chosen",
        "_batch_lock",
        "_close_lock",
        "_closed",
        "_core",
        "_drain_on_wake",
        "_fd",
        "_idle_sender",
        "_recv",
        "_release_pending",
        "_released",
        "_send",
        "_unread",
        "_waker",
        "metadata",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_datagram_size: int,
        connected: bool,
        unlink_path: BoundPath | None = None,
        metadata: bool = False,
    ) -> None:
        self._core = _make_core(sock, max_datagram_size, connected, unlink_path, metadata)
        #: The socket's metadata parser; ``None`` unless it receives metadata.
        self.metadata: MetadataParser | None = self._core.metadata
        self.sock = sock
        self._fd = sock.fileno()
        # With IP_RECVERR, a queued ICMP error keeps poll() reporting an unconnected IP socket
        # readable until the error queue is read.
        self._drain_on_wake = IS_LINUX and not connected and sock.family != socket.AF_UNIX
        self._waker = Waker()
        self._closed = False
        self._released = False
        self._release_pending = False
        self._unread = Tally()  # unread_at_close, counted by the release
        self._close_lock = threading.Lock()
        self._recv = _Side()
        self._send = _Side()
        #: ``recv_packets``' batch receive is chosen at its first use; the batched strategies'
        #: buffers are shared, so one thread at a time receives with them (``_batch_lock``).
        self._batch_lock = threading.Lock()
        self._batch_chosen = False
        #: ``send_packets``' sender when no thread is using it.
        self._idle_sender: BatchSender | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def max_datagram_size(self) -> int:
        """The longest datagram delivered; longer ones are counted in ``oversize``."""
        return self._core.max_datagram_size

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` for an unconnected socket."""
        return self._core.peer

    def counters(self) -> dict[str, int]:
        """The I/O counters, under the names :class:`~anydgram.EndpointStatistics` uses."""
        total = Tally()
        for tally in (self._recv.tally, self._send.tally, self._unread):
            total.add(tally)
        return total.as_dict()

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (0 where the platform cannot say)."""
        return 0 if self._closed else self._core.kernel_drops()

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes the kernel granted, in bytes (0 once closed)."""
        return (0, 0) if self._closed else self._core.buffer_sizes()

    def _enter(self, side: _Side) -> None:
        with side.lock:
            if self._closed:
                raise anyio.ClosedResourceError
            side.users += 1
            ident = threading.get_ident()
            side.threads[ident] = side.threads.get(ident, 0) + 1

    def _leave_locked(self, side: _Side) -> bool:
        """Count the current thread out of ``side`` (its lock held); whether to release now.

        ``True`` when a :meth:`close` left the release to the last user and none is left on
        this side (:meth:`_release_deferred` checks the other).
        """
        side.users -= 1
        ident = threading.get_ident()
        count = side.threads[ident] - 1
        if count:
            side.threads[ident] = count
        else:
            del side.threads[ident]
        if not self._closed:
            return False
        side.left.notify_all()
        return self._release_pending and not side.users

    def _leave(self, side: _Side, tally: Tally) -> None:
        """Add one call's counts to ``side`` and count the thread out (releasing if last)."""
        with side.lock:
            # The counters a receive or a send can change, by hand: Tally.add, once per
            # datagram, would cost more than the system call.
            total = side.tally
            total.datagrams_received += tally.datagrams_received
            total.bytes_received += tally.bytes_received
            total.oversize += tally.oversize
            total.datagrams_sent += tally.datagrams_sent
            total.bytes_sent += tally.bytes_sent
            total.send_errors += tally.send_errors
            total.icmp_errors += tally.icmp_errors
            total.metadata_truncated += tally.metadata_truncated
            release = self._leave_locked(side)
        if release:
            self._release_deferred()

    def _wait(self, events: int, deadline: float | None) -> None:
        """Wait until the socket reports ``events``, the endpoint closes or ``deadline`` passes.

        Raises:
            TimeoutError: ``deadline`` has passed (checked before waiting).
            anyio.ClosedResourceError: The endpoint was closed.
        """
        if deadline is None:
            timeout_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            # Rounded up: a wait that ends just before the deadline would spin once more.
            # Capped (poll() takes a C int): a wait that ends early just loops once more.
            timeout_ms = min(math.ceil(remaining * 1000), _MAX_POLL_MS)
        poller = select.poll()
        poller.register(self._fd, events)
        poller.register(self._waker.fd, select.POLLIN)
        poller.poll(timeout_ms)
        if self._closed:
            raise anyio.ClosedResourceError

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; raise :exc:`anyio.ClosedResourceError` at once if closed meanwhile."""
        poller = select.poll()
        poller.register(self._waker.fd, select.POLLIN)
        poller.poll(math.ceil(seconds * 1000))
        if self._closed:
            raise anyio.ClosedResourceError

    # -- receiving ---------------------------------------------------------------------------

    def receive_one(self, deadline: float | None, busy: _Busy | None = None) -> tuple[bytes, Any]:
        """Wait for one datagram of at most ``max_datagram_size`` bytes; ``(data, sender)``.

        ``busy``, when given, is checked before each read: while its ``pending`` count is
        non-zero the receive is refused, because ``request()`` calls read for themselves.

        Raises:
            TimeoutError: ``deadline`` passed with nothing received; nothing was taken.
            anyio.BusyResourceError: ``busy.pending`` is non-zero.
            anyio.ClosedResourceError: The endpoint was closed, before or during the wait.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket, after an
                ICMP error for an earlier send; anything else the kernel reports.
        """
        side = self._recv
        self._enter(side)
        tally = Tally()
        try:
            core = self._core
            woke = False
            while True:
                if busy is not None and busy.pending:
                    raise anyio.BusyResourceError(_BUSY_ACTION)
                if self._batch_chosen:  # batched buffers (GRO) may serve this receive too
                    with self._batch_lock:
                        item = core.receive_one(tally)
                else:
                    item = core.receive_one(tally)
                if item is not None:
                    return item[0], item[1]
                if woke and self._drain_on_wake:
                    self._core.drain_error_queue(tally)
                self._wait(select.POLLIN, deadline)
                woke = True
        finally:
            self._leave(side, tally)

    def receive_many(
        self, max_count: int, deadline: float | None, busy: _Busy | None = None
    ) -> list[Received]:
        """Wait for a datagram, then take every one waiting up to ``max_count``.

        Batched system calls where the socket has them (chosen at the first call, as for the
        async sockets). Errors are those of :meth:`receive_one`.
        """
        side = self._recv
        self._enter(side)
        tally = Tally()
        core = self._core
        try:
            if not self._batch_chosen:
                with self._batch_lock:
                    if not self._batch_chosen:
                        choose_batch_receive(core)
                        self._batch_chosen = True
            woke = False
            while True:
                if busy is not None and busy.pending:
                    raise anyio.BusyResourceError(_BUSY_ACTION)
                batch = self._take(core.receive_many, max_count, tally)
                if batch:
                    while len(batch) < max_count:
                        more = self._take(core.receive_many, max_count - len(batch), tally)
                        if not more:
                            break
                        batch += more
                    return batch
                if woke and self._drain_on_wake:
                    core.drain_error_queue(tally)
                self._wait(select.POLLIN, deadline)
                woke = True
        finally:
            self._leave(side, tally)

    def _take(
        self, receive: Callable[[int, Tally], list[Received]], max_count: int, tally: Tally
    ) -> list[Received]:
        # The batched strategies' buffers are shared: one thread at a time.
        with self._batch_lock:
            return receive(max_count, tally)

    def push_back(self, items: list[Received]) -> None:
        """Put received datagrams back in front of the next receive (counted already)."""
        self._core.push_back(items)

    def discard_waiting(self, limit: int) -> int:
        """Take and discard up to ``limit`` datagrams already waiting; how many were taken.

        They count as received (they were), so the caller counts them where it drops them.
        Errors are those of :meth:`receive_one`.
        """
        side = self._recv
        self._enter(side)
        tally = Tally()
        try:
            return len(self._core.receive(limit, tally))
        finally:
            self._leave(side, tally)

    # -- sending -----------------------------------------------------------------------------

    def send(self, data: bytes, address: Any, deadline: float | None) -> None:
        """Send one datagram, waiting while the kernel's send buffer is full.

        ``address`` is ignored on a connected socket.

        Raises:
            TimeoutError: ``deadline`` passed before the kernel took the datagram; nothing was
                sent.
            DatagramTooLargeError: The kernel refused the size (``EMSGSIZE``).
            anyio.ClosedResourceError: The endpoint was closed, before or during the wait.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket; anything
                else the kernel reports.
        """
        side = self._send
        self._enter(side)
        tally = Tally()
        core = self._core
        try:
            # Unconnected Unix: poll() reports the socket writable (its own buffer has room)
            # while the peer's queue is full, so there is nothing to wait on but time.
            delay = UNIX_BACKOFF_FIRST
            woke_writable = False
            while not core.send(tally, data, address):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("timed out")
                if core.is_unix and not core.connected and woke_writable:
                    self._sleep(delay if deadline is None else min(delay, deadline - now))
                    delay = min(delay * 2, UNIX_BACKOFF_MAX)
                else:
                    self._wait(select.POLLOUT, deadline)
                    woke_writable = True
        finally:
            self._leave(side, tally)

    def send_many(
        self, datagrams: Sequence[bytes], addresses: Sequence[Any] | None, deadline: float | None
    ) -> None:
        """Send checked datagrams in as few system calls as the socket allows.

        As :meth:`anydgram._socket_io.SocketIO.send_many`, waiting in ``poll()``.

        Raises:
            TimeoutError: ``deadline`` passed before the kernel took every datagram; those it
                took are counted, the rest were not sent.
            anyio.ClosedResourceError: The endpoint was closed, before or during the wait.
            OSError: The kernel refused every datagram (the first refusal; all counted).
        """
        side = self._send
        self._enter(side)
        tally = Tally()
        core = self._core
        with side.lock:
            sender, self._idle_sender = self._idle_sender, None
        if sender is None:
            sender = BatchSender(core)
        sender.reset()
        try:
            count = len(datagrams)
            delay = UNIX_BACKOFF_FIRST
            woke_writable = False
            sent = sender.send(tally, datagrams, addresses, 0)
            while sent < count:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("timed out")
                if core.is_unix and not core.connected and woke_writable:
                    self._sleep(delay if deadline is None else min(delay, deadline - now))
                    delay = min(delay * 2, UNIX_BACKOFF_MAX)
                else:
                    self._wait(select.POLLOUT, deadline)
                    woke_writable = True
                sent = sender.send(tally, datagrams, addresses, sent)
        finally:
            self._leave(side, tally)
            with side.lock:
                self._idle_sender = sender
        if count and sender.failed == count and sender.first_error is not None:
            raise sender.first_error

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; threads blocked on it get :exc:`anyio.ClosedResourceError` at once.

        Returns once every other thread has left its socket call and the socket is closed, so
        its port or path can be bound again. Closing twice (or from two threads) is fine.

        Called on a thread that is itself inside a call on this socket (a signal handler that
        interrupted a blocked receive, say), it wakes that call instead of waiting for it:
        the call raises :exc:`anyio.ClosedResourceError` when the handler returns, and the
        socket is closed as that call leaves.
        """
        with self._close_lock:
            if self._released:
                return
            self._closed = True
            self._waker.wake()
            ident = threading.get_ident()
            mine = False
            for side in (self._recv, self._send):
                with side.lock:
                    own = side.threads.get(ident, 0)
                    # Other threads are awake already and leave without waiting again.
                    while side.users > own:
                        side.left.wait()
                    mine = mine or own > 0
            if mine:
                self._release_pending = True  # the last user to leave releases
                return
            self._release()

    def _release_deferred(self) -> None:
        """Release the socket for a :meth:`close` that could not, once no user is left."""
        with self._close_lock:
            if self._released or not self._release_pending:
                return
            for side in (self._recv, self._send):
                with side.lock:
                    if side.users:
                        return  # that user releases when it leaves
            self._release()

    def _release(self) -> None:
        """Close the file descriptors and remove the socket file (``_close_lock`` held)."""
        self._released = True
        try:
            self._core.release(self._unread)
        finally:
            self._waker.close()
