"""``anydgram serve``: a DatagramServer that echoes, shouts, swallows or prints what it gets.

``--loss`` and ``--delay`` make it the unreliable server of a networking exercise: a seeded
``--loss 0.3`` answers about 70% of requests, always the same ones for the same seed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import socket
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import anyio

from .. import DatagramProtocol, DatagramRequest, DatagramServer
from ..serializers import CBORSerializer, JSONSerializer, MessagePackSerializer, StringSerializer
from ._args import MODES, PROTOCOLS
from ._observe import MetricsServer, print_statistics
from ._output import (
    describe_payload,
    format_address,
    format_host_port,
    server_statistics_lines,
    timestamp,
    write_line,
)
from ._runner import Backend, CLIError, run

__all__ = ("MODES", "PROTOCOLS", "ModeHandler", "ServeOptions", "make_protocol", "run_serve")

_log = logging.getLogger("anydgram.cli")


def make_protocol(name: str) -> DatagramProtocol[Any, Any] | None:
    """The protocol for a ``--protocol`` choice; ``None`` means raw bytes.

    Raises:
        CLIError: The serializer's optional package is missing.
    """
    if name == "bytes":
        return None
    if name == "str":
        return DatagramProtocol(StringSerializer())
    if name == "json":
        return DatagramProtocol(JSONSerializer())
    if name == "msgpack":
        try:
            return DatagramProtocol(MessagePackSerializer())
        except ImportError:
            raise CLIError(
                "--protocol msgpack needs the msgpack package; "
                "install it with: pip install 'anydgram[msgpack]'"
            ) from None
    if name == "cbor":
        try:
            return DatagramProtocol(CBORSerializer())
        except ImportError:
            raise CLIError(
                "--protocol cbor needs the cbor2 package; "
                "install it with: pip install 'anydgram[cbor]'"
            ) from None
    raise CLIError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")


def _upper(packet: object) -> object:
    if isinstance(packet, str | bytes):
        return packet.upper()
    if isinstance(packet, list):
        return [_upper(item) for item in cast("list[object]", packet)]
    if isinstance(packet, dict):
        return {key: _upper(value) for key, value in cast("dict[object, object]", packet).items()}
    return packet


class ModeHandler:
    """The request handler: answers (or not) according to ``mode``, ``loss`` and ``delay``.

    ``echo`` sends the packet back, ``upper`` sends it upper-cased (the strings inside it, for
    JSON and MessagePack), ``discard`` answers nothing and ``print`` prints it and answers
    nothing. ``loss`` is the probability of ignoring a request on purpose, drawn from a
    :class:`random.Random` seeded with ``seed``; ``delay`` is in seconds.
    """

    def __init__(
        self,
        mode: str = "echo",
        *,
        loss: float = 0.0,
        delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.mode = mode
        self.loss = loss
        self.delay = delay
        self.answered = 0
        self.dropped = 0
        self._random = random.Random(seed)

    async def __call__(self, request: DatagramRequest[Any, Any]) -> None:
        """Handle one datagram."""
        packet = request.packet
        mode = self.mode
        if mode == "print":
            write_line(
                f"{timestamp()} {format_address(request.address)} {describe_payload(packet)}"
            )
        if mode == "discard" or mode == "print":
            self._log_outcome(request, mode)
            return
        if self.loss and self._random.random() < self.loss:
            self.dropped += 1
            self._log_outcome(request, "ignored on purpose")
            return
        if self.delay:
            await anyio.sleep(self.delay)
        await request.respond(_upper(packet) if mode == "upper" else packet)
        self.answered += 1
        self._log_outcome(request, mode)

    @staticmethod
    def _log_outcome(request: DatagramRequest[Any, Any], outcome: str) -> None:
        # Checked first: describing the datagram costs more than the echo itself.
        if _log.isEnabledFor(logging.INFO):
            sender, payload = format_address(request.address), describe_payload(request.packet)
            _log.info("%s %s (%s)", sender, payload, outcome)

    def summary(self) -> str:
        """What the handler did, for the closing statistics."""
        line = f"{self.answered} answered"
        if self.loss:
            line += f", {self.dropped} ignored on purpose (loss {self.loss:g})"
        return line


@dataclass(frozen=True)
class ServeOptions:
    """``anydgram serve``'s settings."""

    hosts: list[str]
    port: int
    mode: str = "echo"
    loss: float = 0.0
    delay: float = 0.0
    protocol: str = "bytes"
    workers: int = 1
    max_concurrent: int = 256
    verbose: bool = False
    seed: int | None = None
    metrics: tuple[str, int] | None = None
    stats_interval: float | None = None


def _listen_error(options: ServeOptions, exc: OSError) -> CLIError:
    if isinstance(exc, socket.gaierror):
        hosts = ", ".join(repr(host) for host in options.hosts)
        return CLIError(f"cannot resolve host {hosts}: {exc.strerror or exc}")
    # The server's message names the address that failed ("could not bind ...: reason").
    return CLIError(exc.strerror or str(exc))


def build_server(options: ServeOptions, handler: ModeHandler) -> DatagramServer[Any, Any]:
    """The server ``options`` describe, with ``handler`` (raises :class:`CLIError`)."""
    protocol = make_protocol(options.protocol)
    try:
        return DatagramServer(
            options.hosts,
            options.port,
            handler,
            protocol=protocol,
            max_concurrent_handlers=options.max_concurrent,
        )
    except OSError as exc:
        raise _listen_error(options, exc) from None


def listening_line(options: ServeOptions, addresses: Any, backend: Backend) -> str:
    """The line that says where the server listens."""
    where = ", ".join(format_address(address) for address in addresses)
    return (
        f"Serving {options.mode} on {where} (protocol {options.protocol}, "
        f"backend {backend.name}). Press Ctrl-C to stop."
    )


async def start_server(
    tg: anyio.abc.TaskGroup, server: DatagramServer[Any, Any], options: ServeOptions
) -> Any:
    """Start ``server`` in ``tg`` and return its addresses (raises :class:`CLIError`)."""
    try:
        return await tg.start(server.serve_forever)
    except OSError as exc:
        raise _listen_error(options, exc) from None


class _LogSetup:
    """Show the ``anydgram`` loggers' records on stderr while the command runs."""

    def __init__(self, verbose: bool) -> None:
        self._logger = logging.getLogger("anydgram")
        self._level = self._logger.level
        self._handler = logging.StreamHandler(sys.stderr)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO if verbose else logging.WARNING)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)


#: Seconds running handlers get to finish after Ctrl-C (a second Ctrl-C stops at once).
GRACE_PERIOD = 5.0


def run_serve(options: ServeOptions, backend: Backend) -> int:
    """Run ``anydgram serve`` until Ctrl-C or SIGTERM, then print the statistics; exit 0."""
    if options.workers > 1:
        if options.metrics is not None:
            # One port cannot show counters kept in N processes; see docs/cli.md.
            raise CLIError(
                "--metrics does not work with --workers: each worker process keeps its own "
                "counters (--stats-interval prints a line per worker)"
            )
        options = dataclasses.replace(options, port=_check_port(options.hosts, options.port))
    handler = ModeHandler(options.mode, loss=options.loss, delay=options.delay, seed=options.seed)
    server = build_server(options, handler)
    logs = _LogSetup(options.verbose)
    metrics: MetricsServer | None = None
    try:
        if options.workers > 1:
            return _run_workers(server, options, backend)
        if options.metrics is not None:
            metrics = MetricsServer(server, *options.metrics)

        async def serve() -> None:
            # The watchers outlive the server's task group, and are cancelled when it ends.
            async with anyio.create_task_group() as watchers:
                async with anyio.create_task_group() as tg:
                    addresses = await start_server(tg, server, options)
                    write_line(listening_line(options, addresses, backend))
                    if metrics is not None:
                        write_line(f"Metrics at {metrics.url}")
                    if options.stats_interval is not None:
                        watchers.start_soon(
                            print_statistics, server.statistics, options.stats_interval, write_line
                        )
                watchers.cancel_scope.cancel()

        run(backend, serve, on_signal=lambda: server.shutdown(GRACE_PERIOD))
    finally:
        if metrics is not None:
            metrics.close()
        logs.close()
    write_line()
    for line in server_statistics_lines(server.statistics()):
        write_line(line)
    write_line(handler.summary())
    return 0


def _check_port(hosts: list[str], port: int) -> int:
    """Check that ``port`` can be bound on every host (0: find one that can) and return it.

    The worker processes bind only after the supervisor has said where it serves, so a busy
    port is caught here first; the check's sockets are closed again at once.
    """
    for _ in range(10):
        sockets: list[socket.socket] = []
        chosen = port
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, chosen))
                chosen = sock.getsockname()[1]
        except OSError as exc:
            if port == 0 and sockets and exc.errno == errno.EADDRINUSE:
                continue  # the kernel's choice for the first host is taken on another
            host = hosts[len(sockets) - 1]
            if isinstance(exc, socket.gaierror):
                raise CLIError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
            where = format_host_port(host, port)
            raise CLIError(f"could not bind {where}: {exc.strerror or exc}") from None
        else:
            return chosen
        finally:
            for sock in sockets:
                sock.close()
    raise CLIError(f"cannot find a port free on {', '.join(hosts)}")


def _run_workers(server: DatagramServer[Any, Any], options: ServeOptions, backend: Backend) -> int:
    # The workers are separate processes with counters of their own: each prints its own
    # --stats-interval lines, and no closing statistics are printed.
    background = None
    if options.stats_interval is not None:
        background = partial(_print_worker_statistics, server, options.stats_interval)
    where = ", ".join(format_host_port(host, options.port) for host in options.hosts)
    write_line(
        f"Serving {options.mode} on {where} with {options.workers} worker processes "
        f"(protocol {options.protocol}, backend {backend.name}). Press Ctrl-C to stop."
    )
    try:
        server.run(
            backend=backend.anyio_backend,
            backend_options=backend.options,
            workers=options.workers,
            background=background,
        )
    except OSError as exc:
        raise _listen_error(options, exc) from None
    write_line("Stopped.")
    return 0


async def _print_worker_statistics(
    server: DatagramServer[Any, Any], interval: float, worker: int
) -> None:
    """``--stats-interval`` in worker process ``worker``: its own lines, marked with its number."""

    def write(line: str) -> None:
        write_line(f"worker {worker}: {line}")

    await print_statistics(server.statistics, interval, write)
