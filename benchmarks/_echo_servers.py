"""UDP echo servers on 127.0.0.1, one per way of writing one, for ``server_echo.py``.

Run one per process: ``python _echo_servers.py KIND BACKEND [--protocol json]
[--metrics-port PORT]``. It pins
itself to a CPU, binds an ephemeral port on 127.0.0.1 with a 1 MiB receive buffer, prints the
port on stdout, then echoes every datagram back to its sender until it is terminated (the
driver does so by its PID), outlives ``--max-seconds``, or loses its parent.

Each server is the loop a user would write with that library, nothing tuned. anydgram is
imported only by the anydgram servers (and EasyNetwork only by its own), so the baselines run
while the package is broken or the peer is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import socket
import struct
import sys
import time
from array import array
from collections.abc import AsyncGenerator, Callable, Coroutine
from functools import partial
from typing import Any, cast

import anyio
from _common import LOOPBACK, SERVER_CPU, pin_to_cpu
from _loadgen import MSG_WAITFORONE, MMsgVector, libc_mmsg
from _raw_echo_server import serve as serve_raw
from anyio.abc import SocketAttribute, TaskStatus

#: Every server asks for this receive buffer (anydgram's server default), so a burst of
#: datagrams finds the same room everywhere.
RECV_BUFFER = 1 << 20
#: How long one blocking receive of the raw loop may wait before it looks at its limits.
_RAW_RECV_TIMEOUT = 0.5

#: ``serve(json, *, task_status)``: bind, report the port through ``task_status``, echo
#: forever (``json``: decode and re-encode JSON packets, where the server has a protocol).
AsyncServe = Callable[..., Coroutine[Any, Any, None]]


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    sock.bind((LOOPBACK, 0))
    return sock


# -- baselines ---------------------------------------------------------------------------------


class _EchoProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's transport does not derive from asyncio's.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def serve_asyncio_protocol(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """An ``asyncio.DatagramProtocol`` that calls ``transport.sendto`` from its callback."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_EchoProtocol, sock=sock)
    try:
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        transport.close()


async def serve_anyio_udp(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """``anyio.create_udp_socket`` and ``async for`` over it."""
    async with await anyio.create_udp_socket(
        family=socket.AF_INET, local_host=LOOPBACK, local_port=0
    ) as udp:
        raw = udp.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        task_status.started(udp.extra(SocketAttribute.local_port))
        async for data, (host, port) in udp:
            await udp.sendto(data, host, port)


async def serve_trio_socket(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """``trio.socket``: ``await recvfrom`` then ``await sendto``."""
    import trio

    with trio.socket.from_stdlib_socket(_bound_socket()) as sock:
        task_status.started(sock.getsockname()[1])
        while True:
            data, address = await sock.recvfrom(65536)
            await sock.sendto(data, address)


async def serve_easynetwork(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """EasyNetwork's ``AsyncUDPNetworkServer``, whose request handler sends the request back.

    The handler is the one of EasyNetwork's guide: an async generator that takes one request
    (``yield``) and sends it back. EasyNetwork has no bytes serializer, so a pass-through one
    stands in. It runs on EasyNetwork's ``"trio"`` backend under trio, on its ``"asyncio"``
    backend otherwise (which uses whichever loop runs, uvloop's included).
    """
    import sniffio
    from easynetwork.protocol import DatagramProtocol
    from easynetwork.serializers.abc import AbstractPacketSerializer
    from easynetwork.servers import AsyncUDPNetworkServer
    from easynetwork.servers.handlers import AsyncDatagramClient, AsyncDatagramRequestHandler

    class PassThrough(AbstractPacketSerializer[bytes, bytes]):
        __slots__ = ()

        def serialize(self, packet: bytes, /) -> bytes:
            return packet

        def deserialize(self, data: bytes, /) -> bytes:
            return data

    class Echo(AsyncDatagramRequestHandler[bytes, bytes]):
        async def handle(
            self, client: AsyncDatagramClient[bytes], /
        ) -> AsyncGenerator[None, bytes]:
            request = yield
            await client.send_packet(request)

    class Up:  # the threading.Event-like object serve_forever() sets once it is serving
        def __init__(self) -> None:
            self.event = anyio.Event()

        def set(self) -> None:
            self.event.set()

    trio = sniffio.current_async_library() == "trio"
    up = Up()
    server = AsyncUDPNetworkServer(
        LOOPBACK, 0, DatagramProtocol(PassThrough()), Echo(), backend="trio" if trio else "asyncio"
    )
    async with server, anyio.create_task_group() as tg:
        tg.start_soon(partial(server.serve_forever, is_up_event=up))
        await up.event.wait()
        for sock in server.get_sockets():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        task_status.started(server.get_addresses()[0].port)


# -- anydgram ----------------------------------------------------------------------------------


#: ``--protocol msgspec``: the JSON rows' packets decoded into a typed Struct instead.
_TYPED = False
#: ``--metrics-port``: the anydgram server registers itself with ``anydgram.metrics`` and
#: prometheus_client serves ``/metrics`` on this TCP port of 127.0.0.1 (``None``: no metrics).
_METRICS_PORT: int | None = None
#: Whether the ``DatagramServer`` rows ask for receive metadata (``anydgram-server-metadata``).
_RECEIVE_METADATA = False


def _protocol(json: bool) -> Any:
    import anydgram
    from anydgram.serializers import BytesSerializer, JSONSerializer

    serializer: Any
    if json and _TYPED:
        import msgspec

        from anydgram.serializers import MsgspecSerializer

        # The load generator's JSON payload: an array of two strings.
        class Pair(msgspec.Struct, array_like=True):
            first: str
            second: str

        serializer = MsgspecSerializer(Pair)
    else:
        serializer = JSONSerializer() if json else BytesSerializer()
    return anydgram.DatagramProtocol(serializer)


async def serve_anydgram_endpoint(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """A ``DatagramEndpoint`` with a ``recv_packet``/``send_packet`` loop."""
    import anydgram

    async with await anydgram.open_udp_endpoint(
        LOOPBACK, 0, protocol=_protocol(json), recv_buffer_size=RECV_BUFFER
    ) as endpoint:
        task_status.started(endpoint.local_address[1])
        while True:
            packet, address = await endpoint.recv_packet()
            await endpoint.send_packet(packet, address)


async def serve_anydgram_server(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """A ``DatagramServer`` whose handler responds with the packet it was given."""
    import anydgram

    async def handler(request: anydgram.DatagramRequest[Any, Any]) -> None:
        await request.respond(request.packet)

    server = anydgram.DatagramServer(
        LOOPBACK,
        0,
        handler,
        protocol=_protocol(json),
        recv_buffer_size=RECV_BUFFER,
        receive_metadata=_RECEIVE_METADATA,
    )
    if _METRICS_PORT is not None:
        # As docs/operating.md shows it: the default registry (with prometheus_client's process
        # and GC collectors) served by its HTTP server thread.
        import prometheus_client

        import anydgram.metrics

        anydgram.metrics.register(server, name="bench")
        prometheus_client.start_http_server(_METRICS_PORT, addr=LOOPBACK)
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        task_status.started(addresses[0][1])


async def serve_anydgram_server_returning(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """A ``DatagramServer`` whose handler returns the packet it was given (its reply)."""
    import anydgram

    async def handler(request: anydgram.DatagramRequest[Any, Any]) -> Any:
        return request.packet

    server = anydgram.DatagramServer(
        LOOPBACK, 0, handler, protocol=_protocol(json), recv_buffer_size=RECV_BUFFER
    )
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        task_status.started(addresses[0][1])


async def serve_anydgram_server_unbatched(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """``anydgram-server`` with ``ANYDGRAM_BATCHED_SYSCALLS=0``: one system call per datagram."""
    os.environ["ANYDGRAM_BATCHED_SYSCALLS"] = "0"
    await serve_anydgram_server(json, task_status=task_status)


async def serve_anydgram_server_metadata(
    json: bool, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """``anydgram-server`` with ``receive_metadata=True``: what asking for metadata costs."""
    global _RECEIVE_METADATA
    _RECEIVE_METADATA = True
    await serve_anydgram_server(json, task_status=task_status)


ASYNC_SERVERS: dict[str, AsyncServe] = {
    "asyncio-protocol": serve_asyncio_protocol,
    "anyio-udp": serve_anyio_udp,
    "trio-socket": serve_trio_socket,
    "easynetwork": serve_easynetwork,
    "anydgram-endpoint": serve_anydgram_endpoint,
    "anydgram-server": serve_anydgram_server,
    "anydgram-server-return": serve_anydgram_server_returning,
    "anydgram-server-unbatched": serve_anydgram_server_unbatched,
    "anydgram-server-metadata": serve_anydgram_server_metadata,
}
KINDS = ("raw", "raw-mmsg", *ASYNC_SERVERS)
BACKENDS = ("blocking", "asyncio", "uvloop", "trio")


# -- lifetime ----------------------------------------------------------------------------------


async def _run_async(serve: AsyncServe, json: bool, max_seconds: float) -> None:
    parent = os.getppid()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, json)
        print(port, flush=True)
        # Stop by ourselves after max_seconds or once orphaned; the driver normally ends us
        # sooner with SIGTERM.
        with anyio.move_on_after(max_seconds):
            while os.getppid() == parent:  # noqa: ASYNC110 (nothing to wait on but the clock)
                await anyio.sleep(0.5)
        tg.cancel_scope.cancel()


def _run_raw(max_seconds: float) -> None:
    with _bound_socket() as sock:
        seconds = int(_RAW_RECV_TIMEOUT)
        micros = int((_RAW_RECV_TIMEOUT - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        print(sock.getsockname()[1], flush=True)
        serve_raw(sock, max_seconds=max_seconds, idle_seconds=max_seconds)


#: Datagrams one recvmmsg may take (anydgram's own batch bound).
_MMSG_BATCH = 64
#: Every slot takes the largest UDP payload, as a general echo server must.
_MMSG_SLOT = 65536


def _run_raw_mmsg(max_seconds: float) -> None:
    """The raw loop with batched system calls: what Python can do with ``recvmmsg``/``sendmmsg``.

    Each batch is received into one buffer with the senders' addresses, and the same message
    vector is sent back with each buffer's length set to what was received: a few C-level
    operations per batch and none per datagram. It is no loop a user would write, but the
    floor a batched I/O path in Python can approach, and a capacity check for the load
    generator.
    """
    mmsg = libc_mmsg()
    if mmsg is None:
        raise SystemExit("recvmmsg/sendmmsg are not available here")
    sendmmsg, recvmmsg = mmsg
    parent = os.getppid()
    buffer = bytearray(_MMSG_SLOT * _MMSG_BATCH)
    vector = MMsgVector(buffer, _MMSG_BATCH, _MMSG_SLOT, _MMSG_SLOT, names=True)
    slot_lengths = array("Q", [_MMSG_SLOT]) * _MMSG_BATCH
    name_lengths = array("I", vector.namelens_view.tolist())
    with _bound_socket() as sock:
        seconds = int(_RAW_RECV_TIMEOUT)
        micros = int((_RAW_RECV_TIMEOUT - seconds) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        print(sock.getsockname()[1], flush=True)
        fd, messages = sock.fileno(), vector.messages
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline and os.getppid() == parent:
            for _ in range(1024):  # batches between two looks at the limits
                count: int = recvmmsg(fd, messages, _MMSG_BATCH, MSG_WAITFORONE, None)
                if count <= 0:  # SO_RCVTIMEO expired (or an error): look at the limits
                    break
                vector.iov_lengths_view[:count] = array("Q", vector.lengths_view[:count])
                sendmmsg(fd, messages, count, 0)
                vector.iov_lengths_view[:count] = slot_lengths[:count]
                vector.namelens_view[:count] = name_lengths[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("backend", choices=BACKENDS)
    parser.add_argument("--protocol", choices=("bytes", "json", "msgspec"), default="bytes")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="anydgram-server only: serve /metrics on this TCP port of 127.0.0.1",
    )
    parser.add_argument("--cpu", type=int, default=SERVER_CPU)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="run under cProfile and write its stats here when the server stops by itself "
        "(give a short --max-seconds)",
    )
    args = parser.parse_args()
    global _TYPED, _METRICS_PORT
    _TYPED = args.protocol == "msgspec"
    _METRICS_PORT = args.metrics_port
    if args.kind.startswith("raw") != (args.backend == "blocking"):
        parser.error("the raw servers run blocking, and only they")
    if args.metrics_port is not None and args.kind != "anydgram-server":
        parser.error("--metrics-port is for the anydgram-server kind")
    pin_to_cpu(args.cpu)
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()
        if args.kind == "raw":
            _run_raw(args.max_seconds)
        elif args.kind == "raw-mmsg":
            _run_raw_mmsg(args.max_seconds)
        else:
            anyio.run(
                _run_async,
                ASYNC_SERVERS[args.kind],
                args.protocol in ("json", "msgspec"),
                args.max_seconds,
                backend="trio" if args.backend == "trio" else "asyncio",
                backend_options={"use_uvloop": True} if args.backend == "uvloop" else {},
            )
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
