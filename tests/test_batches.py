"""Batches for users, async: ``send_packets`` and ``recv_packets`` (DESIGN.md, "Batches").

Real loopback sockets (IPv4, IPv6, Unix) and the memory network, on asyncio, uvloop and trio.
Each case forces the send path (GSO runs, ``sendmmsg``, one by one) and the receive path
(``UDP_GRO``, ``recvmmsg``, one by one) where it matters and checks the system calls that were
made; with ``ANYDGRAM_BATCHED_SYSCALLS=0`` every socket must take the portable path instead.
The system-call-level cases (GSO run shapes, injected ``EAGAIN``, refusals) are in
``test_batches_paths.py``; the blocking twins in ``test_batches_sync.py``.
"""

from __future__ import annotations

import pathlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramClient,
    DatagramEndpoint,
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramTooLargeError,
)
from anydgram.serializers import BytesSerializer, JSONSerializer
from anydgram.testing import MemoryNetwork
from batch_harness import (
    FAMILY_LIMIT,
    PATTERN,
    RAW_MAX,
    RCVBUF,
    RECV_PATHS,
    SEND_PATHS,
    V4_SIZES,
    V6_SIZES,
    Log,
    Paths,
    Syscalls,
    check_receive_path,
    check_send_path,
    expected_path,
    index_of,
    numbered,
    payloads,
    port_of,
    receive_exactly,
    require_paths,
)
from endpoint_harness import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(
    family_host: tuple[int, str],
) -> AsyncIterator[tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]]]:
    """A client connected to an endpoint over loopback; both carry the family's largest."""
    _, host = family_host
    endpoint = await anydgram.open_udp_endpoint(host, 0, protocol=RAW_MAX, recv_buffer_size=RCVBUF)
    async with endpoint:
        client = await anydgram.connect_udp(
            host, port_of(endpoint), protocol=RAW_MAX, recv_buffer_size=RCVBUF
        )
        async with client:
            yield client, endpoint


async def _warm_up(
    client: DatagramClient[Any, Any], endpoint: DatagramEndpoint[Any, Any], *, back: bool = True
) -> None:
    """One datagram each way, taken by ``recv_packets``: each receiver has chosen its batch
    receive before the test's batch arrives (so ``UDP_GRO`` buffers can form)."""
    await client.send_packet(b"hello")
    with anyio.fail_after(10):
        assert [packet for packet, _ in await endpoint.recv_packets()] == [b"hello"]
    if back:
        await endpoint.send_packet(b"hello", client.local_address)
        with anyio.fail_after(10):
            assert await client.recv_packets() == [b"hello"]


async def _nothing_more(
    sender: DatagramClient[bytes, bytes], receiver: DatagramEndpoint[bytes, bytes]
) -> None:
    """The receiver's next datagram is a fresh marker: nothing was duplicated before it."""
    await sender.send_packet(b"marker")
    with anyio.fail_after(10):
        assert [packet for packet, _ in await receiver.recv_packets()] == [b"marker"]


# -- byte-exact round trips through every path ---------------------------------------------------


@pytest.mark.parametrize("recv_path", RECV_PATHS)
@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_round_trip_is_byte_exact_on_every_path(
    monkeypatch: pytest.MonkeyPatch,
    family_host: tuple[int, str],
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    send_path: str,
    recv_path: str,
) -> None:
    family, _ = family_host
    require_paths(family, send_path, recv_path)
    client, endpoint = pair
    paths, syscalls = Paths(monkeypatch), Syscalls(monkeypatch)
    for side in pair:
        paths.force(side, send_path, recv_path)
    await _warm_up(client, endpoint)
    logs: dict[int, Log] = {id(side): syscalls.watch(side).log for side in pair}
    batch = payloads(V4_SIZES if family == socket.AF_INET else V6_SIZES)
    total = sum(map(len, batch))

    # Connected to unconnected...
    await client.send_packets(batch)
    got = await receive_exactly(endpoint.recv_packets, len(batch))
    assert [packet for packet, _ in got] == batch
    assert {address for _, address in got} == {client.local_address}
    # ... and back, each datagram addressed.
    await endpoint.send_packets([(packet, client.local_address) for packet in batch])
    assert await receive_exactly(client.recv_packets, len(batch)) == batch

    send, recv = expected_path(send_path), expected_path(recv_path)
    for side in pair:
        check_send_path(logs[id(side)], send, len(batch))
        check_receive_path(side, logs[id(side)], recv)
    if send == "gso" and recv == "gro":
        # The GSO runs reached the receivers whole and were cut back into their datagrams.
        assert logs[id(endpoint)].gro_trains
        assert logs[id(client)].gro_trains
    for side in pair:
        stats = side.statistics()
        assert (stats.datagrams_sent, stats.bytes_sent) == (len(batch) + 1, total + 5)
        assert (stats.datagrams_received, stats.bytes_received) == (len(batch) + 1, total + 5)
        assert (stats.oversize, stats.send_errors, stats.parse_errors) == (0, 0, 0)
        assert stats.kernel_drops == 0
    await _nothing_more(client, endpoint)


async def test_too_large_for_the_family_is_refused_before_anything_is_sent(
    family_host: tuple[int, str],
) -> None:
    family, host = family_host
    limit = FAMILY_LIMIT[family]
    # The protocol allows more than the family carries: the family's limit is the one hit.
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=70000)
    async with (
        await anydgram.open_udp_endpoint(host, 0, protocol=protocol) as endpoint,
        await anydgram.connect_udp(host, port_of(endpoint), protocol=protocol) as client,
    ):
        good = payloads([0, 1200, limit], copies=1)
        with pytest.raises(DatagramTooLargeError) as info:
            await client.send_packets([*good, PATTERN[: limit + 1], *good])
        assert (info.value.size, info.value.limit) == (limit + 1, limit)
        with pytest.raises(DatagramTooLargeError):
            await endpoint.send_packets(
                [(packet, client.local_address) for packet in [*good, PATTERN[: limit + 1]]]
            )
        for side in (client, endpoint):
            assert side.statistics().datagrams_sent == 0
        await client.send_packets(good)  # the limit itself goes
        got = await receive_exactly(endpoint.recv_packets, len(good))
        assert [packet for packet, _ in got] == good  # nothing of the refused batch came first


async def test_a_batch_with_one_bad_packet_sends_nothing(
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
) -> None:
    client, endpoint = pair
    target = client.local_address
    small = DatagramProtocol(BytesSerializer(), max_datagram_size=1000)
    async with DatagramClient.from_socket(_connected_copy(client), protocol=small) as limited:
        with pytest.raises(DatagramTooLargeError) as info:
            await limited.send_packets([b"a" * 1000, b"b" * 1001, b"c"])
        assert (info.value.size, info.value.limit) == (1001, 1000)
        assert limited.statistics().datagrams_sent == 0
    with pytest.raises(TypeError):
        await client.send_packets([b"ok", "not bytes", b"ok"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="item 1"):
        await endpoint.send_packets([(b"ok", target), b"no address"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="address"):
        await endpoint.send_packets([(b"ok", target), (b"ok", "127.0.0.1")])

    def failing() -> Iterator[bytes]:
        yield b"first"
        yield b"second"
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer"):
        await client.send_packets(failing())
    await client.send_packets([])  # an empty batch is no error and sends nothing
    for side in pair:
        assert side.statistics().datagrams_sent == 0
    await _nothing_more(client, endpoint)


def _connected_copy(client: DatagramClient[Any, Any]) -> socket.socket:
    """A new socket connected to ``client``'s peer, from a fresh port."""
    peer = client.remote_address
    assert isinstance(peer, tuple)
    sock = socket.socket(client.socket.family, socket.SOCK_DGRAM)
    sock.connect(peer)
    return sock


async def test_a_serializer_error_sends_nothing(family_host: tuple[int, str]) -> None:
    _, host = family_host
    protocol = DatagramProtocol(JSONSerializer())
    async with (
        await anydgram.open_udp_endpoint(host, 0, protocol=protocol) as endpoint,
        await anydgram.connect_udp(host, port_of(endpoint), protocol=protocol) as client,
    ):
        with pytest.raises(TypeError):
            await client.send_packets([{"n": 1}, {"n": object()}])
        assert client.statistics().datagrams_sent == 0
        await client.send_packets([{"n": 2}])
        with anyio.fail_after(10):
            assert await endpoint.recv_packets() == [({"n": 2}, client.local_address)]


# -- recv_packets(max_count=...) ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, -64])
async def test_max_count_below_one_is_a_value_error(
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]], bad: int
) -> None:
    for side in pair:
        with anyio.fail_after(5), pytest.raises(ValueError, match="max_count"):
            await side.recv_packets(max_count=bad)


@pytest.mark.parametrize("bad", [1.0, "8", None, True])
async def test_max_count_not_an_int_is_a_type_error(
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]], bad: Any
) -> None:
    for side in pair:
        with anyio.fail_after(5), pytest.raises(TypeError, match="max_count"):
            await side.recv_packets(max_count=bad)


@pytest.mark.parametrize("recv_path", RECV_PATHS)
@pytest.mark.parametrize("max_count", [1, 5, 64, 200])
async def test_recv_packets_returns_one_to_max_count(
    monkeypatch: pytest.MonkeyPatch,
    family_host: tuple[int, str],
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    recv_path: str,
    max_count: int,
) -> None:
    require_paths(family_host[0], "", recv_path)
    client, endpoint = pair
    Paths(monkeypatch).force(endpoint, recv=recv_path)
    await _warm_up(client, endpoint, back=False)
    batch = numbered(300, 1200)  # equal sizes: GSO runs, so GRO trains longer than max_count
    await client.send_packets(batch)
    got = await receive_exactly(endpoint.recv_packets, len(batch), max_count=max_count)
    assert [packet for packet, _ in got] == batch
    await _nothing_more(client, endpoint)


# -- undecodable datagrams -----------------------------------------------------------------------


@pytest.mark.parametrize("recv_path", RECV_PATHS)
async def test_a_batch_stops_before_an_undecodable_datagram(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], recv_path: str
) -> None:
    family, host = family_host
    require_paths(family, "", recv_path)
    protocol = DatagramProtocol(JSONSerializer())
    async with await anydgram.open_udp_endpoint(host, 0, protocol=protocol) as endpoint:
        Paths(monkeypatch).force(endpoint, recv=recv_path)
        with socket.socket(family, socket.SOCK_DGRAM) as raw:
            raw.connect((host, port_of(endpoint)))
            for datagram in (b"1", b"2", b"{bad", b"3", b"[4]"):
                raw.send(datagram)
            sender = raw.getsockname()
            before: list[Any] = []
            with anyio.fail_after(10):
                while True:  # however the kernel batches them, the good ones come first
                    try:
                        before += await endpoint.recv_packets()
                    except DatagramProtocolParseError as exc:
                        error = exc
                        break
            assert before == [(1, sender), (2, sender)]
            assert (error.data, error.address) == (b"{bad", sender)
            assert endpoint.statistics().parse_errors == 1
            # Nothing after it was lost, and it is counted once.
            after = await receive_exactly(endpoint.recv_packets, 2)
            assert after == [(3, sender), ([4], sender)]
            raw.send(b"5")
            with anyio.fail_after(10):
                assert await endpoint.recv_packet() == (5, sender)
        stats = endpoint.statistics()
        assert (stats.parse_errors, stats.datagrams_received) == (1, 6)


# -- waiting for room: cancellation and partial sends (Unix: the kernel really blocks) -----------


class _UnixPeer:
    """A Unix datagram socket that reads only when told; its queue fills otherwise."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.path = path

    def waiting(self) -> list[bytes]:
        got: list[bytes] = []
        while True:
            try:
                got.append(self.sock.recv(1 << 17))
            except BlockingIOError:
                return got

    async def read(self, count: int) -> list[bytes]:
        got: list[bytes] = []
        with anyio.fail_after(10):
            while len(got) < count:
                more = self.waiting()
                if not more:
                    await anyio.wait_readable(self.sock)
                got += more
        return got


@pytest.fixture
def unix_peer(tmp_path: pathlib.Path) -> Iterator[_UnixPeer]:
    peer = _UnixPeer(str(tmp_path / "peer"))
    yield peer
    peer.sock.close()


async def _open_unix_sender(
    kind: str, peer: _UnixPeer, tmp_path: pathlib.Path
) -> DatagramClient[bytes, bytes] | DatagramEndpoint[bytes, bytes]:
    if kind == "client":
        return await anydgram.connect_unix_datagram(
            peer.path, local_path=tmp_path / "client", send_buffer_size=16384
        )
    return await anydgram.open_unix_datagram_endpoint(tmp_path / "endpoint")


async def _send(
    sender: DatagramClient[bytes, bytes] | DatagramEndpoint[bytes, bytes],
    batch: list[bytes],
    peer: _UnixPeer,
) -> None:
    if isinstance(sender, DatagramClient):
        await sender.send_packets(batch)
    else:
        await sender.send_packets([(packet, peer.path) for packet in batch])


async def _blocked_part_way(sender: Any, count: int) -> int:
    """Wait (bounded) until the sender has handed over some of ``count``; how many."""
    await wait_until(lambda: sender.statistics().datagrams_sent > 0, timeout=10)
    sent = sender.statistics().datagrams_sent
    assert 0 < sent < count  # the peer's queue is far smaller than the batch
    return int(sent)


@pytest.mark.parametrize("kind", ["client", "endpoint"])
async def test_a_full_peer_queue_waits_and_resumes_where_it_stopped(
    tmp_path: pathlib.Path, unix_peer: _UnixPeer, kind: str
) -> None:
    sender = await _open_unix_sender(kind, unix_peer, tmp_path)
    batch = numbered(300, 1000)
    async with sender, anyio.create_task_group() as tg:
        tg.start_soon(_send, sender, batch, unix_peer)
        await _blocked_part_way(sender, len(batch))
        # The peer reads now: the rest follows, each datagram once, in order.
        assert await unix_peer.read(len(batch)) == batch
    assert sender.statistics().datagrams_sent == len(batch)
    assert unix_peer.waiting() == []


@pytest.mark.parametrize("kind", ["client", "endpoint"])
async def test_cancelled_mid_batch_sends_nothing_twice(
    tmp_path: pathlib.Path, unix_peer: _UnixPeer, kind: str
) -> None:
    sender = await _open_unix_sender(kind, unix_peer, tmp_path)
    batch = numbered(300, 1000)
    async with sender:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send, sender, batch, unix_peer)
            await _blocked_part_way(sender, len(batch))
            tg.cancel_scope.cancel()
        sent = sender.statistics().datagrams_sent
        # What was handed over arrives, once; nothing else does.
        assert unix_peer.waiting() == batch[:sent]
        assert unix_peer.waiting() == []
        # The caller resumes from datagrams_sent: the peer sees the batch exactly once.
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send, sender, batch[sent:], unix_peer)
            assert await unix_peer.read(len(batch) - sent) == batch[sent:]
        assert sender.statistics().datagrams_sent == len(batch)
        assert unix_peer.waiting() == []


async def test_unix_round_trip_is_byte_exact_and_never_gso(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=1 << 17)
    syscalls = Syscalls(monkeypatch)
    endpoint = await anydgram.open_unix_datagram_endpoint(
        tmp_path / "endpoint", protocol=protocol, send_buffer_size=1 << 20
    )
    async with endpoint:
        client = await anydgram.connect_unix_datagram(
            tmp_path / "endpoint",
            protocol=protocol,
            local_path=tmp_path / "client",
            send_buffer_size=1 << 20,
        )
        async with client:
            logs = [syscalls.watch(side).log for side in (client, endpoint)]
            # Longer than any UDP datagram too: a Unix socket's limit is its buffer.
            batch = payloads([0, 1, 1200, 1200, 65507, 65528, 100000], copies=3)
            total = sum(map(len, batch))
            got: list[tuple[bytes, Any]] = []
            async with anyio.create_task_group() as tg:  # the peer's queue holds only a few
                tg.start_soon(client.send_packets, batch)
                got += await receive_exactly(endpoint.recv_packets, len(batch))
            assert [packet for packet, _ in got] == batch
            assert {address for _, address in got} == {str(tmp_path / "client")}
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    endpoint.send_packets, [(packet, str(tmp_path / "client")) for packet in batch]
                )
                assert await receive_exactly(client.recv_packets, len(batch)) == batch
            for side, log in zip((client, endpoint), logs, strict=True):
                assert not log.gso_segments
                assert log.recvmmsg_calls == 0
                assert log.sent == len(batch)
                stats = side.statistics()
                assert (stats.datagrams_sent, stats.bytes_sent) == (len(batch), total)
                assert (stats.datagrams_received, stats.bytes_received) == (len(batch), total)
            # The connected client batches in sendmmsg slots (a datagram longer than a slot
            # goes alone); the unconnected endpoint sends one by one.
            if expected_path("sendmmsg") == "sendmmsg":
                longer_than_a_slot = sum(len(packet) > 65527 for packet in batch)
                assert logs[0].singles == longer_than_a_slot
                assert logs[0].sendmmsg_datagrams == len(batch) - longer_than_a_slot
            assert logs[1].singles == len(batch)


# -- the memory network ------------------------------------------------------------------------


async def test_memory_network_batches_are_exact() -> None:
    net = MemoryNetwork(queue_size=1000)
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=65527)
    for host, limit in (("127.0.0.1", 65507), ("::1", 65527)):
        endpoint = await net.open_udp_endpoint(host, protocol=protocol)
        address = endpoint.local_address
        assert isinstance(address, tuple)
        client = await net.connect_udp(host, address[1], protocol=protocol)
        async with endpoint, client:
            batch = payloads(V4_SIZES if limit == 65507 else V6_SIZES)
            with pytest.raises(DatagramTooLargeError):
                await client.send_packets([*batch, PATTERN[: limit + 1]])
            await client.send_packets(batch)
            # Everything is waiting already: each call takes exactly max_count while it can.
            assert len(await endpoint.recv_packets(max_count=10)) == 10
            rest = await endpoint.recv_packets(max_count=1000)
            assert len(rest) == len(batch) - 10
            await endpoint.send_packets([(packet, client.local_address) for packet in batch])
            assert await client.recv_packets(max_count=1000) == batch
            for side in (client, endpoint):
                stats = side.statistics()
                assert stats.datagrams_sent == stats.datagrams_received == len(batch)
                assert stats.bytes_sent == stats.bytes_received == sum(map(len, batch))
            sender = client._io._batch_sender
            assert sender is not None
            assert not sender.batched  # no kernel: the portable path


async def test_memory_network_counts_drops_and_stops_before_a_bad_datagram() -> None:
    net = MemoryNetwork(queue_size=8)
    receiver = await net.open_udp_endpoint("127.0.0.1", protocol=DatagramProtocol(JSONSerializer()))
    address = receiver.local_address
    assert isinstance(address, tuple)
    sender = await net.connect_udp("127.0.0.1", address[1])
    async with receiver, sender:
        await sender.send_packets([b"1", b"2", b"{bad", b"3"] + [b"0"] * 16)
        assert receiver.statistics().kernel_drops == 12  # the queue held 8 of the 20
        assert await receiver.recv_packets() == [
            (1, sender.local_address),
            (2, sender.local_address),
        ]
        with pytest.raises(DatagramProtocolParseError) as info:
            await receiver.recv_packets()
        assert info.value.data == b"{bad"
        assert len(await receiver.recv_packets()) == 5
        stats = receiver.statistics()
        assert (stats.parse_errors, stats.datagrams_received, stats.kernel_drops) == (1, 8, 12)
        assert net.statistics().dropped_full_queue == 12


# -- counters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("recv_path", RECV_PATHS)
@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_oversize_is_counted_once_per_datagram_on_every_path(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], send_path: str, recv_path: str
) -> None:
    family, host = family_host
    require_paths(family, send_path, recv_path)
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=1000)
    paths = Paths(monkeypatch)
    async with await anydgram.open_udp_endpoint(host, 0, protocol=protocol) as endpoint:
        port = port_of(endpoint)
        async with await anydgram.connect_udp(host, port) as client:
            paths.force(client, send=send_path)
            paths.force(endpoint, recv=recv_path)
            await _warm_up(client, endpoint, back=False)
            sizes = [500, 1200, 1200, 1200, 999, 1000, 1001, 64, 1000, 1000, 65507]
            batch = payloads(sizes, copies=1)
            await client.send_packets(batch)
            fitting = [packet for packet in batch if len(packet) <= 1000]
            got = await receive_exactly(endpoint.recv_packets, len(fitting))
            assert [packet for packet, _ in got] == fitting
            await client.send_packet(b"marker")
            with anyio.fail_after(10):
                assert [p for p, _ in await endpoint.recv_packets()] == [b"marker"]
            stats = endpoint.statistics()
            assert stats.oversize == len(batch) - len(fitting)
            assert stats.datagrams_received == len(fitting) + 2  # and the hello, the marker
            assert stats.bytes_received == sum(map(len, fitting)) + len(b"hellomarker")


@pytest.mark.parametrize("recv_path", RECV_PATHS)
@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_kernel_drops_make_up_the_difference_exactly(
    monkeypatch: pytest.MonkeyPatch, send_path: str, recv_path: str
) -> None:
    require_paths(socket.AF_INET, send_path, recv_path)
    if expected_path(send_path) == "gso" and expected_path(recv_path) == "gro":
        pytest.skip("the kernel counts a dropped GSO train once, not once per datagram in it")
    paths = Paths(monkeypatch)
    endpoint = await anydgram.open_udp_endpoint("127.0.0.1", 0, recv_buffer_size=4096)
    async with endpoint:
        port = port_of(endpoint)
        async with await anydgram.connect_udp("127.0.0.1", port) as client:
            paths.force(client, send=send_path)
            paths.force(endpoint, recv=recv_path)
            batch = numbered(200, 1000)
            await client.send_packets(batch)  # far more than the receive buffer holds
            got: list[bytes] = []
            with anyio.fail_after(10):
                while len(got) + endpoint.statistics().kernel_drops < len(batch):
                    with anyio.move_on_after(0.05):
                        got += [packet for packet, _ in await endpoint.recv_packets()]
            stats = endpoint.statistics()
            assert len(got) + stats.kernel_drops == len(batch)
            assert stats.kernel_drops > 0
            assert stats.datagrams_received == len(got)
            indices = [index_of(packet) for packet in got]
            assert indices == sorted(set(indices))  # each at most once, in order
            assert got == [batch[i] for i in indices]
            assert client.statistics().datagrams_sent == len(batch)
