"""``anydgram listen``: print every datagram that arrives (time, sender, size, payload).

A ``DatagramEndpoint`` per address; ``--echo`` sends each datagram back to its sender.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import anyio

from .. import DatagramEndpoint, DatagramProtocolParseError, open_udp_endpoint
from ._codec import Codec
from ._output import (
    describe_os_error,
    format_address,
    format_host_port,
    timestamp,
    write_line,
)
from ._runner import Backend, CLIError, run

__all__ = ("ListenOptions", "run_listen")


@dataclass(frozen=True)
class ListenOptions:
    """``anydgram listen``'s settings (``count=None``: until interrupted)."""

    hosts: list[str]
    port: int
    echo: bool = False
    count: int | None = None
    protocol: str = "bytes"


class _Listener:
    def __init__(self, options: ListenOptions) -> None:
        self.options = options
        self.received = 0
        self.codec = Codec(options.protocol)

    async def read(self, endpoint: DatagramEndpoint[bytes, bytes], done: anyio.Event) -> None:
        count = self.options.count
        while count is None or self.received < count:
            try:
                data, sender = await endpoint.recv_packet()
            except DatagramProtocolParseError:  # pragma: no cover - raw bytes always parse
                continue
            if count is not None and self.received >= count:
                break  # another address's reader reached the count meanwhile
            self.received += 1
            write_line(f"{timestamp()} {format_address(sender)} {self.codec.describe(data)}")
            if self.options.echo:
                try:
                    await endpoint.send_packet(data, sender)
                except OSError as exc:
                    write_line(
                        f"anydgram: cannot echo to {format_address(sender)}: {exc}", error=True
                    )
        done.set()


async def _open(host: str, port: int) -> DatagramEndpoint[bytes, bytes]:
    try:
        return await open_udp_endpoint(host, port)
    except socket.gaierror as exc:
        raise CLIError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    except UnicodeError as exc:
        raise CLIError(f"cannot resolve host {host!r}: {exc}") from None
    except OSError as exc:
        where = format_host_port(host, port)
        raise CLIError(f"cannot listen on {where}: {describe_os_error(exc)}") from None


async def listen(options: ListenOptions, listener: _Listener) -> None:
    """Bind every address (a port of 0 is chosen once and shared), then print what arrives."""
    endpoints: list[DatagramEndpoint[bytes, bytes]] = []
    try:
        port = options.port
        for host in options.hosts:
            endpoints.append(await _open(host, port))
            first = endpoints[0].local_address
            assert isinstance(first, tuple)  # UDP: (host, port, ...)
            port = first[1]
        where = ", ".join(format_address(endpoint.local_address) for endpoint in endpoints)
        echo = " (echoing)" if options.echo else ""
        write_line(f"Listening on {where}{echo}. Press Ctrl-C to stop.")
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            for endpoint in endpoints:
                tg.start_soon(listener.read, endpoint, done)
            await done.wait()
            tg.cancel_scope.cancel()
    finally:
        for endpoint in endpoints:
            await endpoint.aclose()


def run_listen(options: ListenOptions, backend: Backend) -> int:
    """Run ``anydgram listen`` until ``count`` datagrams or Ctrl-C; exit 0."""
    listener = _Listener(options)
    _, outcome = run(backend, lambda: listen(options, listener))
    if outcome.interrupted:
        write_line()
        write_line(f"{listener.received} datagrams received")
    return 0
