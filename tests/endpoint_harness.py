"""Builders for the endpoint under test and a raw peer to talk to it.

The behaviour cases in ``test_endpoint.py`` are written once against these builders, so every
implementation (async endpoints over each address family, the blocking client and endpoint, and
the in-memory network) runs the same cases. The peer is a plain non-blocking stdlib socket, so
the cases do not test anydgram against itself; on the in-memory network (kind ``"memory"``,
async only) it is a raw-bytes memory endpoint (:class:`MemoryPeer`), the only thing there is.

The blocking classes are driven through small async adapters that run each blocking call in a
worker thread (``anyio.to_thread``); a cancelled receive abandons its thread, which then ends
with ``ClosedResourceError`` when the harness closes the endpoint.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramProtocol,
    EndpointStatistics,
    SocketProxy,
    SyncDatagramClient,
    SyncDatagramEndpoint,
)
from anydgram.serializers import BytesSerializer
from anydgram.testing import MemoryNetwork

KINDS = ["udp4", "udp6", "unix", "unix-abstract"]
#: The in-memory network's kind: async endpoints only (the blocking classes have no network=),
#: and only for cases that need no real socket (file descriptors, options, kernel buffers).
MEMORY = "memory"
#: The implementations every behaviour case runs on: the async endpoints, and the blocking
#: ones behind an async adapter.
IMPLS = ["async", "sync"]

_T = TypeVar("_T")


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ``::1`` (containers often have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: ``(family, host)`` parameters for tests run over IPv4 and IPv6 loopback.
LOOPBACK_FAMILIES = [
    pytest.param((socket.AF_INET, "127.0.0.1"), id="ipv4"),
    pytest.param(
        (socket.AF_INET6, "::1"),
        id="ipv6",
        marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here"),
    ),
]


class Client(Protocol):
    """What the cases use of a connected client (``DatagramClient`` has all of it)."""

    @property
    def local_address(self) -> Any: ...
    @property
    def remote_address(self) -> Any: ...
    @property
    def socket(self) -> SocketProxy: ...
    def statistics(self) -> EndpointStatistics: ...
    async def send_packet(self, packet: Any, /) -> None: ...
    async def recv_packet(self) -> Any: ...
    def iter_received_packets(self, *, timeout: float | None = 0) -> AsyncIterator[Any]: ...
    async def request(
        self,
        packet: Any,
        /,
        *,
        timeout: float = ...,
        attempts: int = ...,
        backoff: float = ...,
        match: Callable[[Any], bool] | None = ...,
    ) -> Any: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class Endpoint(Protocol):
    """What the cases use of an unconnected endpoint (``DatagramEndpoint`` has all of it)."""

    @property
    def local_address(self) -> Any: ...
    @property
    def socket(self) -> SocketProxy: ...
    def statistics(self) -> EndpointStatistics: ...
    async def send_packet(self, packet: Any, address: Any, /) -> None: ...
    async def recv_packet(self) -> tuple[Any, Any]: ...
    def iter_received_packets(
        self, *, timeout: float | None = 0
    ) -> AsyncIterator[tuple[Any, Any]]: ...
    async def request(
        self,
        packet: Any,
        address: Any,
        /,
        *,
        timeout: float = ...,
        attempts: int = ...,
        backoff: float = ...,
        match: Callable[[Any], bool] | None = ...,
    ) -> Any: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


async def _in_thread(call: Callable[[], _T], *, abandon_on_cancel: bool = False) -> _T:
    return await anyio.to_thread.run_sync(call, abandon_on_cancel=abandon_on_cancel)


class _SyncAdapter:
    """The async face of a blocking client or endpoint: each blocking call runs in a thread.

    Receives abandon their thread when cancelled (the blocking call has no cancel scope);
    sends run to completion. ``unlink`` is a socket file the adapter removes on close, as the
    async Unix endpoints do for the paths they bound.
    """

    def __init__(
        self,
        inner: SyncDatagramClient[Any, Any] | SyncDatagramEndpoint[Any, Any],
        unlink: str | None = None,
    ) -> None:
        self._inner = inner
        self._unlink = unlink

    @property
    def local_address(self) -> Any:
        return self._inner.local_address

    @property
    def socket(self) -> SocketProxy:
        return self._inner.socket

    def statistics(self) -> EndpointStatistics:
        return self._inner.statistics()

    async def _iterate(self, iterator: Iterator[_T]) -> AsyncIterator[_T]:
        while True:
            # One item, or none at the end (StopIteration cannot cross a coroutine boundary).
            def step() -> list[_T]:
                return list(itertools.islice(iterator, 1))

            items = await _in_thread(step, abandon_on_cancel=True)
            if not items:
                return
            yield items[0]

    async def aclose(self) -> None:
        self._inner.close()
        if self._unlink is not None and not self._unlink.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unlink)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncClientAdapter(_SyncAdapter):
    """A :class:`SyncDatagramClient` seen as a :class:`Client`."""

    _inner: SyncDatagramClient[Any, Any]

    def __init__(self, inner: SyncDatagramClient[Any, Any], unlink: str | None = None) -> None:
        super().__init__(inner, unlink)

    @property
    def remote_address(self) -> Any:
        return self._inner.remote_address

    async def send_packet(self, packet: Any, /) -> None:
        await _in_thread(functools.partial(self._inner.send_packet, packet))

    async def recv_packet(self) -> Any:
        return await _in_thread(self._inner.recv_packet, abandon_on_cancel=True)

    def iter_received_packets(self, *, timeout: float | None = 0) -> AsyncIterator[Any]:
        return self._iterate(self._inner.iter_received_packets(timeout=timeout))

    async def request(
        self,
        packet: Any,
        /,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        backoff: float = 2.0,
        match: Callable[[Any], bool] | None = None,
    ) -> Any:
        call = functools.partial(
            self._inner.request,
            packet,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            match=match,
        )
        return await _in_thread(call, abandon_on_cancel=True)


class SyncEndpointAdapter(_SyncAdapter):
    """A :class:`SyncDatagramEndpoint` seen as an :class:`Endpoint`."""

    _inner: SyncDatagramEndpoint[Any, Any]

    def __init__(self, inner: SyncDatagramEndpoint[Any, Any], unlink: str | None = None) -> None:
        super().__init__(inner, unlink)

    async def send_packet(self, packet: Any, address: Any, /) -> None:
        await _in_thread(functools.partial(self._inner.send_packet, packet, address))

    async def recv_packet(self) -> tuple[Any, Any]:
        return await _in_thread(self._inner.recv_packet, abandon_on_cancel=True)

    def iter_received_packets(self, *, timeout: float | None = 0) -> AsyncIterator[tuple[Any, Any]]:
        return self._iterate(self._inner.iter_received_packets(timeout=timeout))

    async def request(
        self,
        packet: Any,
        address: Any,
        /,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        backoff: float = 2.0,
        match: Callable[[Any], bool] | None = None,
    ) -> Any:
        call = functools.partial(
            self._inner.request,
            packet,
            address,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            match=match,
        )
        return await _in_thread(call, abandon_on_cancel=True)


class RawPeer:
    """The far side: a non-blocking stdlib socket driven by anyio's wait primitives."""

    def __init__(self, sock: socket.socket, unlink: str | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._unlink = unlink

    @property
    def address(self) -> Any:
        name = self.sock.getsockname()
        return os.fsdecode(name) if isinstance(name, bytes) else name

    async def send(self, data: bytes, address: Any) -> None:
        while True:
            try:
                self.sock.sendto(data, address)
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
                # An unconnected Unix sender is "writable" while its peer's queue is full.
                await anyio.sleep(0.001)
            else:
                return

    async def recv(self, bufsize: int = 70000) -> tuple[bytes, Any]:
        while True:
            try:
                data, address = self.sock.recvfrom(bufsize)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            else:
                if isinstance(address, bytes):
                    address = os.fsdecode(address)
                return data, address

    def close(self) -> None:
        self.sock.close()
        if self._unlink is not None and not self._unlink.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unlink)


class MemoryPeer(RawPeer):
    """The far side on a :class:`MemoryNetwork`: a raw-bytes endpoint there. It has no ``sock``."""

    def __init__(self, endpoint: anydgram.DatagramEndpoint[bytes, bytes]) -> None:
        # No socket to set up: RawPeer's constructor is not called.
        self._endpoint = endpoint
        self._unlink = None

    @property
    def address(self) -> Any:
        return self._endpoint.local_address

    async def send(self, data: bytes, address: Any) -> None:
        await self._endpoint.send_packet(data, address)

    async def recv(self, bufsize: int = 70000) -> tuple[bytes, Any]:
        return await self._endpoint.recv_packet()

    def close(self) -> None:
        self._endpoint._io.close_now()


def _unix_name(kind: str, directory: str) -> str:
    if kind == "unix-abstract":
        return f"\0anydgram-test-{uuid.uuid4().hex}"
    return os.path.join(directory, f"{uuid.uuid4().hex[:12]}.sock")


def port_is_free(port: int) -> bool:
    """Whether a UDP socket can bind 127.0.0.1:``port`` now (a closed server let it go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_peer(kind: str, directory: str) -> RawPeer:
    """A bound raw socket of the address family ``kind`` names."""
    if kind in ("udp4", "udp6"):
        family, host = (socket.AF_INET, "127.0.0.1") if kind == "udp4" else (socket.AF_INET6, "::1")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # Room for a test's worth of datagrams, so the peer never drops what it is sent.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host, 0))
        return RawPeer(sock)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = _unix_name(kind, directory)
    sock.bind(name)
    return RawPeer(sock, unlink=name)


def _apply_buffer_sizes(
    sock: socket.socket, recv_buffer_size: int | None, send_buffer_size: int | None
) -> None:
    if recv_buffer_size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_size)
    if send_buffer_size is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_size)


@dataclass
class Harness:
    """Opens endpoints of one kind and the peers they talk to; closes everything at the end.

    ``impl`` picks the implementation under test: ``"async"`` (the async endpoints) or
    ``"sync"`` (the blocking ones, behind :class:`SyncClientAdapter` and
    :class:`SyncEndpointAdapter`). Unix kinds of the blocking classes are built with
    ``from_socket``, their only way to Unix sockets.
    """

    kind: str
    directory: str
    stack: AsyncExitStack
    impl: str = "async"
    #: The network of the ``"memory"`` kind; its queues hold a test's worth of datagrams.
    network: MemoryNetwork = field(default_factory=lambda: MemoryNetwork(queue_size=1 << 16))

    @property
    def is_udp(self) -> bool:
        return self.kind.startswith("udp")

    @property
    def is_sync(self) -> bool:
        return self.impl == "sync"

    @property
    def is_memory(self) -> bool:
        return self.kind == MEMORY

    def peer(self) -> RawPeer:
        if self.is_memory:
            # Bound at once (as a socket would be): open_udp_endpoint() minus its checkpoint.
            io = self.network._bind("127.0.0.1", 0, None, anydgram.MAX_UDP_PAYLOAD)
            peer: RawPeer = MemoryPeer(
                anydgram.DatagramEndpoint(io, DatagramProtocol(BytesSerializer()))
            )
        else:
            peer = make_peer(self.kind, self.directory)
        self.stack.callback(peer.close)
        return peer

    async def client(
        self,
        peer: RawPeer,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> Client:
        """A client connected to ``peer``."""
        client: Client
        if self.is_memory:
            host, port = peer.address
            client = await self.network.connect_udp(host, port, protocol=protocol)
        elif self.is_udp:
            host, port = peer.address[:2]
            client = await self._connect_udp(
                host,
                port,
                protocol=protocol,
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        elif self.is_sync:
            local = _unix_name(self.kind, self.directory)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                _apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
                sock.bind(local)
                sock.connect(peer.address)
            except BaseException:
                sock.close()
                raise
            client = SyncClientAdapter(
                SyncDatagramClient.from_socket(sock, protocol=protocol), unlink=local
            )
        else:
            client = await anydgram.connect_unix_datagram(
                peer.address,
                protocol=protocol,
                local_path=_unix_name(self.kind, self.directory),
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        self.stack.push_async_callback(client.aclose)
        return client

    async def connect_udp(self, host: str, port: int) -> Client:
        """A UDP client connected to ``host``:``port`` (which need not be listening)."""
        client = await self._connect_udp(host, port)
        self.stack.push_async_callback(client.aclose)
        return client

    async def _connect_udp(
        self,
        host: str,
        port: int,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> Client:
        if self.is_sync:

            def connect() -> SyncDatagramClient[Any, Any]:
                return SyncDatagramClient(
                    host,
                    port,
                    protocol=protocol,
                    recv_buffer_size=recv_buffer_size,
                    send_buffer_size=send_buffer_size,
                )

            return SyncClientAdapter(await _in_thread(connect))
        return await anydgram.connect_udp(
            host,
            port,
            protocol=protocol,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
        )

    async def endpoint(
        self,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> Endpoint:
        """A bound, unconnected endpoint on the loopback interface."""
        endpoint: Endpoint
        if self.is_memory:
            endpoint = await self.network.open_udp_endpoint("127.0.0.1", protocol=protocol)
        elif self.is_udp:
            host = "127.0.0.1" if self.kind == "udp4" else "::1"
            if self.is_sync:

                def open_endpoint() -> SyncDatagramEndpoint[Any, Any]:
                    return SyncDatagramEndpoint(
                        host,
                        0,
                        protocol=protocol,
                        recv_buffer_size=recv_buffer_size,
                        send_buffer_size=send_buffer_size,
                    )

                endpoint = SyncEndpointAdapter(await _in_thread(open_endpoint))
            else:
                endpoint = await anydgram.open_udp_endpoint(
                    host,
                    0,
                    protocol=protocol,
                    recv_buffer_size=recv_buffer_size,
                    send_buffer_size=send_buffer_size,
                )
        elif self.is_sync:
            local = _unix_name(self.kind, self.directory)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                _apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
                sock.bind(local)
            except BaseException:
                sock.close()
                raise
            endpoint = SyncEndpointAdapter(
                SyncDatagramEndpoint.from_socket(sock, protocol=protocol), unlink=local
            )
        else:
            endpoint = await anydgram.open_unix_datagram_endpoint(
                _unix_name(self.kind, self.directory),
                protocol=protocol,
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        self.stack.push_async_callback(endpoint.aclose)
        return endpoint

    def adopt_client(self, sock: socket.socket) -> Client:
        """``from_socket`` of the implementation's client class; the caller closes the result."""
        if self.is_sync:
            return SyncClientAdapter(SyncDatagramClient.from_socket(sock))
        return anydgram.DatagramClient.from_socket(sock)

    def adopt_endpoint(self, sock: socket.socket) -> Endpoint:
        """``from_socket`` of the implementation's endpoint class; the caller closes it."""
        if self.is_sync:
            return SyncEndpointAdapter(SyncDatagramEndpoint.from_socket(sock))
        return anydgram.DatagramEndpoint.from_socket(sock)


@asynccontextmanager
async def open_harness(kind: str, impl: str = "async") -> AsyncGenerator[Harness]:
    with tempfile.TemporaryDirectory(prefix="anydgram-") as directory:
        async with AsyncExitStack() as stack:
            yield Harness(kind, directory, stack, impl)


@asynccontextmanager
async def open_harness_for(request: pytest.FixtureRequest) -> AsyncGenerator[Harness]:
    """The harness a fixture parametrized with :func:`harness_params` asks for."""
    impl, kind = request.param
    async with open_harness(kind, impl) as h:
        yield h


def harness_params(kinds: list[str], impls: list[str] = IMPLS) -> list[Any]:
    """Fixture parameters for every ``(impl, kind)`` pair, with ids like ``sync-udp4``."""
    return [pytest.param((impl, kind), id=f"{impl}-{kind}") for impl in impls for kind in kinds]


def harness_fixture(name: str, params: list[Any]) -> Any:
    """A fixture called ``name`` giving a :class:`Harness` for each of :func:`harness_params`."""

    @pytest.fixture(name=name, params=params)
    async def fixture(request: pytest.FixtureRequest) -> AsyncGenerator[Harness]:
        async with open_harness_for(request) as h:
            yield h

    return fixture


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (cheap, side-effect free) until true; fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - kernel counters have no event to wait on
            await anyio.sleep(0.005)


AsyncFn = Callable[[], Awaitable[None]]
