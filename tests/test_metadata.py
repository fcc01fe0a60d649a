"""Receive metadata (DESIGN.md "Receive metadata"): every field, on every receive path.

Each async case runs on asyncio, uvloop and trio; the blocking endpoints have their own cases.
A sender is a plain socket whose TTL and TOS the test sets, so every field read back is one the
test chose. The receive paths: ``recvmsg`` (clients, endpoints, wildcard servers),
``recvmmsg`` with a control area per slot (servers on a specific address), ``UDP_GRO`` (an
endpoint once ``recv_packets`` chose it), each on the compiled and the pure-Python unpack as
``ANYDGRAM_NO_EXTENSIONS`` says, and the portable path under ``ANYDGRAM_BATCHED_SYSCALLS=0``.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import Any, assert_type

import anyio
import pytest

import anydgram
from anydgram import (
    Address,
    DatagramMetadata,
    DatagramRequest,
    DatagramServer,
    _metadata,
    _pktinfo,
)
from anydgram._gro import RecvGro
from anydgram._io_core import SocketCore
from anydgram._mmsg import RecvMmsg
from anydgram._mmsg import available as mmsg_available
from anydgram._pktinfo import RecvPktinfo
from anydgram.testing import MemoryNetwork
from batch_harness import core_of, gro_refused, port_of
from endpoint_harness import has_ipv6_loopback

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the metadata options are Linux's"
)

_HAS_IPV6 = has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not _HAS_IPV6, reason="no IPv6 loopback here")

#: DSCP EF (46) with ECT(1): every bit of the byte is the sender's, the ECN field 1.
_TOS = 0xB9
_TTL = 7


@contextmanager
def sender(family: int, *, ttl: int = _TTL, tos: int | None = _TOS) -> Generator[socket.socket]:
    """A plain UDP socket that sends with the given TTL (hop limit) and TOS (traffic class)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            if tos is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            if tos is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        yield sock
    finally:
        sock.close()


def check(
    metadata: DatagramMetadata | None,
    window: tuple[float, float],
    local: Any,
    *,
    ttl: int = _TTL,
    tos: int = _TOS,
) -> None:
    """Every field as the sender set it; the timestamp inside the wall-clock window."""
    assert isinstance(metadata, DatagramMetadata)
    assert metadata.timestamp is not None
    assert window[0] <= metadata.timestamp <= window[1], (window, metadata.timestamp)
    assert metadata.ttl == ttl
    assert metadata.tos == tos
    assert metadata.ecn == tos & 3
    assert metadata.local_address == local


def strategy_of(core: SocketCore) -> object:
    return getattr(core.receive, "__self__", None)


# -- clients and endpoints (recvmsg) ------------------------------------------------------------


async def test_endpoint_reports_every_field(
    anyio_backend: Any, family_host: tuple[int, str]
) -> None:
    family, host = family_host
    async with await anydgram.open_udp_endpoint(host, 0, receive_metadata=True) as endpoint:
        local = endpoint.local_address
        assert isinstance(local, tuple)
        assert isinstance(strategy_of(core_of(endpoint)), RecvPktinfo)
        with sender(family) as peer:
            start = time.time()
            peer.sendto(b"ping", (host, port_of(endpoint)))
            with anyio.fail_after(5):
                received = await endpoint.recv_packet_with_metadata()
            end = time.time()
            assert_type(received, tuple[bytes, Address, DatagramMetadata])
            packet, address, metadata = received
            assert (packet, address) == (b"ping", peer.getsockname())
        check(metadata, (start, end), local)
        assert endpoint.statistics().metadata_truncated == 0


async def test_client_reports_every_field_and_tos_sets_the_byte(
    anyio_backend: Any, family_host: tuple[int, str]
) -> None:
    family, host = family_host
    async with (
        await anydgram.open_udp_endpoint(host, 0, receive_metadata=True) as server,
        await anydgram.connect_udp(
            host,
            port_of(server),
            receive_metadata=True,
            tos=_TOS,
        ) as client,
    ):
        hops = (socket.IPPROTO_IP, socket.IP_TTL)
        if family == socket.AF_INET6:
            hops = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
        client.socket.setsockopt(*hops, _TTL)
        start = time.time()
        await client.send_packet(b"hello")
        with anyio.fail_after(5):
            _, address, metadata = await server.recv_packet_with_metadata()
        check(metadata, (start, time.time()), server.local_address)  # tos= set the byte
        start = time.time()
        await server.send_packet(b"back", address)
        with anyio.fail_after(5):
            answer = await client.recv_packet_with_metadata()
        assert_type(answer, tuple[bytes, DatagramMetadata])
        packet, reply = answer
        assert packet == b"back"
        assert reply.local_address == client.local_address
        assert reply.timestamp is not None
        assert start <= reply.timestamp <= time.time()
        assert (reply.tos, reply.ecn) == (0, 0)
        assert reply.ttl is not None


async def test_wildcard_bind_tells_the_destination(anyio_backend: Any) -> None:
    async with await anydgram.open_udp_endpoint(None, 0, receive_metadata=True) as endpoint:
        port = port_of(endpoint)
        for destination in ("127.0.0.1", "127.0.0.2"):
            with sender(socket.AF_INET) as peer:
                start = time.time()
                peer.sendto(destination.encode(), (destination, port))
                with anyio.fail_after(5):
                    packet, _, metadata = await endpoint.recv_packet_with_metadata()
                check(metadata, (start, time.time()), (destination, port))
                assert packet == destination.encode()


@needs_ipv6
async def test_ipv6_wildcard_bind_tells_the_destination(anyio_backend: Any) -> None:
    async with await anydgram.open_udp_endpoint(
        None, 0, family=socket.AF_INET6, receive_metadata=True
    ) as endpoint:
        port = port_of(endpoint)
        with sender(socket.AF_INET6) as peer:
            start = time.time()
            peer.sendto(b"six", ("::1", port))
            with anyio.fail_after(5):
                _, _, metadata = await endpoint.recv_packet_with_metadata()
        check(metadata, (start, time.time()), ("::1", port, 0, 0))


@needs_ipv6
async def test_dual_stack_socket_reports_ipv4_mapped_destinations(anyio_backend: Any) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    _metadata.enable_metadata(sock)
    sock.bind(("::", 0))
    port = sock.getsockname()[1]
    async with anydgram.DatagramEndpoint._adopt(sock, None, metadata=True) as endpoint:
        for destination in ("127.0.0.1", "127.0.0.2"):
            with sender(socket.AF_INET) as peer:
                start = time.time()
                peer.sendto(b"four", (destination, port))
                with anyio.fail_after(5):
                    _, address, metadata = await endpoint.recv_packet_with_metadata()
                assert address == ("::ffff:127.0.0.1", peer.getsockname()[1], 0, 0)
            check(metadata, (start, time.time()), (f"::ffff:{destination}", port, 0, 0))


async def test_without_receive_metadata_the_call_is_refused(
    anyio_backend: Any, tmp_path: Any
) -> None:
    async with await anydgram.open_udp_endpoint("127.0.0.1", 0) as endpoint:
        with pytest.raises(ValueError, match="receive_metadata=True"):
            await endpoint.recv_packet_with_metadata()
        async with await anydgram.connect_udp("127.0.0.1", port_of(endpoint)) as client:
            with pytest.raises(ValueError, match="receive_metadata=True"):
                await client.recv_packet_with_metadata()
    path = str(tmp_path / "unix.sock")
    async with await anydgram.open_unix_datagram_endpoint(path) as unix:
        with pytest.raises(ValueError, match="carry no receive metadata"):
            await unix.recv_packet_with_metadata()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        pytest.raises(ValueError, match="UDP"),
    ):
        _metadata.enable_metadata(sock)


@pytest.mark.parametrize(("tos", "error"), [("1", TypeError), (True, TypeError), (256, ValueError)])
async def test_bad_tos_is_refused(anyio_backend: Any, tos: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="tos"):
        await anydgram.open_udp_endpoint("127.0.0.1", 0, tos=tos)
    with pytest.raises(error, match="tos"):
        await anydgram.connect_udp("127.0.0.1", 9, tos=tos)
    with pytest.raises(error, match="tos"):
        DatagramServer("127.0.0.1", 0, _record, tos=tos)


# -- truncated control messages -----------------------------------------------------------------


async def test_truncated_control_area_is_counted_and_the_datagram_delivered(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for the timestamp only (the kernel writes it first): the rest is cut off.
    monkeypatch.setattr(_pktinfo, "CONTROL_SIZE", socket.CMSG_SPACE(16))
    async with await anydgram.open_udp_endpoint("127.0.0.1", 0, receive_metadata=True) as endpoint:
        with sender(socket.AF_INET) as peer:
            start = time.time()
            peer.sendto(b"cut", endpoint.local_address)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                packet, _, metadata = await endpoint.recv_packet_with_metadata()
        assert packet == b"cut"
        assert metadata.timestamp is not None
        assert start <= metadata.timestamp <= time.time()
        assert (metadata.ttl, metadata.tos, metadata.local_address) == (None, None, None)
        assert endpoint.statistics().metadata_truncated == 1


# -- servers: request.metadata -------------------------------------------------------------------

_seen: list[DatagramMetadata | None] = []


async def _record(request: DatagramRequest[bytes, bytes]) -> bytes:
    _seen.append(request.metadata)
    return request.packet


async def _serve_and_send(
    host: str | None, destinations: Sequence[tuple[int, str]], **options: Any
) -> list[tuple[DatagramMetadata | None, tuple[float, float], int]]:
    """Serve with ``_record``; send one datagram to each destination and wait for its echo."""
    _seen.clear()
    results: list[tuple[DatagramMetadata | None, tuple[float, float], int]] = []
    server = DatagramServer(host, 0, _record, **options)
    async with server.serving(grace_period=1.0) as addresses:
        port = addresses[0][1]
        for family, destination in destinations:
            with sender(family) as peer:
                peer.settimeout(5)
                start = time.time()
                peer.sendto(b"echo", (destination, port))
                assert await anyio.to_thread.run_sync(peer.recv, 100) == b"echo"
                results.append((_seen[-1], (start, time.time()), port))
        assert server.statistics().metadata_truncated == 0
    return results


@pytest.mark.parametrize("batched", ["batched", "portable"])
async def test_server_handlers_read_request_metadata(
    anyio_backend: Any,
    family_host: tuple[int, str],
    batched: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if batched == "portable":
        monkeypatch.setenv("ANYDGRAM_BATCHED_SYSCALLS", "0")
    family, host = family_host
    results = await _serve_and_send(host, [(family, host)], receive_metadata=True)
    for metadata, window, port in results:
        local = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        check(metadata, window, local)


async def test_server_mmsg_slots_keep_each_datagrams_metadata(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not mmsg_available():
        pytest.skip("no recvmmsg here")
    monkeypatch.delenv("ANYDGRAM_BATCHED_SYSCALLS", raising=False)
    _seen.clear()
    server = DatagramServer("127.0.0.1", 0, _record, receive_metadata=True)
    async with server.serving(grace_period=1.0) as addresses:
        (transport,) = server._life.transports
        assert isinstance(strategy_of(transport.core), RecvMmsg)
        port = addresses[0][1]
        with sender(socket.AF_INET, ttl=3, tos=0x04) as slow, sender(socket.AF_INET) as fast:
            slow.settimeout(5)
            fast.settimeout(5)
            start = time.time()
            for i in range(10):  # alternate, so one recvmmsg call may take both kinds
                (slow if i % 2 else fast).sendto(b"x", ("127.0.0.1", port))
            for _ in range(5):
                await anyio.to_thread.run_sync(slow.recv, 10)
                await anyio.to_thread.run_sync(fast.recv, 10)
        window = (start, time.time())
    assert len(_seen) == 10
    by_ttl = sorted(_seen, key=lambda m: m.ttl if m is not None and m.ttl else 0)
    for metadata in by_ttl[:5]:
        check(metadata, window, ("127.0.0.1", port), ttl=3, tos=0x04)
    for metadata in by_ttl[5:]:
        check(metadata, window, ("127.0.0.1", port))


async def test_wildcard_server_reports_each_destination(anyio_backend: Any) -> None:
    targets = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "127.0.0.2")]
    if _HAS_IPV6:
        targets.append((socket.AF_INET6, "::1"))
    results = await _serve_and_send(None, targets, receive_metadata=True)
    for (family, destination), (metadata, window, port) in zip(targets, results, strict=True):
        local = (destination, port) if family == socket.AF_INET else (destination, port, 0, 0)
        check(metadata, window, local)


async def test_server_without_receive_metadata_gives_none(anyio_backend: Any) -> None:
    results = await _serve_and_send("127.0.0.1", [(socket.AF_INET, "127.0.0.1")])
    assert [metadata for metadata, _, _ in results] == [None]


async def test_server_tos_marks_its_replies(anyio_backend: Any) -> None:
    async with (
        DatagramServer("127.0.0.1", 0, _record, tos=0x2A).serving(grace_period=1.0) as addresses,
        await anydgram.connect_udp("127.0.0.1", addresses[0][1], receive_metadata=True) as client,
    ):
        await client.send_packet(b"mark me")
        with anyio.fail_after(5):
            _, metadata = await client.recv_packet_with_metadata()
        assert (metadata.tos, metadata.ecn) == (0x2A, 2)


# -- GRO: one metadata for every datagram of a coalesced buffer -----------------------------------


async def test_gro_segments_share_their_buffers_metadata(anyio_backend: Any) -> None:
    if reason := gro_refused(socket.AF_INET):
        pytest.skip(reason)
    async with (
        await anydgram.open_udp_endpoint("127.0.0.1", 0, receive_metadata=True) as endpoint,
        await anydgram.connect_udp(
            "127.0.0.1",
            port_of(endpoint),
            tos=_TOS,
        ) as client,
    ):
        client.socket.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, _TTL)
        await client.send_packet(b"first")
        with anyio.fail_after(5):
            assert await endpoint.recv_packets() == [(b"first", client.local_address)]
        if not isinstance(strategy_of(core_of(endpoint)), RecvGro):
            pytest.skip("recv_packets did not choose UDP_GRO (ANYDGRAM_BATCHED_SYSCALLS=0?)")
        start = time.time()
        await client.send_packets([bytes([i]) * 100 for i in range(8)])  # one GSO send
        got: list[tuple[bytes, Any, DatagramMetadata]] = []
        with anyio.fail_after(5):
            while len(got) < 8:
                got.append(await endpoint.recv_packet_with_metadata())
        window = (start, time.time())
        local = endpoint.local_address
    assert [packet for packet, _, _ in got] == [bytes([i]) * 100 for i in range(8)]
    for _, _, metadata in got:
        check(metadata, window, local)


# -- the memory network: the same shape ----------------------------------------------------------


async def test_memory_network_fills_timestamp_and_destination(anyio_backend: Any) -> None:
    net = MemoryNetwork()
    async with (
        await anydgram.open_udp_endpoint("0.0.0.0", 5000, network=net, receive_metadata=True) as ep,
        await anydgram.connect_udp("127.0.0.1", 5000, network=net, receive_metadata=True) as c,
    ):
        start = time.time()
        await c.send_packet(b"mem")
        with anyio.fail_after(5):
            packet, address, metadata = await ep.recv_packet_with_metadata()
        assert (packet, address) == (b"mem", c.local_address)
        assert metadata.timestamp is not None
        assert start <= metadata.timestamp <= time.time()
        assert metadata.local_address == ("127.0.0.1", 5000)
        assert (metadata.ttl, metadata.tos, metadata.ecn) == (None, None, None)
        await ep.send_packet(b"back", address)
        with anyio.fail_after(5):
            _, reply = await c.recv_packet_with_metadata()
        assert reply.local_address == c.local_address
    _seen.clear()
    server = DatagramServer("127.0.0.1", 5001, _record, network=net, receive_metadata=True)
    async with (
        server.serving(grace_period=1.0),
        await net.connect_udp("127.0.0.1", 5001) as client,
    ):
        await client.send_packet(b"served")
        with anyio.fail_after(5):
            assert await client.recv_packet() == b"served"
    assert _seen[0] is not None
    assert _seen[0].local_address == ("127.0.0.1", 5001)
    assert _seen[0].timestamp is not None
