"""``DatagramServer.run()``: serving from blocking code, in this process or in N workers.

In this process, the server runs on a fresh event loop until SIGINT or SIGTERM.

With ``workers=N``, this process becomes a supervisor of N forked worker processes. Each worker
runs the server with its own event loop and its own sockets, bound with ``SO_REUSEPORT`` to the
same port, so the kernel spreads clients over the workers (by a hash of the client's address
and port). The supervisor keeps no socket on the port: a socket it held
would be given a share of the traffic that nobody reads. A port of 0 is resolved by the first
worker, which reports the port it got; the others then bind that one.

Workers are *forked*, not spawned: the server object (its handler, protocol and logger) is
inherited as it is, so closures and objects that cannot be pickled work. That needs ``fork``
(POSIX); forking a process that runs other threads is as risky as it always is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._address import format_addresses
from ._backend import anyio_backend

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from ._endpoint import IPAddress

__all__ = ("Servable", "resolve_backend", "run_in_this_process", "run_server", "run_workers")


class Servable(Protocol):
    """What running a server from blocking code needs of it (its life cycle)."""

    @property
    def logger(self) -> logging.Logger: ...

    async def open(self) -> None: ...
    async def serve(self, *, task_status: TaskStatus[tuple[IPAddress, ...]] = ...) -> None: ...
    async def abandon(self) -> None: ...
    async def wait_closed(self) -> None: ...
    async def shutdown(self, grace_period: float) -> None: ...
    async def aclose(self) -> None: ...
    def use_port(self, port: int | None) -> None: ...


_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def resolve_backend(
    backend: str, backend_options: dict[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Map ``run()``'s backend argument to anyio's, checking the backend is installed.

    Raises:
        TypeError: ``backend`` is not a string.
        ValueError: An unknown backend name.
        ImportError: trio or uvloop is not installed (the message names the extra).
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, not {type(backend).__name__}")
    return anyio_backend(backend, backend_options)


def run_server(
    server: Servable,
    state: str,
    backend: str,
    backend_options: dict[str, Any] | None,
    workers: int,
) -> None:
    """:meth:`DatagramServer.run`: check the arguments, then serve here or in workers."""
    backend_name, options = resolve_backend(backend, backend_options)
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if state != "new":
        raise RuntimeError(f"the server cannot run: it is {state}")
    if workers == 1:
        run_in_this_process(server, backend_name, options)
    else:
        run_workers(server, workers, backend_name, options)


def run_in_this_process(
    server: Servable,
    backend: str,
    options: dict[str, Any],
    on_started: Callable[[tuple[Any, ...]], None] | None = None,
    signals: tuple[signal.Signals, ...] = _SIGNALS,
) -> None:
    """Serve on a new event loop until one of ``signals`` (``on_started`` gets the addresses)."""
    anyio.run(
        _serve_until_signalled,
        server,
        on_started,
        signals,
        backend=backend,
        backend_options=options,
    )


async def _serve_until_signalled(
    server: Servable,
    on_started: Callable[[tuple[Any, ...]], None] | None,
    signals: tuple[signal.Signals, ...],
) -> None:
    # Bound first, outside the task group, so a bind error comes out as itself.
    await server.open()
    try:
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                await tg.start(_stop_on_signals, server, tg, signals)
            addresses = await tg.start(server.serve)
            if on_started is not None:
                on_started(addresses)
            await server.wait_closed()
            tg.cancel_scope.cancel()
    finally:
        await server.abandon()  # serve() never ran: close what open() bound


async def _stop_on_signals(
    server: Servable,
    tg: TaskGroup,
    which: tuple[signal.Signals, ...],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    logger = server.logger
    with anyio.open_signal_receiver(*which) as signals:
        task_status.started()
        received = 0
        async for signum in signals:
            received += 1
            name = signal.Signals(signum).name
            if received == 1:
                logger.info("received %s: shutting down", name)
                tg.start_soon(server.shutdown, 5.0)
            else:
                logger.info("received %s again: closing now", name)
                tg.start_soon(server.aclose)


#: How long workers get to stop after the signal is passed on (they use 5 s of grace), before
#: they are killed.
_STOP_TIMEOUT: Final = 10.0
_PR_SET_PDEATHSIG: Final = 1


class _Worker:
    """One worker process and the pipe it reports on."""

    def __init__(self, process: BaseProcess, reports: Connection) -> None:
        self.process = process
        self.reports = reports
        self.addresses: tuple[Any, ...] | None = None

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None


def _die_with_parent() -> None:
    # Linux: if the supervisor is killed outright, its workers get SIGTERM instead of living
    # on as orphans that hold the port.
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _worker_main(
    server: Servable,
    port: int | None,
    reports: Connection,
    close_fds: list[int],
    supervisor: int,
    backend: str,
    options: dict[str, Any],
) -> None:
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Ctrl-C in a terminal reaches the whole process group; the supervisor passes it on as
    # SIGTERM. Heeding both would count as two signals here, the second meaning "close now".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    if os.getppid() != supervisor:  # the supervisor died before prctl() took effect
        return
    server.use_port(port)

    def started(addresses: tuple[Any, ...]) -> None:
        reports.send(("started", addresses))

    try:
        run_in_this_process(server, backend, options, started, (signal.SIGTERM,))
    except Exception as exc:
        # The supervisor raises it (it is logged there); no second traceback from here.
        try:
            reports.send(("failed", exc))
        except Exception:
            raise exc from None
        sys.exit(1)
    finally:
        reports.close()


def run_workers(server: Servable, count: int, backend: str, options: dict[str, Any]) -> None:
    """Run ``server`` in ``count`` forked worker processes until SIGINT/SIGTERM.

    Raises:
        ValueError: The platform has no ``fork`` or no ``SO_REUSEPORT``.
        OSError: A worker could not bind (the worker's own error).
        RuntimeError: A worker process failed.
    """
    # multiprocessing is imported only here: `import anydgram` should not pay for it.
    import multiprocessing

    if not hasattr(os, "fork") or "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("workers > 1 needs os.fork, which this platform lacks")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("workers > 1 needs SO_REUSEPORT, which this platform lacks")
    Supervisor(server, count, backend, options).run()


class Supervisor:
    """Starts the workers, passes signals on, and stops them all when one fails."""

    def __init__(self, server: Servable, count: int, backend: str, options: dict[str, Any]) -> None:
        self._server = server
        self._count = count
        self._backend = backend
        self._options = options
        import multiprocessing

        self._logger: logging.Logger = server.logger
        self._context = multiprocessing.get_context("fork")
        self._workers: list[_Worker] = []
        self._signals_received = 0
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._failure: BaseException | None = None

    def run(self) -> None:
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        old_wakeup = signal.set_wakeup_fd(self._wakeup_w)
        for sig in _SIGNALS:
            signal.signal(sig, self._on_signal)
        try:
            self._supervise()
        finally:
            self._kill_remaining()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        if self._failure is not None:
            raise self._failure

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals_received += 1

    # -- the supervision loop ------------------------------------------------------------------

    def _supervise(self) -> None:
        first = self._start(None)
        if not self._wait_started([first]):
            self._stop_all()
            return
        assert first.addresses is not None
        port: int = first.addresses[0][1]
        others = [self._start(port) for _ in range(self._count - 1)]
        if not self._wait_started(others):
            self._stop_all()
            return
        self._logger.info(
            "%d worker processes (pids %s) serving on %s",
            self._count,
            ", ".join(str(w.process.pid) for w in self._workers),
            format_addresses(first.addresses),
        )
        while True:
            if self._signals_received:
                self._stop_all()
                return
            # Looked at before every wait: any look at a worker (``alive``) may reap it, and
            # its death must not go unnoticed because it happened before the wait began.
            dead = [w for w in self._workers if not w.alive]
            if dead:
                worker = dead[0]
                self._failure = RuntimeError(
                    f"worker process {worker.process.pid} exited with code "
                    f"{worker.process.exitcode}"
                )
                self._logger.error("%s: stopping the other workers", self._failure)
                self._stop_all()
                return
            self._wait([w.process.sentinel for w in self._workers])

    def _start(self, port: int | None) -> _Worker:
        reports, child_end = self._context.Pipe(duplex=False)
        # Block the signals until the child has its own handlers (and the parent its process
        # in the list), so neither side sees a signal meant for the other.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            process = self._context.Process(
                target=_worker_main,
                args=(
                    self._server,
                    port,
                    child_end,
                    [self._wakeup_r, self._wakeup_w, reports.fileno()]
                    + [w.reports.fileno() for w in self._workers],
                    os.getpid(),
                    self._backend,
                    self._options,
                ),
                name=f"anydgram-worker-{len(self._workers) + 1}",
                daemon=False,
            )
            process.start()
            worker = _Worker(process, reports)
            self._workers.append(worker)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            child_end.close()
        return worker

    def _wait_started(self, workers: list[_Worker]) -> bool:
        """Wait until every worker reported; ``False`` on a signal or a failure."""
        waiting = list(workers)
        while True:
            if self._signals_received:
                return False
            for worker in list(waiting):
                message = _poll(worker.reports)
                if message is None:
                    continue
                kind, value = message
                if kind != "started":
                    self._failure = (
                        value
                        if isinstance(value, BaseException)
                        else RuntimeError(f"worker failed: {value!r}")
                    )
                    return False
                worker.addresses = value
                waiting.remove(worker)
            if not waiting:
                return True
            for worker in self._workers:
                if not worker.alive:
                    self._failure = RuntimeError(
                        f"worker process {worker.process.pid} exited with code "
                        f"{worker.process.exitcode} before all workers started serving"
                    )
                    return False
            self._wait([w.reports for w in waiting] + [w.process.sentinel for w in self._workers])

    def _wait(self, objects: list[Any]) -> None:
        import multiprocessing.connection

        multiprocessing.connection.wait([*objects, self._wakeup_r])
        with contextlib.suppress(OSError):
            while os.read(self._wakeup_r, 512):
                pass

    # -- stopping ------------------------------------------------------------------------------

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers:
            if worker.alive and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def _stop_all(self) -> None:
        """SIGTERM every worker; a further signal escalates; kill what outlives the timeout."""
        self._signal_all(signal.SIGTERM)
        handled = self._signals_received
        deadline = time.monotonic() + _STOP_TIMEOUT
        while alive := [w for w in self._workers if w.alive]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sentinels = [w.process.sentinel for w in alive]
            import multiprocessing.connection

            multiprocessing.connection.wait([*sentinels, self._wakeup_r], remaining)
            with contextlib.suppress(OSError):
                while os.read(self._wakeup_r, 512):
                    pass
            if self._signals_received > handled:
                handled = self._signals_received
                self._signal_all(signal.SIGTERM)  # a second signal: workers close at once
        self._kill_remaining()
        for worker in self._workers:
            code = worker.process.exitcode
            if code not in (0, None, -signal.SIGTERM) and self._failure is None:
                self._logger.warning(
                    "worker process %s exited with code %s", worker.process.pid, code
                )

    def _kill_remaining(self) -> None:
        for worker in self._workers:
            if worker.alive:
                self._logger.warning("killing worker process %s", worker.process.pid)
                worker.process.kill()
            worker.process.join(5)
            worker.reports.close()


def _poll(connection: Connection) -> Any:
    try:
        if connection.poll():
            return connection.recv()
    except (EOFError, OSError):
        return None
    return None
