"""Batches for users: ``send_packets`` and ``recv_packets`` in the core, without waiting.

:class:`BatchSender` hands a user's checked datagrams to the kernel in as few system calls as
the socket allows, and says where it stopped when the kernel's buffer fills; the async and the
blocking sockets wait their own ways and call it again from there. On Linux:

- a run of equal-size datagrams to one peer (the last may be shorter) leaves in one
  ``sendmsg`` with a ``UDP_SEGMENT`` control message (UDP GSO): the kernel cuts it into the
  datagrams again, so a peer sees exactly what separate sends would have given it;
- everything else goes through the server's ``sendmmsg`` slots (:mod:`anydgram._mmsg_send`),
  one system call for up to 64 datagrams;
- the portable path, one send per datagram, is kept for everything else (Unix sockets that
  are not connected, other platforms, ``ANYDGRAM_BATCHED_SYSCALLS=0``).

Per-datagram errors are counted as the one-by-one sends count them, and the batch goes on.
"""

from __future__ import annotations

import contextlib
import errno
import struct
from collections.abc import Sequence
from typing import Any, Final

import anyio

from ._gro import SOL_UDP, UDP_GRO, RecvGro, enable_gro
from ._io_core import FAMILY_LIMITS, MAX_BATCH, SocketCore, Tally
from ._mmsg import RecvMmsg, enabled_by_environment
from ._mmsg import available as recvmmsg_available
from ._mmsg_send import ReplyBatch
from ._mmsg_send import available as sendmmsg_available
from ._socket_os import ICMP_ERRNOS

__all__ = (
    "MAX_GSO_SEGMENTS",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_SEGMENT",
    "BatchSender",
    "choose_batch_receive",
    "family_limit",
    "uses_batches",
)

#: Linux's value (the socket module does not export it on Python 3.11).
UDP_SEGMENT: Final = 103

#: Datagrams one GSO send carries at most: the kernel's ``UDP_MAX_SEGMENTS`` (64 before
#: Linux 6.9, 128 since; the smaller works everywhere).
MAX_GSO_SEGMENTS: Final = 64

_FAMILY_LIMITS: Final = FAMILY_LIMITS

#: Errors that say the kernel will not segment this way; the run goes out without GSO.
_GSO_REFUSED: Final = frozenset({errno.EINVAL, errno.EMSGSIZE})
#: Errors that say it will not segment at all on this socket.
_GSO_UNSUPPORTED: Final = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def family_limit(family: int) -> int | None:
    """The longest datagram ``family`` carries, or ``None`` (Unix: the socket's buffer)."""
    return _FAMILY_LIMITS.get(family)


def uses_batches(core: SocketCore, batched: bool | None = None) -> bool:
    """Whether ``core``'s batches take batched system calls (``batched``: as for the sender)."""
    if batched is None:
        batched = enabled_by_environment()
    return batched and sendmmsg_available() and (core.family in _FAMILY_LIMITS or core.connected)


def choose_batch_receive(core: SocketCore, batched: bool | None = None) -> str:
    """Give ``core`` its batch receive, once; which one: ``"gro"``, ``"recvmmsg"``, ``""``.

    On a Linux IP socket (unless ``batched`` is false or ``ANYDGRAM_BATCHED_SYSCALLS=0``):
    ``UDP_GRO`` where the kernel accepts it, with every receive of the socket splitting
    coalesced buffers from then on; else ``recvmmsg`` for ``recv_packets``. Elsewhere the
    socket's own receive serves ``recv_packets`` too.
    """
    if not (uses_batches(core, batched) and recvmmsg_available()):
        return ""
    if core.family not in _FAMILY_LIMITS:
        return ""
    if enable_gro(core):
        core.use_strategy(RecvGro(core))
        return "gro"
    core.use_batch_receive(RecvMmsg(core))
    return "recvmmsg"


def _probe_gso(core: SocketCore) -> bool:
    """Whether the kernel offers UDP GSO on this socket (asked once, when it is first used)."""
    if core.family not in _FAMILY_LIMITS:
        return False
    try:
        core.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


class BatchSender:
    """One socket's batch sends: GSO runs and ``sendmmsg`` slots where they apply.

    Args:
        core: The socket.
        batched: ``False`` for the portable path; ``None`` (automatic) for the batched one
            unless ``ANYDGRAM_BATCHED_SYSCALLS=0``.

    Attributes:
        busy: A call is using it (it waits for the kernel part-way): a concurrent batch
            takes a sender of its own.
        first_error: The first error a datagram met since :meth:`reset` (counted already).
        failed: How many datagrams the kernel refused since :meth:`reset`.
    """

    __slots__ = (
        "_controls",
        "_core",
        "_gso",
        "_gso_ceiling",
        "_slots",
        "busy",
        "failed",
        "first_error",
    )

    def __init__(self, core: SocketCore, *, batched: bool | None = None) -> None:
        self._core = core
        self._slots: ReplyBatch | None = None
        if uses_batches(core, batched):
            self._slots = ReplyBatch(core, Tally(), MAX_BATCH)
            self._slots.on_failed = self._failed
        self._gso = self._slots is not None and _probe_gso(core)
        #: Segments at least this long are not sent with GSO (the route's MTU refused one).
        self._gso_ceiling = 1 << 16
        #: The UDP_SEGMENT control message for each segment size met (a few, reused).
        self._controls: dict[int, list[tuple[int, int, bytes]]] = {}
        self.busy = False
        self.failed = 0
        self.first_error: Exception | None = None

    @property
    def batched(self) -> bool:
        """Whether batches leave in ``sendmmsg`` calls (else one system call per datagram)."""
        return self._slots is not None

    @property
    def gso(self) -> bool:
        """Whether runs of equal-size datagrams leave as one GSO send."""
        return self._gso

    def reset(self) -> None:
        """Forget the errors of the previous batch."""
        self.failed = 0
        self.first_error = None

    def _failed(self, exc: Exception, peer: Any = None) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = exc

    def send(
        self,
        tally: Tally,
        datagrams: list[bytes],
        addresses: list[Any] | None,
        start: int,
    ) -> int:
        """Send ``datagrams[start:]`` as far as the kernel takes them now.

        Args:
            tally: The counters to update.
            datagrams: Checked datagrams (each within the socket's limit).
            addresses: Each datagram's destination; ``None`` on a connected socket.
            start: The first datagram not sent yet.

        Returns:
            The index of the first datagram the kernel did not take (its buffer is full), or
            ``len(datagrams)`` once every one is sent or refused (refusals are counted, and
            kept in :attr:`failed` and :attr:`first_error`).

        Raises:
            anyio.ClosedResourceError: The socket was closed.
        """
        if self._core.closed:
            raise anyio.ClosedResourceError
        slots = self._slots
        if slots is None:
            return self._send_one_by_one(tally, datagrams, addresses, start)
        slots.tally = tally
        count = len(datagrams)
        sizes = list(map(len, datagrams)) if self._gso else []
        gso_until = start  # datagrams before this index are not tried with GSO again
        queued_from = start  # the datagram in the first queued slot
        i = start
        while i < count:
            address = None if addresses is None else addresses[i]
            if self._gso and i >= gso_until:
                end = self._run_end(sizes, addresses, i)
                if end - i > 1:
                    if slots.count and not slots.flush():
                        return self._blocked(queued_from)
                    queued_from = i
                    sent = self._send_run(tally, datagrams, i, end, address)
                    if sent is None:
                        return i
                    if sent:
                        i = queued_from = end
                        continue
                    gso_until = end  # refused: these go one slot each
            # Everything up to the next GSO try goes into the slots in one call while it can;
            # the one it stops at (full slots, a new peer, a long one) takes the steps below.
            stop = count if not self._gso else max(gso_until, i + 1)
            j = slots.put_many(datagrams, addresses, i, stop)
            if j > i:
                i = j
                continue
            if slots.count >= slots.capacity:
                if not slots.flush():
                    return self._blocked(queued_from)
                queued_from = i
            if not slots.put(datagrams[i], address):
                # Not for a slot (a host name, a datagram longer than a slot): the queued
                # ones first, then this one the ordinary way.
                if slots.count and not slots.flush():
                    return self._blocked(queued_from)
                if not self._send_single(tally, datagrams[i], address):
                    return i
                queued_from = i + 1
            i += 1
        if slots.count and not slots.flush():
            return self._blocked(queued_from)
        return count

    def _blocked(self, queued_from: int) -> int:
        """The kernel's buffer filled during a flush: where to go on from (the rest unqueued)."""
        slots = self._slots
        assert slots is not None
        resume = queued_from + slots.start
        slots.discard()
        return resume

    def _run_end(self, sizes: list[int], addresses: Sequence[Any] | None, i: int) -> int:
        """The end of the GSO run starting at ``i``: equal sizes to one peer, the last shorter.

        ``sizes`` are the datagrams' lengths.
        """
        size = sizes[i]
        if not size or size >= self._gso_ceiling:
            return i + 1
        count = len(sizes)
        family_limit = _FAMILY_LIMITS[self._core.family]
        stop = min(count, i + MAX_GSO_SEGMENTS, i + family_limit // size)
        address = None if addresses is None else addresses[i]
        # The common case, all of it to one peer and of one size, is compared in C.
        if sizes[i:stop].count(size) == stop - i and (
            addresses is None or addresses[i:stop].count(address) == stop - i
        ):
            j = stop
        else:
            j = i + 1
            while j < stop and sizes[j] == size:
                if addresses is not None and addresses[j] != address:
                    return j
                j += 1
        # A shorter one may end the run.
        if (
            j < count
            and j - i < MAX_GSO_SEGMENTS
            and 0 < sizes[j] < size
            and (j - i) * size + sizes[j] <= family_limit
            and (addresses is None or addresses[j] == address)
        ):
            j += 1
        return j

    def _send_run(
        self, tally: Tally, datagrams: Sequence[bytes], i: int, end: int, address: Any
    ) -> bool | None:
        """One GSO send of ``datagrams[i:end]``: sent, refused (``False``), or would block."""
        run = datagrams[i:end]
        size = len(run[0])
        control = self._controls.get(size)
        if control is None:
            if len(self._controls) >= 64:
                self._controls.clear()
            control = self._controls[size] = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        core = self._core
        try:
            if address is None:
                core.sock.sendmsg(run, control)
            else:
                core.sock.sendmsg(run, control, 0, address)
        except BlockingIOError:
            return None
        except OSError as exc:
            if core.closed or exc.errno == errno.EBADF:
                core.send_failed(exc, size, tally, retried=False)  # raises ClosedResourceError
            if exc.errno in _GSO_UNSUPPORTED:
                self._gso = False
            elif exc.errno in _GSO_REFUSED:
                self._gso_ceiling = min(self._gso_ceiling, size)
            elif exc.errno in ICMP_ERRNOS:
                # An ICMP error about an earlier send is reported once, so the slots would not
                # see it again: counted here, not raised (send_failed raises it after counting
                # on a connected socket), and the run goes on through the slots.
                with contextlib.suppress(OSError):
                    core.send_failed(exc, size, tally, retried=False)
            # Anything else (a firewall's EPERM) is for the slots' path to count, one datagram
            # at a time.
            return False
        tally.datagrams_sent += end - i
        tally.bytes_sent += size * (end - i - 1) + len(run[-1])
        return True

    def _send_single(self, tally: Tally, data: bytes, address: Any) -> bool:
        """Send one datagram the ordinary way; ``False`` if the kernel's buffer is full."""
        try:
            return self._core.send(tally, data, address)
        except (OSError, ValueError) as exc:  # counted by the core; ValueError: too large
            self._failed(exc)
            return True

    def _send_one_by_one(
        self,
        tally: Tally,
        datagrams: Sequence[bytes],
        addresses: Sequence[Any] | None,
        start: int,
    ) -> int:
        send = self._send_single
        for i in range(start, len(datagrams)):
            if not send(tally, datagrams[i], None if addresses is None else addresses[i]):
                return i
        return len(datagrams)
