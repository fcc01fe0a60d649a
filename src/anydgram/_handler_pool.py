"""The server's handler pool: reading tasks that run handlers, bounded, on reused tasks.

Dispatch, following one datagram: the task *holding* a socket's slot takes a batch from the
kernel (never more than the concurrency bound leaves room for), has the intake parse it into a
queue of requests, and runs the handlers itself, back to back, before it reads again. Quick
handlers thus cost no hand-off between tasks.

A handler that blocks must hold up neither the rest of its batch nor the reading. So before
running handlers the holder wakes a *standby*: a parked task, or a new one. The standby runs at
the holder's next yield; if the holder is then inside a handler, the standby takes the slot
over (runs the rest of the queue and reads on, arming a standby of its own), and the former
holder, once its handler returns, carries on as a plain worker and parks. Tasks are bounded by
``max_concurrent_handlers`` plus one per socket.

When running plus queued handlers reach the bound the holders stop reading until a handler
finishes: excess datagrams wait in the kernel buffer, which counts what it drops. ``stop()``
cancels a holder only while it reads (a cancellation there loses nothing); one running a
handler stops before its next read. Nothing on the per-datagram path takes a lock, creates a
cancel scope or logs.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._address import format_address
from ._io_core import MAX_BATCH
from ._server_request import DatagramRequest, ParseErrorRequest

if TYPE_CHECKING:
    from ._logging import RateLimitedLog
    from ._server_intake import Intake
    from ._server_request import Replies
    from ._socket_io import SocketIO

__all__ = ("HandlerPool",)

#: Pause after an unexpected receive error, so a broken socket cannot make the reader spin.
_RECV_ERROR_BACKOFF: Final = 0.05


class _ReaderSlot:
    """A socket's reading role, held by one task at a time (see :meth:`HandlerPool._read`)."""

    __slots__ = ("holder", "icmp_seen", "name", "reading", "transport")

    def __init__(self, transport: SocketIO) -> None:
        self.transport = transport
        self.name = format_address(transport.local_address)
        #: The holding task's cancel scope; ``None`` before and after reading.
        self.holder: anyio.CancelScope | None = None
        #: The holder is receiving or waiting for room, not running a handler.
        self.reading = True
        self.icmp_seen = transport.icmp_errors  # ICMP errors already logged


class HandlerPool:
    """The tasks that read a server's sockets and run its handlers, and their counters."""

    def __init__(
        self,
        handler: Callable[[Any], Awaitable[Any]],
        parse_error_handler: Callable[[Any], Awaitable[Any]] | None,
        bound: int,
        intake: Intake,
        replies: Replies,
        log: RateLimitedLog,
    ) -> None:
        self._handler = handler
        self._parse_error_handler = parse_error_handler
        self._bound = bound
        self._intake = intake
        self._replies = replies
        self._log = log
        self.pending: deque[DatagramRequest[Any, Any]] = intake.pending
        self._idle: list[anyio.Event] = []
        self.slots: list[_ReaderSlot] = []
        self.readers_left = 0
        self._standby = False
        self._waking = 0
        self.tasks_started = 0
        self.task_limit = 0
        self.task_group: TaskGroup | None = None
        self.task_ids: set[int] = set()
        self._finish_waiter: anyio.Event | None = None
        self.stop_requested = False
        self.grace_scope: anyio.CancelScope | None = None
        self.deadline = math.inf
        self.grace_period = math.inf
        self.checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        self.active = 0
        self.peak = 0
        self.handler_errors = 0
        self.handlers_cancelled = 0
        self.requests_abandoned = 0

    def counters(self) -> dict[str, int]:
        """The pool's part of the server's statistics."""
        return {
            "handler_errors": self.handler_errors,
            "handlers_cancelled": self.handlers_cancelled,
            "requests_abandoned": self.requests_abandoned,
            "handlers_active": self.active,
            "handlers_peak": self.peak,
        }

    def start(self, tasks: TaskGroup, transports: list[SocketIO]) -> None:
        """Start one reading task per socket in ``tasks``."""
        self.task_group = tasks
        self.slots = [_ReaderSlot(transport) for transport in transports]
        self.readers_left = self.tasks_started = len(self.slots)
        # Room for every handler to block, each in its own task, plus a task per socket
        # that goes on reading.
        self.task_limit = self._bound + len(self.slots)
        for transport in transports:
            if transport.reply_batch is not None:
                transport.reply_batch.on_failed = self._replies.failed
        for slot in self.slots:
            tasks.start_soon(self._task, slot, name=f"anydgram server reader {slot.name}")

    def stop(self, deadline: float, grace_period: float) -> bool:
        """Stop reading; handlers get until ``deadline``. Whether this is the first stop."""
        if deadline < self.deadline:
            self.deadline = deadline
            self.grace_period = grace_period
            if self.grace_scope is not None:
                self.grace_scope.deadline = deadline
        first = not self.stop_requested
        self.stop_requested = True
        for slot in self.slots:
            # A holder that is reading loses nothing to a cancellation; one running a
            # handler sees stop_requested before its next read.
            if slot.holder is not None and slot.reading:
                slot.holder.cancel()
        return first

    def close(self) -> None:
        """Forget the tasks; count requests read that no handler started."""
        # Undecodable ones waiting for the parse_error_handler are in parse_errors already.
        self.requests_abandoned += sum(
            1 for request in self.pending if request.__class__ is not ParseErrorRequest
        )
        self.pending.clear()
        self._idle.clear()
        self.slots = []
        self.task_group = None

    async def wait_for_handlers(self) -> None:
        with anyio.CancelScope(deadline=self.deadline) as grace:
            self.grace_scope = grace
            while self.readers_left or self.active or self.pending:
                # Requests queued by a reader that has stopped still need tasks to run them.
                await self._dispatch_pending()
                if not (self.readers_left or self.active):
                    break
                await self._wait_for_finish()
        self.grace_scope = None
        if grace.cancelled_caught and (self.active or self.pending):
            # Expected after aclose(); worth a warning when a grace period was not enough.
            self._log.logger.log(
                logging.INFO if self.grace_period == 0 else logging.WARNING,
                "cancelling %d handlers still running after the grace period (%.1f s)",
                self.active + len(self.pending),
                self.grace_period,
            )

    async def _task(self, slot: _ReaderSlot | None) -> None:
        """The body of every task of the server: read (holding ``slot``), run handlers, park.

        A task started for a socket holds its slot first. Any task with nothing queued to run
        takes over a slot whose holder is blocked in a handler, or parks until woken.
        """
        self.task_ids.add(anyio.get_current_task().id)
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
            self._replies.ready = 0
            event = anyio.Event()
            idle.append(event)
            await event.wait()
            slot = self._woken()

    def _woken(self) -> _ReaderSlot | None:
        """Account for a task woken (or started) by :meth:`_wake_one`; return a slot to take."""
        self._waking -= 1
        self._standby = False
        # The standby runs: a holder it was armed for has yielded (perhaps inside a handler),
        # so what that holder queued goes out now, and the rest of its batch unqueued.
        for slot in self.slots:
            transport = slot.transport
            transport.queueing = None
            transport.flush_replies_nowait()
        return self._stuck_slot()

    def _stuck_slot(self) -> _ReaderSlot | None:
        """A socket whose holder is blocked in a handler (the caller runs, so it is suspended)."""
        if self.stop_requested:
            return None
        for slot in self.slots:
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
        pending = self.pending
        transport = slot.transport
        bound = self._bound
        log = self._log
        relief = slot.holder is not None
        slot.holder = scope
        slot.reading = True
        if relief and len(self.slots) > 1:
            self._wake_standby()  # another socket's holder may be blocked as well
        try:
            # After a batch comes in, this checks for a shutdown first: shutdown() may have
            # cancelled the scope meanwhile, so the batch must run outside it.
            while not self.stop_requested:
                if pending and self.active < bound:
                    slot.reading = False
                    # The read loop passes a full checkpoint every few reads; count the
                    # replies of one batch's handlers towards respond()'s fairness only.
                    self._replies.ready = 0
                    if not self._standby:
                        self._wake_standby()
                    # Replies are queued for one sendmmsg only while a standby is armed: if a
                    # handler yields, the standby's first act (_woken) sends them.
                    if self._standby:
                        transport.queueing = transport.reply_batch
                    try:
                        await self._run_handlers(slot, scope)
                    finally:
                        transport.queueing = None
                    await transport.flush_replies()
                    if slot.holder is not scope:
                        return  # relieved while a handler here was blocked
                    slot.reading = True
                    continue
                room = bound - self.active - len(pending)
                if room <= 0:
                    # Every handler slot is taken: leave the rest in the kernel buffer. (With
                    # several sockets, requests read meanwhile by another holder may wait here
                    # for a slot: a room computed before a wait goes stale.)
                    await self._wait_for_finish()
                    continue
                try:
                    batch = await transport.receive(room if room < MAX_BATCH else MAX_BATCH)
                except anyio.ClosedResourceError:
                    break
                except OSError as exc:
                    log.log("recv", logging.ERROR, "receive failed: %s", exc)
                    await anyio.sleep(_RECV_ERROR_BACKOFF)
                    continue
                self._intake.queue_batch(transport, batch)
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
                self.readers_left -= 1
                self._notify_finish()

    async def _dispatch_pending(self) -> None:
        """Wake tasks until every queued request is taken (used once the readers stopped).

        One task is woken, then this yields: that task runs handlers back to back until the
        queue is empty, unless a handler blocks; then the next round wakes another. Each round
        a woken task takes at least one request, so this ends. While every handler slot (or
        every task) is taken this waits instead: the handler that finishes takes the next one.
        """
        pending = self.pending
        checkpoint = self.checkpoint
        while pending and self.task_group is not None:  # no task group: nobody to wake
            if self.active >= self._bound or (not self._waking and not self._wake_one()):
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
        if self.tasks_started < self.task_limit and self.task_group is not None:
            self.tasks_started += 1
            self._waking += 1
            self.task_group.start_soon(
                self._task, None, name=f"anydgram server task {self.tasks_started}"
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
        pending = self.pending
        handler = self._handler
        hook = self._parse_error_handler
        bound = self._bound
        cancelled_class = anyio.get_cancelled_exc_class()
        while pending:
            if slot is not None and slot.holder is not scope:
                return
            active = self.active
            if active >= bound:
                return
            request = pending.popleft()
            active = self.active = active + 1
            if active > self.peak:
                self.peak = active
            try:
                if hook is not None and request.__class__ is ParseErrorRequest:
                    reply = await hook(request)
                else:
                    reply = await handler(request)
                if reply is not None:  # a handler may return its reply: respond(reply)
                    data = request.send_soon(reply)
                    if data is not None:
                        await request.send_later(data)
            except Exception as exc:
                self._handler_failed(exc, request)
            except cancelled_class:
                # Only the server cancels a running handler: it is stopping (see _serve).
                self.handlers_cancelled += 1
                raise
            finally:
                self.active -= 1
                # _notify_finish(), inlined: this runs once per datagram.
                waiter = self._finish_waiter
                if waiter is not None:
                    self._finish_waiter = None
                    waiter.set()

    def _handler_failed(self, exc: Exception, request: DatagramRequest[Any, Any]) -> None:
        self.handler_errors += 1
        what = "parse_error_handler" if request.__class__ is ParseErrorRequest else "handler"
        self._log.log(
            "handler",
            logging.ERROR,
            "%s raised for a datagram from %s",
            what,
            format_address(request.address),
            exc_info=exc,
            peer=request.address,
        )
