"""Sockets driven by anyio: the async endpoints' and the server's waiting style over the core.

Every operation tries the system call first (through :class:`~anydgram._io_core.SocketCore`)
and waits with anyio's ``wait_readable``/``wait_writable`` only when the kernel says it would
block. Nothing is queued in user space: datagrams not read yet wait in the kernel buffer,
where the kernel counts what it drops. The memory network plugs in its own waits.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel

from ._backend import Primitives, current_primitives, running_asyncio_loop
from ._batches import BatchSender, choose_batch_receive
from ._io_core import (
    MAX_BATCH,
    Received,
    ReceiveStrategy,
    ReplySource,
    SocketCore,
    SocketLike,
    Tally,
)
from ._loop_waits import FdWaiter, LoopReadiness, keeps_readers
from ._pktinfo import RecvPktinfo
from ._socket_os import BoundPath, normalize_address

if TYPE_CHECKING:
    from ._mmsg_send import ReplyBatch

__all__ = (
    "FAIRNESS_INTERVAL",
    "MAX_BATCH",
    "SEND_FAIRNESS_INTERVAL",
    "SocketIO",
    "Waits",
)

#: Operations that found the kernel ready, between two full checkpoints: a task that always
#: finds data ready still lets others run. The checkpoint comes before the system call, so a
#: cancellation there loses nothing.
FAIRNESS_INTERVAL: Final = 16
#: The same rule for a server's replies, counted by the server per read batch (its reading
#: task passes checkpoints of its own): larger than a batch, so one reply per datagram never
#: reaches it.
SEND_FAIRNESS_INTERVAL: Final = 128

#: Backoff for unconnected Unix sends to a full peer: poll() reports the socket writable (its own
#: buffer has room) while the peer's queue is full, so there is nothing to wait on but time.
UNIX_BACKOFF_FIRST: Final = 0.0005
UNIX_BACKOFF_MAX: Final = 0.05


class _SendNowait(Protocol):
    def __call__(self, data: bytes, address: Any, source: ReplySource | None = None, /) -> bool:
        """Send one datagram now, or return ``False``."""
        ...


class Waits(Protocol):
    """How a socket without a file descriptor (the memory network's) is waited on."""

    async def wait_readable(self) -> None:
        """Return once a datagram may be ready (or the socket closed)."""
        ...

    async def wait_writable(self) -> None:
        """Return once a send may succeed (or the socket closed)."""
        ...

    def notify_closing(self) -> None:
        """Wake every waiter: the socket is closing."""
        ...


class SocketIO(Tally):
    """Datagram I/O on one non-blocking socket for async code, with its counters.

    ``strategy`` picks how batches are received (``recvfrom`` by default; ``recvmsg`` with
    ``metadata``, which keeps each datagram's control messages); ``waits`` replaces anyio's
    descriptor waits for a socket that has none.
    """

    #: ``send_nowait(data, address, source=None) -> bool``: send one datagram if the kernel
    #: takes it now, ``False`` if it would block; ``address`` is ignored on a connected socket,
    #: ``source`` (from a receive) makes it leave from the address that datagram was sent to.
    #: It is the core's send, bound to this socket's counters (no call level of its own: it
    #: runs once per reply). Raises ``DatagramTooLargeError`` (``EMSGSIZE``),
    #: ``anyio.ClosedResourceError`` once closed, and what else the kernel reports (counted).
    send_nowait: _SendNowait

    __slots__ = (
        "_batch_receive_chosen",
        "_batch_sender",
        "_core",
        "_loop_waits",
        "_primitives",
        "_ready_ops",
        "_recv_waiter",
        "_send_waiter",
        "_wait_readable",
        "_wait_writable",
        "_waits",
        "queueing",
        "reply_batch",
        "send_nowait",
        "sock",
    )

    def __init__(
        self,
        sock: SocketLike,
        *,
        max_datagram_size: int,
        connected: bool = False,
        unlink_path: BoundPath | None = None,
        strategy: Callable[[SocketCore], ReceiveStrategy] | None = None,
        waits: Waits | None = None,
        metadata: bool = False,
    ) -> None:
        super().__init__()
        if metadata and strategy is None:
            strategy = RecvPktinfo.without_reply_sources  # recvmsg, keeping control messages
        core = self._core = SocketCore(
            sock,
            max_datagram_size=max_datagram_size,
            connected=connected,
            unlink_path=unlink_path,
            strategy=strategy,
            metadata=metadata,
        )
        self.sock: SocketLike = sock
        self.send_nowait = functools.partial(core.send, self)
        self._waits = waits
        self._ready_ops = 0
        self._primitives: Primitives | None = None
        self._wait_readable: Callable[[], Awaitable[None]] | None = None
        self._wait_writable: Callable[[], Awaitable[None]] | None = None
        self._recv_waiter = FdWaiter()
        self._send_waiter = FdWaiter()
        self._loop_waits: LoopReadiness | None = None
        #: Replies queued for one ``sendmmsg`` (server sockets that have one; see
        #: ``_mmsg_send.py``), and the same batch while replies may be queued in it (the
        #: handler pool sets it while the reading task runs a batch's handlers), else None.
        self.reply_batch: ReplyBatch | None = None
        self.queueing: ReplyBatch | None = None
        #: ``send_packets``' sender, made (with the ``recv_packets`` strategy) at first use.
        self._batch_sender: BatchSender | None = None
        self._batch_receive_chosen = False

    def __repr__(self) -> str:
        return f"<SocketIO {self.sock!r}>"

    # -- state -----------------------------------------------------------------------------

    @property
    def core(self) -> SocketCore:
        """The socket's core (its system calls)."""
        return self._core

    @property
    def closed(self) -> bool:
        """Whether the socket has been closed."""
        return self._core.closed

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` for an unconnected socket."""
        return self._core.peer

    @property
    def family(self) -> int:
        """The socket's address family."""
        return self._core.family

    @property
    def local_address(self) -> Any:
        """The address the socket is bound to (``OSError`` once closed)."""
        return normalize_address(self._core.family, self.sock.getsockname())

    @property
    def max_datagram_size(self) -> int:
        """The longest datagram delivered; longer ones are counted in ``oversize``."""
        return self._core.max_datagram_size

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (0 where the platform cannot say)."""
        return self._core.kernel_drops()

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes the kernel granted, in bytes."""
        return self._core.buffer_sizes()

    def check_open(self) -> None:
        """Raise :exc:`anyio.ClosedResourceError` once closed."""
        if self._core.closed:
            raise anyio.ClosedResourceError

    @property
    def primitives(self) -> Primitives:
        """The running backend's anyio primitives, looked up once per socket."""
        primitives = self._primitives
        if primitives is None:
            primitives = self._primitives = current_primitives()
        return primitives

    def _bind_waits(self) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
        """Pick the waits once, in the event loop: the socket's own, or anyio's on its fd."""
        waits = self._waits
        readable: Callable[[], Awaitable[None]]
        writable: Callable[[], Awaitable[None]]
        if waits is not None:
            readable, writable = waits.wait_readable, waits.wait_writable
        else:
            primitives = self.primitives
            writable = functools.partial(primitives.wait_writable, self.sock)
            loop = running_asyncio_loop()
            if loop is not None and keeps_readers(loop):
                # asyncio: the reader stays registered between waits (see _loop_waits.py).
                self._loop_waits = LoopReadiness(loop, self.sock, primitives.wait_writable)
                readable = self._loop_waits.wait_readable
            else:
                readable = functools.partial(primitives.wait_readable, self.sock)
        self._wait_readable, self._wait_writable = readable, writable
        return readable, writable

    async def fairness_checkpoint(self) -> None:
        """Pass a full checkpoint every ``FAIRNESS_INTERVAL`` calls that did not wait."""
        self._ready_ops += 1
        if self._ready_ops >= FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()

    # -- receiving ---------------------------------------------------------------------------

    def receive_nowait(self, max_count: int) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none).

        Raises:
            anyio.ClosedResourceError: The socket was closed.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket, after an
                ICMP error for an earlier send; anything else the kernel reports.
        """
        self.check_open()
        return self._core.receive(max_count, self)

    async def receive(self, max_count: int) -> list[Received]:
        """Wait until a datagram is ready, then take up to ``max_count`` of them.

        A cancellation happens before a datagram is taken from the kernel or not at all, so a
        cancelled receive loses nothing. Raises as :meth:`receive_nowait`.
        """
        self._ready_ops += 1
        if self._ready_ops >= FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()
        self.check_open()
        receive = self._core.receive
        batch = receive(max_count, self)
        woke = False
        while not batch:
            await self.wait_readable(after_wakeup=woke)
            woke = True
            receive = self._core.receive
            batch = receive(max_count, self)
        return batch

    async def receive_many(self, max_count: int) -> list[Received]:
        """:meth:`receive` for ``recv_packets``: batched system calls where the socket has them.

        The batch strategy is chosen at the first call (see
        :func:`~anydgram._batches.choose_batch_receive`: ``UDP_GRO`` or ``recvmmsg`` on Linux
        IP sockets, unless ``ANYDGRAM_BATCHED_SYSCALLS=0``; the socket's own receive else).
        """
        if not self._batch_receive_chosen:
            self._batch_receive_chosen = True
            choose_batch_receive(self._core, None if self._waits is None else False)
        await self.fairness_checkpoint()
        core = self._core
        if core.closed:
            raise anyio.ClosedResourceError
        batch = core.receive_many(max_count, self)
        woke = False
        while not batch:
            await self.wait_readable(after_wakeup=woke)
            woke = True
            batch = core.receive_many(max_count, self)
        # One system call takes at most MAX_BATCH: the rest of what is waiting, up to
        # max_count, without waiting again.
        while len(batch) < max_count:
            more = core.receive_many(max_count - len(batch), self)
            if not more:
                break
            batch += more
        return batch

    async def receive_one(self) -> tuple[bytes, Any]:
        """Wait for one datagram; ``(payload, sender)``. Cancellation as :meth:`receive`."""
        # receive(1), inlined: a client's every datagram would otherwise cost a coroutine more.
        self._ready_ops += 1
        if self._ready_ops >= FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()
        core = self._core
        if core.closed:
            raise anyio.ClosedResourceError
        item = core.receive_one(self)
        woke = False
        while item is None:
            await self.wait_readable(after_wakeup=woke)
            woke = True
            item = core.receive_one(self)
        return item[0], item[1]

    def push_back(self, items: list[Received]) -> None:
        """Put received datagrams back in front of the next receive (counted already)."""
        self._core.push_back(items)

    async def wait_readable(self, *, after_wakeup: bool = False) -> None:
        """Wait until the socket is readable (or has an error to report).

        ``after_wakeup``: the previous wait returned but nothing was there. With
        ``IP_RECVERR`` a queued ICMP error keeps poll() reporting the socket readable until
        the error queue is read, so it is drained first and the reader does not spin.
        """
        self._ready_ops = 0
        self.check_open()
        core = self._core
        if after_wakeup and not core.connected and not core.is_unix:
            core.drain_error_queue(self)
        wait = self._wait_readable
        if wait is None:
            wait = self._bind_waits()[0]
        await self._recv_waiter.wait(self, wait)

    # -- sending -----------------------------------------------------------------------------

    async def send(self, data: bytes, address: Any, source: ReplySource | None = None) -> None:
        """Send one datagram, waiting while the kernel's send buffer is full.

        A cancellation leaves the datagram either sent entirely or not at all. Raises as
        :meth:`send_nowait`.
        """
        self._ready_ops += 1
        if self._ready_ops >= FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()
        if self.send_nowait(data, address, source):
            return
        core = self._core
        delay = UNIX_BACKOFF_FIRST
        woke_writable = False
        while True:
            if core.is_unix and not core.connected and woke_writable:
                # Writable, yet the peer's queue is full: nothing to wait on but time.
                self.check_open()
                await anyio.sleep(delay)
                delay = min(delay * 2, UNIX_BACKOFF_MAX)
            else:
                await self.wait_writable()
                woke_writable = True
            if self.send_nowait(data, address, source):
                return

    async def send_many(self, datagrams: Sequence[bytes], addresses: Sequence[Any] | None) -> None:
        """Send checked datagrams in as few system calls as the socket allows.

        ``addresses`` gives each datagram's destination (``None`` on a connected socket).
        Waits while the kernel's buffer is full. A cancellation leaves each datagram sent once
        or not at all: those sent are counted, the rest are forgotten. A datagram the kernel
        refuses is counted and the others still go.

        Raises:
            anyio.ClosedResourceError: The socket was closed.
            OSError: The kernel refused every datagram (the first refusal; all counted).
            DatagramTooLargeError: The same, for a size the kernel refused.
        """
        sender = self._batch_sender
        if sender is None:
            batched = None if self._waits is None else False
            sender = self._batch_sender = BatchSender(self._core, batched=batched)
        if sender.busy:  # another task's batch is waiting for room: this one gets its own
            sender = BatchSender(self._core, batched=None if self._waits is None else False)
        await self.fairness_checkpoint()
        sender.busy = True
        sender.reset()
        try:
            count = len(datagrams)
            core = self._core
            delay = UNIX_BACKOFF_FIRST
            woke_writable = False
            sent = sender.send(self, datagrams, addresses, 0)
            while sent < count:
                if core.is_unix and not core.connected and woke_writable:
                    self.check_open()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, UNIX_BACKOFF_MAX)
                else:
                    await self.wait_writable()
                    woke_writable = True
                sent = sender.send(self, datagrams, addresses, sent)
        finally:
            sender.busy = False
        if count and sender.failed == count and sender.first_error is not None:
            raise sender.first_error

    def queue_reply(self, data: bytes, address: Any) -> bool:
        """Queue a reply for the next flush, if :attr:`queueing`; ``False``: send it now."""
        batch = self.queueing
        return batch is not None and batch.put(data, address)

    def flush_replies_nowait(self) -> bool:
        """Send the queued replies the kernel takes now; ``False`` if its buffer filled."""
        batch = self.reply_batch
        return batch is None or batch.count == 0 or batch.flush()

    async def flush_replies(self) -> None:
        """Send every queued reply, waiting while the kernel's send buffer is full."""
        batch = self.reply_batch
        if batch is None or batch.count == 0:
            return
        while not batch.flush():
            await self.wait_writable()

    def _flush_before_close(self) -> None:
        batch = self.reply_batch
        if batch is not None and batch.count:
            self.queueing = None
            if not batch.flush():
                tally: Tally = self
                tally.send_errors += batch.discard()  # the kernel's buffer stayed full

    async def wait_writable(self) -> None:
        """Wait until the socket's send buffer has room (``ClosedResourceError`` if closed)."""
        self._ready_ops = 0
        self.check_open()
        wait = self._wait_writable
        if wait is None:
            wait = self._bind_waits()[1]
        await self._send_waiter.wait(self, wait)

    # -- closing -----------------------------------------------------------------------------

    def close_now(self) -> None:
        """Close the socket without waking waiters (for use outside a running event loop)."""
        if not self._core.closed:
            self._flush_before_close()
            if self._loop_waits is not None:
                self._loop_waits.notify_closing()
            self._core.release(self)

    async def aclose(self) -> None:
        """Close the socket; tasks waiting on it get :exc:`anyio.ClosedResourceError` at once.

        When this returns the socket is closed, so its port or path can be bound again.
        """
        if not self._core.closed:
            self._flush_before_close()
            self._core.closed = True
            try:
                if self._waits is not None:
                    self._waits.notify_closing()
                else:
                    if self._loop_waits is not None:
                        self._loop_waits.notify_closing()
                    anyio.notify_closing(self.sock)  # writers waiting through anyio
            finally:
                self._core.release(self)
        await anyio.lowlevel.cancel_shielded_checkpoint()
