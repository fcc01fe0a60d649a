"""The behaviour every endpoint shares, on every backend and address family (DESIGN.md table).

Each case runs on every implementation (``async``: the async endpoints; ``sync``: the blocking
ones behind an async adapter; ``memory``: async endpoints on ``anydgram.testing.MemoryNetwork``)
unless it asks for ``async_harness``: those cases need what only the async API has, cancel
scopes around a receive or anyio's typed attributes. Cases about real sockets (options, file
descriptors, kernel buffers, binding the freed address with a socket) ask for
``socket_harness``, which leaves the memory network out.
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import random
import socket
import time
from typing import Any

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramTooLargeError,
)
from anydgram._endpoint_base import BaseEndpoint
from anydgram.serializers import BytesSerializer, JSONSerializer
from endpoint_harness import (
    KINDS,
    MEMORY,
    Harness,
    RawPeer,
    harness_fixture,
    harness_params,
    wait_until,
)

harness = harness_fixture("harness", harness_params(KINDS) + harness_params([MEMORY], ["async"]))


# For cases about real sockets: every kind but the memory network.
socket_harness = harness_fixture("socket_harness", harness_params(KINDS))


# For cases only the async API can express (cancel scopes, typed attributes).
async_harness = harness_fixture("async_harness", harness_params([*KINDS, MEMORY], ["async"]))


# For cases that exist only for IP sockets (ICMP errors, the UDP size limit).
ip_harness = harness_fixture(
    "ip_harness", harness_params([k for k in KINDS if k.startswith("udp")])
)


unix_harness = harness_fixture(
    "unix_harness", harness_params([k for k in KINDS if k.startswith("unix")])
)


def small_protocol(limit: int) -> DatagramProtocol[bytes, bytes]:
    return DatagramProtocol(BytesSerializer(), max_datagram_size=limit)


# -- round trips -----------------------------------------------------------------------------


async def test_client_round_trip(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    await client.send_packet(b"ping")
    with anyio.fail_after(5):
        data, address = await peer.recv()
    assert data == b"ping"
    assert address == client.local_address
    await peer.send(b"pong", address)
    with anyio.fail_after(5):
        assert await client.recv_packet() == b"pong"
    assert client.remote_address == peer.address
    stats = client.statistics()
    assert (stats.datagrams_sent, stats.datagrams_received) == (1, 1)
    assert (stats.bytes_sent, stats.bytes_received) == (4, 4)


async def test_endpoint_round_trip(harness: Harness) -> None:
    peer = harness.peer()
    endpoint = await harness.endpoint()
    await endpoint.send_packet(b"hello", peer.address)
    with anyio.fail_after(5):
        data, address = await peer.recv()
    assert (data, address) == (b"hello", endpoint.local_address)
    await peer.send(b"back", endpoint.local_address)
    with anyio.fail_after(5):
        packet, sender = await endpoint.recv_packet()
    assert (packet, sender) == (b"back", peer.address)


async def test_zero_length_datagrams(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    await client.send_packet(b"")
    with anyio.fail_after(5):
        data, address = await peer.recv()
    assert data == b""
    await peer.send(b"", address)
    with anyio.fail_after(5):
        assert await client.recv_packet() == b""


# -- sizes -----------------------------------------------------------------------------------


async def test_too_large_is_refused_before_sending(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer, protocol=small_protocol(100))
    with pytest.raises(DatagramTooLargeError) as info:
        await client.send_packet(b"x" * 101)
    assert (info.value.size, info.value.limit) == (101, 100)
    await client.send_packet(b"after")
    with anyio.fail_after(5):
        data, _ = await peer.recv()
    assert data == b"after"  # the refused datagram never left
    assert client.statistics().datagrams_sent == 1


async def test_largest_udp_datagram_goes_through(ip_harness: Harness) -> None:
    peer = ip_harness.peer()
    client = await ip_harness.client(peer, send_buffer_size=1 << 18)
    await client.send_packet(b"x" * 65507)  # the protocol's default limit, IPv4's own
    with anyio.fail_after(5):
        data, _ = await peer.recv()
    assert len(data) == 65507
    with pytest.raises(DatagramTooLargeError):
        await client.send_packet(b"x" * 65508)


async def test_kernel_size_refusal_is_datagram_too_large(unix_harness: Harness) -> None:
    # A Unix datagram may not exceed the sender's buffer: the kernel says EMSGSIZE.
    peer = unix_harness.peer()
    client = await unix_harness.client(peer)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(DatagramTooLargeError) as info:
        await client.send_packet(b"x" * 20000)
    assert info.value.size == 20000
    assert client.statistics().datagrams_sent == 0
    await client.send_packet(b"small")  # still usable
    with anyio.fail_after(5):
        assert (await peer.recv())[0] == b"small"


async def test_oversize_datagrams_are_counted_not_parsed(harness: Harness) -> None:
    peer = harness.peer()
    protocol = DatagramProtocol(JSONSerializer(), max_datagram_size=100)
    client = await harness.client(peer, protocol=protocol)
    await client.send_packet({"hello": 1})
    with anyio.fail_after(5):
        _, address = await peer.recv()
    # 101 bytes of invalid JSON: parsing it would raise, so no error proves it was never parsed.
    await peer.send(b"\xff" * 101, address)
    await peer.send(b"[1]", address)
    with anyio.fail_after(5):
        assert await client.recv_packet() == [1]
    stats = client.statistics()
    assert (stats.oversize, stats.parse_errors, stats.datagrams_received) == (1, 0, 1)


# -- errors from the peer ------------------------------------------------------------------


async def test_parse_error_keeps_evidence_and_endpoint_usable(harness: Harness) -> None:
    peer = harness.peer()
    endpoint = await harness.endpoint(protocol=DatagramProtocol(JSONSerializer()))
    await peer.send(b"\xff not json", endpoint.local_address)
    await peer.send(b'{"ok": true}', endpoint.local_address)
    with anyio.fail_after(5), pytest.raises(DatagramProtocolParseError) as info:
        await endpoint.recv_packet()
    assert info.value.data == b"\xff not json"
    assert info.value.address == peer.address
    assert isinstance(info.value.__cause__, anydgram.DeserializeError)
    with anyio.fail_after(5):
        assert await endpoint.recv_packet() == ({"ok": True}, peer.address)
    assert endpoint.statistics().parse_errors == 1


async def test_client_parse_error_names_the_peer(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer, protocol=DatagramProtocol(JSONSerializer()))
    await client.send_packet(1)
    with anyio.fail_after(5):
        _, address = await peer.recv()
    await peer.send(b"{", address)
    with anyio.fail_after(5), pytest.raises(DatagramProtocolParseError) as info:
        await client.recv_packet()
    assert (info.value.data, info.value.address) == (b"{", peer.address)


def _free_udp_port(kind: str) -> int:
    family, host = (socket.AF_INET, "127.0.0.1") if kind == "udp4" else (socket.AF_INET6, "::1")
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connected_client_sees_refusal_then_recovers(ip_harness: Harness) -> None:
    host = "127.0.0.1" if ip_harness.kind == "udp4" else "::1"
    port = _free_udp_port(ip_harness.kind)
    client = await ip_harness.connect_udp(host, port)
    await client.send_packet(b"anyone?")  # answered by ICMP port unreachable
    with anyio.fail_after(5), pytest.raises(ConnectionRefusedError):
        await client.recv_packet()
    assert client.statistics().icmp_errors == 1
    # The peer comes back on the same port: the client works again.
    family = socket.AF_INET if ip_harness.kind == "udp4" else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, port))
    peer = RawPeer(sock)
    ip_harness.stack.callback(peer.close)
    await client.send_packet(b"again")
    with anyio.fail_after(5):
        data, address = await peer.recv()
    assert data == b"again"
    await peer.send(b"welcome back", address)
    with anyio.fail_after(5):
        assert await client.recv_packet() == b"welcome back"


async def test_unix_client_send_to_vanished_peer_is_refused(unix_harness: Harness) -> None:
    peer = unix_harness.peer()
    client = await unix_harness.client(peer)
    peer.close()
    with pytest.raises(ConnectionRefusedError):
        await client.send_packet(b"anyone?")


async def test_unconnected_endpoint_counts_icmp_and_keeps_serving(ip_harness: Harness) -> None:
    endpoint = await ip_harness.endpoint()
    host = "127.0.0.1" if ip_harness.kind == "udp4" else "::1"
    dead = (host, _free_udp_port(ip_harness.kind))
    for _ in range(3):
        await endpoint.send_packet(b"nobody home", dead)
    # Errors are read from the error queue while the endpoint waits, so give it a reader.
    peer = ip_harness.peer()
    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            with anyio.fail_after(10):
                assert await endpoint.recv_packet() == (b"alive", peer.address)

        tg.start_soon(reader)
        await wait_until(lambda: endpoint.statistics().icmp_errors >= 1)
        # No busy loop: with the error queue drained, waiting costs (almost) no CPU.
        cpu_before = time.process_time()
        await anyio.sleep(0.3)
        assert time.process_time() - cpu_before < 0.15
        await peer.send(b"alive", endpoint.local_address)
    assert endpoint.statistics().icmp_errors <= 3
    # Sends to a live peer still work after the errors.
    await endpoint.send_packet(b"still here", peer.address)
    with anyio.fail_after(5):
        assert (await peer.recv())[0] == b"still here"


# -- flow control and cancellation ------------------------------------------------------------


async def test_backpressure_waits_in_kernel_and_every_loss_is_counted(
    socket_harness: Harness,
) -> None:
    harness = socket_harness
    peer = harness.peer()
    endpoint = await harness.endpoint(recv_buffer_size=4096)
    sent = 0
    # Nobody reads while the peer sends: UDP overflows the small kernel buffer (the kernel
    # counts the drops), a Unix peer is told to wait (EAGAIN) instead of anything being lost.
    for i in range(300):
        try:
            peer.sock.sendto(i.to_bytes(4, "big") * 16, endpoint.local_address)
        except BlockingIOError:
            break
        sent += 1
    received = [packet async for packet, _ in endpoint.iter_received_packets(timeout=0)]
    stats = endpoint.statistics()
    assert len(received) == stats.datagrams_received
    assert len(set(received)) == len(received)
    assert len(received) + stats.kernel_drops == sent
    if harness.is_udp:
        assert stats.kernel_drops > 0
    else:
        assert stats.kernel_drops == 0
        assert sent < 300  # the sender was held back, nothing dropped


async def test_cancelled_receives_lose_nothing(async_harness: Harness) -> None:
    peer = async_harness.peer()
    endpoint = await async_harness.endpoint(recv_buffer_size=1 << 20)
    total = 2000
    received: list[int] = []
    rng = random.Random(1234)
    done = anyio.Event()

    async def sender() -> None:
        for i in range(total):
            await peer.send(i.to_bytes(4, "big"), endpoint.local_address)
            if i % 50 == 49:
                await anyio.sleep(0.001)  # paced, so loopback need not drop anything
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        with anyio.fail_after(30):
            while True:
                with anyio.move_on_after(rng.choice([0, 1e-6, 1e-5, 1e-4, 1e-3])):
                    packet, _ = await endpoint.recv_packet()
                    received.append(int.from_bytes(packet, "big"))
                if done.is_set():
                    received.extend(
                        [
                            int.from_bytes(p, "big")
                            async for p, _ in endpoint.iter_received_packets(timeout=0)
                        ]
                    )
                    break
    assert len(received) == len(set(received)), "a datagram was delivered twice"
    drops = endpoint.statistics().kernel_drops
    assert len(received) + drops == total


async def test_concurrent_senders_and_receivers(harness: Harness) -> None:
    peer = harness.peer()
    # Room for every datagram in the kernel buffer, so none is dropped while tasks race.
    client = await harness.client(peer, recv_buffer_size=1 << 20)
    per_task = 100

    async def send_all(task: int) -> None:
        for i in range(per_task):
            await client.send_packet(f"{task}:{i}".encode())

    got: set[bytes] = set()

    async def peer_reads() -> None:
        # Read while the tasks send: a Unix peer's queue holds only a few datagrams.
        for _ in range(4 * per_task):
            got.add((await peer.recv())[0])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer_reads)
            for task in range(4):
                tg.start_soon(send_all, task)
    assert len(got) == 4 * per_task

    received: list[bytes] = []

    async def receive_some() -> None:
        while True:
            received.append(await client.recv_packet())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(receive_some)
            for i in range(200):
                await peer.send(str(i).encode(), client.local_address)
            await wait_until(lambda: len(received) == 200)
            tg.cancel_scope.cancel()
    assert sorted(received) == sorted(str(i).encode() for i in range(200))


# -- iteration budgets -------------------------------------------------------------------------


async def test_iterate_with_zero_budget_yields_only_what_waits(harness: Harness) -> None:
    peer = harness.peer()
    endpoint = await harness.endpoint()
    assert [p async for p in endpoint.iter_received_packets()] == []
    # Loopback delivers into the receiver's queue before sendto() returns.
    for i in range(5):
        await peer.send(bytes([i]), endpoint.local_address)
    start = time.monotonic()
    got = [packet async for packet, _ in endpoint.iter_received_packets(timeout=0)]
    assert got == [bytes([i]) for i in range(5)]
    assert time.monotonic() - start < 0.1


async def test_iterate_budget_is_for_the_whole_iteration(harness: Harness) -> None:
    peer = harness.peer()
    endpoint = await harness.endpoint()
    for i in range(5):
        await peer.send(bytes([i]), endpoint.local_address)
    start = time.monotonic()
    got = [packet async for packet, _ in endpoint.iter_received_packets(timeout=0.2)]
    elapsed = time.monotonic() - start
    assert got == [bytes([i]) for i in range(5)]
    assert 0.19 <= elapsed <= 1.0


async def test_iterate_without_budget_waits_until_cancelled(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    await client.send_packet(b"hi")
    with anyio.fail_after(5):
        _, address = await peer.recv()
    await peer.send(b"first", address)
    got: list[bytes] = []
    with anyio.move_on_after(0.3) as scope:
        async for packet in client.iter_received_packets(timeout=None):
            got.append(packet)
    assert scope.cancelled_caught
    assert got == [b"first"]


async def test_leaving_an_iteration_early_closes_it_at_once(
    async_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The generator under iter_received_packets() is closed with it, not left to the garbage
    # collector (trio warns about such generators; asyncio closes them in a later task).
    closed: list[str] = []
    original: Any = vars(BaseEndpoint)["_iter_datagrams"]

    async def tracked(self: Any, timeout: float | None) -> Any:
        try:
            async with contextlib.aclosing(original(self, timeout)) as items:
                async for item in items:
                    yield item
        finally:
            closed.append("closed")

    monkeypatch.setattr(BaseEndpoint, "_iter_datagrams", tracked)
    peer = async_harness.peer()
    endpoint = await async_harness.endpoint()
    for i in range(3):
        await peer.send(bytes([i]), endpoint.local_address)
    packets: Any = endpoint.iter_received_packets(timeout=5)
    with anyio.fail_after(5):
        first, _ = await packets.__anext__()
    assert first == b"\0"
    assert closed == []
    await packets.aclose()
    assert closed == ["closed"]
    client = await async_harness.client(peer)
    await client.send_packet(b"hi")
    with anyio.fail_after(5):
        _, address = await peer.recv()
    await peer.send(b"reply", address)
    replies: Any = client.iter_received_packets(timeout=5)
    with anyio.fail_after(5):
        assert await replies.__anext__() == b"reply"
    await replies.aclose()
    assert closed == ["closed", "closed"]


async def test_negative_budget_is_refused(harness: Harness) -> None:
    endpoint = await harness.endpoint()
    with pytest.raises(ValueError, match="timeout"):
        async for _ in endpoint.iter_received_packets(timeout=-1):
            pass


# -- closing ---------------------------------------------------------------------------------


async def test_aclose_wakes_blocked_receiver_and_frees_the_address(socket_harness: Harness) -> None:
    harness = socket_harness
    endpoint = await harness.endpoint()
    address = endpoint.local_address
    woke_at: list[float] = []
    closed_at = 0.0

    async def blocked() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await endpoint.recv_packet()
        woke_at.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        closed_at = time.monotonic()
        await endpoint.aclose()
    assert len(woke_at) == 1
    assert woke_at[0] - closed_at < 0.1
    # The address is free the moment aclose() returns.
    family = {"udp4": socket.AF_INET, "udp6": socket.AF_INET6}.get(harness.kind, socket.AF_UNIX)
    with socket.socket(family, socket.SOCK_DGRAM) as again:
        again.bind(address)
    with pytest.raises(anyio.ClosedResourceError):
        await endpoint.send_packet(b"late", address)
    with pytest.raises(anyio.ClosedResourceError):
        await endpoint.recv_packet()
    await endpoint.aclose()  # idempotent


# -- adoption, proxies and attributes ---------------------------------------------------------


async def test_socket_proxy(socket_harness: Harness) -> None:
    harness = socket_harness
    peer = harness.peer()
    client = await harness.client(peer)
    proxy = client.socket
    assert not hasattr(proxy, "close")
    assert proxy.getsockname() == client.local_address
    assert proxy.getpeername() == peer.address
    proxy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    assert proxy.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
    assert proxy.fileno() >= 0


async def test_typed_attributes(async_harness: Harness) -> None:
    harness = async_harness
    peer = harness.peer()
    client = await harness.client(peer)
    assert isinstance(client, anydgram.DatagramClient)
    proxy = client.socket
    assert client.extra(anyio.abc.SocketAttribute.local_address) == client.local_address
    assert client.extra(anyio.abc.SocketAttribute.remote_address) == peer.address
    assert client.extra(anyio.abc.SocketAttribute.family) == proxy.family
    if harness.is_udp:
        assert client.extra(anyio.abc.SocketAttribute.remote_port) == peer.address[1]
        local = client.local_address
        assert isinstance(local, tuple)
        assert client.extra(anyio.abc.SocketAttribute.local_port) == local[1]


async def test_buffer_sizes_are_reported(socket_harness: Harness) -> None:
    harness = socket_harness
    endpoint = await harness.endpoint(recv_buffer_size=1 << 16, send_buffer_size=1 << 15)
    stats = endpoint.statistics()
    assert stats.recv_buffer_size > 0
    assert stats.send_buffer_size > 0
    assert stats.recv_buffer_size >= 1 << 16  # Linux doubles what was asked
    assert stats.send_buffer_size >= 1 << 15


async def test_from_socket_adopts_and_validates(socket_harness: Harness) -> None:
    harness = socket_harness
    peer = harness.peer()
    family = peer.sock.family
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect(peer.sock.getsockname())
    client = harness.adopt_client(sock)
    async with client:
        await client.send_packet(b"adopted")
        with anyio.fail_after(5):
            assert (await peer.recv())[0] == b"adopted"
    assert sock.fileno() == -1  # ownership passed to the client

    with (
        socket.socket(family, socket.SOCK_DGRAM) as unconnected,
        pytest.raises(OSError, match="not connected") as info,
    ):
        harness.adopt_client(unconnected)
    assert info.value.errno == errno.ENOTCONN
    with socket.socket(family, socket.SOCK_DGRAM) as connected:
        connected.connect(peer.sock.getsockname())
        with pytest.raises(ValueError, match="connected"):
            harness.adopt_endpoint(connected)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream,
        pytest.raises(ValueError, match="SOCK_DGRAM"),
    ):
        harness.adopt_endpoint(stream)
    with pytest.raises(TypeError):
        harness.adopt_endpoint("not a socket")  # type: ignore[arg-type]


# -- Unix socket files: a failed bind leaves the path alone; close removes only our own file --


async def test_failed_local_bind_leaves_a_regular_file(tmp_path: pathlib.Path) -> None:
    server = await anydgram.open_unix_datagram_endpoint(tmp_path / "server")
    local = tmp_path / "taken"
    local.write_text("not ours")
    async with server:
        with pytest.raises(OSError, match="in use") as info:
            await anydgram.connect_unix_datagram(tmp_path / "server", local_path=local)
    assert info.value.errno == errno.EADDRINUSE
    assert local.read_text() == "not ours"


async def test_failed_bind_leaves_another_live_socket(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "live"
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with owner:
        owner.bind(str(path))
        with pytest.raises(OSError, match="in use"):
            await anydgram.connect_unix_datagram(path, local_path=path)
        with pytest.raises(OSError, match="in use"):
            await anydgram.open_unix_datagram_endpoint(path)
        assert path.exists()
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(b"still there", str(path))
        assert owner.recv(64) == b"still there"


async def test_failed_connect_removes_the_file_it_bound(tmp_path: pathlib.Path) -> None:
    local = tmp_path / "client"
    with pytest.raises(FileNotFoundError):
        await anydgram.connect_unix_datagram(tmp_path / "nobody", local_path=local)
    assert not local.exists()


async def test_close_leaves_a_path_rebound_by_someone_else(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "endpoint"
    server = await anydgram.open_unix_datagram_endpoint(tmp_path / "server")
    async with server:
        for opened in (
            anydgram.open_unix_datagram_endpoint(path),
            anydgram.connect_unix_datagram(tmp_path / "server", local_path=path),
        ):
            endpoint = await opened
            path.unlink()
            newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            with newcomer:
                newcomer.bind(str(path))
                await endpoint.aclose()
                assert path.exists()
            path.unlink()
    # Still ours at close: removed.
    endpoint = await anydgram.open_unix_datagram_endpoint(path)
    await endpoint.aclose()
    assert not path.exists()


# -- multicast: a missing interface is a ValueError (nothing is joined, nothing is sent) ------


def _missing_interface_index() -> int:
    return max(index for index, _ in socket.if_nameindex()) + 1000


def _join_with_missing_interfaces(endpoint: Any, family: int) -> None:
    group = "239.255.42.99" if family == socket.AF_INET else "ff15::4299"
    missing: list[str | int] = [_missing_interface_index(), "anydgram-no-such-if0"]
    if family == socket.AF_INET:
        missing.append("192.0.2.77")  # TEST-NET-1: no interface here has it
    for interface in missing:
        with pytest.raises(ValueError, match=r"no such network interface|unknown") as info:
            endpoint.join_multicast_group(group, interface)
        cause = info.value.__cause__
        if cause is not None:
            assert isinstance(cause, OSError)
            assert cause.errno == errno.ENODEV


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_joining_on_a_missing_interface_is_a_value_error(host: str) -> None:
    async with await anydgram.open_udp_endpoint(host) as endpoint:
        _join_with_missing_interfaces(endpoint, endpoint.socket.family)
    with anydgram.SyncDatagramEndpoint(host) as sync_endpoint:
        _join_with_missing_interfaces(sync_endpoint, sync_endpoint.socket.family)


# -- datagrams still waiting at close are counted, not lost from the books ------------------


async def test_datagrams_waiting_at_close_are_counted(harness: Harness) -> None:
    peer = harness.peer()
    endpoint = await harness.endpoint()
    client = await harness.client(peer)
    for i in range(6):
        await peer.send(b"e%d" % i, endpoint.local_address)
        await peer.send(b"c%d" % i, client.local_address)
    with anyio.fail_after(5):
        assert (await endpoint.recv_packet())[0] == b"e0"
        assert await client.recv_packet() == b"c0"
    assert endpoint.statistics().unread_at_close == 0  # open: nothing counted yet
    await endpoint.aclose()
    await client.aclose()
    await endpoint.aclose()  # closing again counts nothing twice
    for stats in (endpoint.statistics(), client.statistics()):
        assert (stats.datagrams_received, stats.unread_at_close) == (1, 5)
