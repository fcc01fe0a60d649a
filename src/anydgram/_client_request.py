"""The clients' ``request()``: the pending-request table and the reply routing around it.

Every ``request()`` call registers a :class:`PendingRequest` and re-sends its datagram on a
backoff schedule until a reply arrives. At any moment one of the pending calls reads the socket
for all of them (the *reader*); the others wait to be handed their reply, or to take over
reading when the reader leaves. Each datagram read goes to the oldest pending call whose
address and ``match`` accept it; nobody's datagrams are dropped and counted.

The table is plain code (the waits between attempts are :mod:`anydgram._retry_schedule`'s);
:class:`AsyncRequests` drives it with anyio for the async endpoints and
:class:`ThreadedRequests` with threads for the blocking ones.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic

import anyio

from ._errors import DatagramProtocolParseError
from ._io_core import MAX_BATCH
from ._protocol import RecvT

if TYPE_CHECKING:
    from ._retry_schedule import AttemptSchedule
    from ._socket_io import SocketIO
    from ._sync_socket import ThreadedSocketIO

__all__ = (
    "AsyncRequests",
    "PendingRequest",
    "RequestTable",
    "ThreadedRequests",
    "destination_key",
    "peer_key",
)

#: When a call starts with no other call pending, datagrams already waiting cannot be replies to
#: it (it has not sent anything yet); at most this many are dropped and counted up front.
_MAX_STALE: Final = 1024

#: The ``BusyResourceError`` action: "Another task is already <action> this resource".
BUSY_ACTION: Final = "waiting for a request() reply on"

Match = Callable[[Any], bool]


# -- addresses -------------------------------------------------------------------------------


def _ip_key(host: str, port: int) -> tuple[Any, int]:
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, port


def peer_key(family: int, address: Any) -> Hashable:
    """What a received datagram's sender is compared by: the IP address and port, or the path.

    Two spellings of one IP address (``"::1"`` and ``"0::1"``, an IPv4-mapped IPv6 address and
    the IPv4 one) give the same key; flow information and scope are ignored.
    """
    if family == socket.AF_UNIX:
        key: Hashable = address
        return key
    return _ip_key(address[0], address[1])


def destination_key(family: int, address: Any) -> tuple[Any, Hashable] | None:
    """``(address to send to, its peer_key)`` when ``address`` needs no name lookup, else None.

    Raises:
        TypeError: ``address`` is not an address of ``family``'s form.
    """
    if family == socket.AF_UNIX:
        if not isinstance(address, str):
            raise TypeError(f"a Unix address must be a str, not {type(address).__name__}")
        return address, address
    if (
        not isinstance(address, tuple)
        or len(address) not in (2, 4)  # pyright: ignore[reportUnknownArgumentType]
        or not isinstance(address[0], str)
        or not isinstance(address[1], int)
    ):
        raise TypeError(f"an IP address must be a (host, port) tuple, not {address!r}")
    try:
        return address, _ip_key(address[0], address[1])  # pyright: ignore[reportUnknownVariableType]
    except ValueError:
        return None  # a host name


def key_from_addrinfo(family: int, infos: Sequence[tuple[Any, ...]]) -> tuple[Any, Hashable]:
    """The first usable ``getaddrinfo`` result as ``(address to send to, its peer_key)``.

    Raises:
        OSError: No result has ``family``.
    """
    for info in infos:
        if info[0] == family:
            sockaddr = info[4]
            return sockaddr, peer_key(family, sockaddr)
    raise OSError(f"the name resolves to no address of family {family!r}")


# -- the table -------------------------------------------------------------------------------


class PendingRequest(Generic[RecvT]):
    """One ``request()`` call waiting for its reply."""

    __slots__ = ("done", "error", "key", "match", "reply", "waiter")

    def __init__(self, key: Hashable, match: Match | None) -> None:
        self.key = key
        self.match = match
        self.done = False
        self.reply: RecvT | None = None
        self.error: Exception | None = None
        #: How the call is woken: an ``anyio.Event`` or a ``threading.Condition``.
        self.waiter: Any = None

    def result(self) -> RecvT:
        """The reply, or the error its ``match`` raised."""
        if self.error is not None:
            raise self.error
        return self.reply  # type: ignore[return-value]

    def judge(self, packet: RecvT) -> bool | Exception:
        """Whether this call's ``match`` accepts ``packet``, or the error it raised."""
        if self.match is None:
            return True
        try:
            return bool(self.match(packet))
        except Exception as exc:
            return exc


class RequestTable(Generic[RecvT]):
    """The pending calls of one endpoint, oldest first. Callers serialize access."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        # A dict as an insertion-ordered set: oldest first, O(1) removal.
        self._pending: dict[PendingRequest[RecvT], None] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[PendingRequest[RecvT]]:
        return iter(self._pending)

    def add(self, key: Hashable, match: Match | None) -> PendingRequest[RecvT]:
        """Register a new call (the youngest)."""
        entry: PendingRequest[RecvT] = PendingRequest(key, match)
        self._pending[entry] = None
        return entry

    def discard(self, entry: PendingRequest[RecvT]) -> None:
        """Forget a call that returned, failed or was cancelled."""
        self._pending.pop(entry, None)

    def __contains__(self, entry: PendingRequest[RecvT]) -> bool:
        return entry in self._pending

    def candidates(self, key: Hashable) -> list[PendingRequest[RecvT]]:
        """The calls still waiting that consider a datagram from ``key``, oldest first."""
        return [entry for entry in self._pending if not entry.done and entry.key == key]

    def settle(
        self, entry: PendingRequest[RecvT], verdict: bool | Exception, packet: RecvT
    ) -> bool:
        """Apply ``entry.judge(packet)``'s verdict if the call still waits; whether it took it.

        An accepted packet completes the call (and wakes it). A ``match`` that raised completes
        its own call with that error, and the packet goes on to the next call: a bug in one
        caller's predicate fails that caller only.
        """
        if entry.done or entry not in self._pending or verdict is False:
            return False
        if verdict is True:
            entry.reply = packet
        else:
            entry.error = verdict
        entry.done = True
        waiter = entry.waiter
        if isinstance(waiter, anyio.Event):
            waiter.set()
        elif waiter is not None:
            waiter.notify()  # a threading.Condition: the caller holds its lock
        return entry.error is None

    def route(self, packet: RecvT, key: Hashable) -> PendingRequest[RecvT] | None:
        """Hand ``packet`` to the oldest waiting call that accepts it; that call, or ``None``.

        For single-threaded callers: ``match`` runs here, in the caller's context.
        """
        for entry in self.candidates(key):
            if self.settle(entry, entry.judge(packet), packet):
                return entry
        return None


# -- async -----------------------------------------------------------------------------------


class AsyncRequests(Generic[RecvT]):
    """The pending ``request()`` calls of one async endpoint, and the reading done for them.

    Args:
        io: The endpoint's socket side.
        parse: The endpoint's parser (it counts parse errors and raises).
        count_unmatched: Adds to the endpoint's ``unmatched_replies``.
        keyed: ``True`` for an unconnected endpoint: datagrams are routed by sender.
    """

    __slots__ = ("_count_unmatched", "_io", "_keyed", "_parse", "_reader", "_reader_scope", "table")

    def __init__(
        self,
        io: SocketIO,
        parse: Callable[[bytes, Any], RecvT],
        count_unmatched: Callable[[int], None],
        *,
        keyed: bool,
    ) -> None:
        self._io = io
        self._parse = parse
        self._count_unmatched = count_unmatched
        self._keyed = keyed
        self._reader: PendingRequest[RecvT] | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self.table: RequestTable[RecvT] = RequestTable()

    async def request(
        self,
        datagram: bytes,
        address: Any,
        key: Hashable,
        timeouts: AttemptSchedule,
        match: Match | None,
    ) -> RecvT:
        """Send ``datagram`` on the schedule ``timeouts`` until a reply is routed to this call.

        Raises:
            TimeoutError: No reply after the last attempt.
        """
        if not self.table:
            self._drop_stale()
        entry = self.table.add(key, match)
        try:
            for attempt_timeout in timeouts:
                deadline = anyio.current_time() + attempt_timeout
                with anyio.move_on_after(attempt_timeout):
                    await self._io.send(datagram, address)
                if await self._wait_reply(entry, deadline):
                    return entry.result()
            raise TimeoutError(f"no reply after {len(timeouts)} attempts")
        finally:
            self.table.discard(entry)

    def _drop_stale(self) -> None:
        dropped = 0
        while dropped < _MAX_STALE:
            batch = self._io.receive_nowait(MAX_BATCH)
            if not batch:
                break
            dropped += len(batch)
        if dropped:
            self._count_unmatched(dropped)

    async def _wait_reply(self, entry: PendingRequest[RecvT], deadline: float) -> bool:
        while not entry.done:
            if self._io.closed:
                raise anyio.ClosedResourceError
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return False
            if self._reader is None:
                await self._read_for(entry, deadline)
                continue
            entry.waiter = event = anyio.Event()
            try:
                with anyio.move_on_after(remaining):
                    await event.wait()
            finally:
                entry.waiter = None
        return True

    async def _read_for(self, entry: PendingRequest[RecvT], deadline: float) -> None:
        self._reader = entry
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                self._reader_scope = scope
                while not entry.done:
                    data, address = await self._io.receive_one()
                    self.deliver(data, address)
        finally:
            self._reader = None
            self._reader_scope = None
            self.wake_all()  # the reading role is free: a waiting call takes it over

    def deliver(self, data: bytes, address: Any) -> None:
        """Route one received datagram (parse errors are counted by the parser and dropped)."""
        key = peer_key(self._io.sock.family, address) if self._keyed else None
        if self.table.candidates(key):
            try:
                packet = self._parse(data, address)
            except DatagramProtocolParseError:
                return
            if self.table.route(packet, key) is not None:
                return
        self._count_unmatched(1)

    def deliver_foreign(self, data: bytes, address: Any) -> None:
        """Route a datagram another receiver took while calls were pending."""
        self.deliver(data, address)
        reader = self._reader
        if reader is not None and reader.done and self._reader_scope is not None:
            self._reader_scope.cancel()  # its reply came in another way: stop waiting

    def wake_all(self) -> None:
        """Wake every waiting call, to take over reading or to notice the endpoint closed."""
        for entry in self.table:
            if entry.waiter is not None:
                entry.waiter.set()


# -- threads ---------------------------------------------------------------------------------


class ThreadedRequests(Generic[RecvT]):
    """The pending ``request()`` calls of one blocking endpoint, shared by threads.

    One lock guards the table, the reader role and ``unmatched``; it is never held while a
    thread waits on the socket. Each call waits on its own condition (over that lock), so a
    reply wakes only the call it belongs to.

    Args:
        io: The endpoint's socket side.
        parse: The endpoint's parser (it counts parse errors and raises).
        keyed: ``True`` for an unconnected endpoint: datagrams are routed by sender.
    """

    __slots__ = ("_io", "_keyed", "_lock", "_parse", "_reader", "pending", "table", "unmatched")

    def __init__(
        self,
        io: ThreadedSocketIO,
        parse: Callable[[bytes, Any], RecvT],
        *,
        keyed: bool,
    ) -> None:
        self._io = io
        self._parse = parse
        self._keyed = keyed
        self._lock = threading.Lock()
        self._reader: PendingRequest[RecvT] | None = None
        self.table: RequestTable[RecvT] = RequestTable()
        #: How many calls are pending; read without the lock by the busy check.
        self.pending = 0
        self.unmatched = 0

    def request(
        self,
        datagram: bytes,
        address: Any,
        key: Hashable,
        timeouts: AttemptSchedule,
        match: Match | None,
    ) -> RecvT:
        """Send ``datagram`` on the schedule ``timeouts`` until a reply is routed to this call.

        Raises:
            TimeoutError: No reply after the last attempt.
        """
        with self._lock:
            if self._io.closed:
                raise anyio.ClosedResourceError
            if not self.table:
                # Under the lock, so no other call can register (and be answered) meanwhile.
                self.unmatched += self._io.discard_waiting(_MAX_STALE)
            entry = self.table.add(key, match)
            entry.waiter = threading.Condition(self._lock)
            self.pending += 1
        try:
            for attempt_timeout in timeouts:
                deadline = time.monotonic() + attempt_timeout
                # A send that finds the buffer full for the whole attempt is a lost attempt.
                with contextlib.suppress(TimeoutError):
                    self._io.send(datagram, address, deadline)
                if self._wait_reply(entry, deadline):
                    return entry.result()
            raise TimeoutError(f"no reply after {len(timeouts)} attempts")
        finally:
            with self._lock:
                self.table.discard(entry)
                self.pending -= 1

    def _wait_reply(self, entry: PendingRequest[RecvT], deadline: float) -> bool:
        condition: threading.Condition = entry.waiter
        while True:
            with condition:
                while True:
                    if entry.done:
                        return True
                    if self._io.closed:
                        raise anyio.ClosedResourceError
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    if self._reader is None:
                        self._reader = entry
                        break
                    condition.wait(remaining)
            try:
                while not entry.done:
                    data, address = self._io.receive_one(deadline)
                    self.deliver(data, address)
            except TimeoutError:
                pass  # the loop above returns False
            finally:
                with self._lock:
                    self._reader = None
                    self._wake_all_locked()  # the reading role is free

    def deliver(self, data: bytes, address: Any) -> None:
        """Route one received datagram (parse errors are counted by the parser and dropped).

        A datagram another receiver took while calls were pending goes through here too. If it
        is the reader's reply, the reader notices when its attempt's wait ends (the rare cost of
        mixing ``recv_packet()`` with ``request()``, which is refused once a call is pending).
        """
        key = peer_key(self._io.sock.family, address) if self._keyed else None
        with self._lock:
            candidates = self.table.candidates(key)
        if candidates:
            try:
                packet = self._parse(data, address)
            except DatagramProtocolParseError:
                return
            for entry in candidates:
                # User code runs without the lock, so a match may call back into the endpoint
                # (even close it); the call is settled under the lock if it still waits.
                verdict = entry.judge(packet)
                with self._lock:
                    if self.table.settle(entry, verdict, packet):
                        return
        with self._lock:
            self.unmatched += 1

    def wake_all(self) -> None:
        """Wake every waiting call (the endpoint was closed)."""
        with self._lock:
            self._wake_all_locked()

    def _wake_all_locked(self) -> None:
        for entry in self.table:
            entry.waiter.notify()
