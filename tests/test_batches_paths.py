"""Batches at the system-call level: which path a batch takes, and what each path does when the
kernel refuses, fills up or coalesces.

Real loopback UDP sockets on every backend. Loopback never fills a UDP sender's buffer (its
datagrams leave the sender at once), so a full buffer is simulated where the library meets it:
the spies in ``batch_harness`` answer ``EAGAIN`` for the socket under test, at random or after
a budget, and the kernel behind them stays real.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramClient,
    DatagramEndpoint,
    DatagramProtocol,
    DatagramProtocolParseError,
)
from anydgram.serializers import JSONSerializer
from batch_harness import (
    RAW_MAX,
    RCVBUF,
    SEND_PATHS,
    Paths,
    Syscalls,
    batched_by_environment,
    check_send_path,
    closed_address,
    expected_path,
    gro_refused,
    gso_refused,
    numbered,
    payloads,
    port_of,
    receive_exactly,
    receive_strategy,
    refusal,
    require_paths,
)
from endpoint_harness import has_ipv6_loopback, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def gso_and_gro(family_host: tuple[int, str]) -> None:
    """Skip unless the kernel offers UDP GSO and GRO and the batched paths are on."""
    if not batched_by_environment():
        pytest.skip("ANYDGRAM_BATCHED_SYSCALLS=0 (or no Linux batching): no GSO or GRO")
    for reason in (gso_refused(family_host[0]), gro_refused(family_host[0])):
        if reason:
            pytest.skip(reason)


@pytest.fixture
async def pair(
    family_host: tuple[int, str],
) -> AsyncIterator[tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]]]:
    _, host = family_host
    endpoint = await anydgram.open_udp_endpoint(host, 0, protocol=RAW_MAX, recv_buffer_size=RCVBUF)
    async with endpoint:
        client = await anydgram.connect_udp(
            host, port_of(endpoint), protocol=RAW_MAX, recv_buffer_size=RCVBUF
        )
        async with client:
            yield client, endpoint


async def _gro_ready(
    client: DatagramClient[Any, Any], endpoint: DatagramEndpoint[Any, Any]
) -> None:
    """Have the endpoint choose its batch receive (GRO) before the test's datagrams arrive."""
    await client.send_packet(b"hello")
    with anyio.fail_after(10):
        assert [packet for packet, _ in await endpoint.recv_packets()] == [b"hello"]


# -- the environment switch --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "off", "false", "no"])
async def test_the_environment_switch_keeps_every_socket_portable(
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    value: str,
) -> None:
    monkeypatch.setenv("ANYDGRAM_BATCHED_SYSCALLS", value)
    client, endpoint = pair
    syscalls = Syscalls(monkeypatch)
    logs = [syscalls.watch(side).log for side in pair]
    batch = numbered(100, 1200)
    await client.send_packets(batch)
    got = await receive_exactly(endpoint.recv_packets, len(batch))
    await endpoint.send_packets([(packet, client.local_address) for packet, _ in got])
    assert await receive_exactly(client.recv_packets, len(batch)) == batch
    for side, log in zip(pair, logs, strict=True):
        check_send_path(log, "portable", len(batch))
        assert receive_strategy(side) == "portable"
        assert log.recvmmsg_calls == log.recvmsg_calls == 0


# -- GSO runs ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("gso_and_gro")
async def test_a_gso_send_carries_a_run_of_at_most_64_and_the_receiver_splits_it(
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
) -> None:
    client, endpoint = pair
    await _gro_ready(client, endpoint)
    syscalls = Syscalls(monkeypatch)
    sent, received = syscalls.watch(client).log, syscalls.watch(endpoint).log
    # 130 of one size, then a run whose last datagram is shorter, then one of another size.
    batch = [*numbered(130, 100), *numbered(5, 1200), numbered(1, 700)[0], b"x" * 50]
    await client.send_packets(batch)
    assert sent.gso_segments == [64, 64, 2, 6]
    assert sent.sendmmsg_datagrams == 1  # the lone 50-byte datagram
    got = await receive_exactly(endpoint.recv_packets, len(batch))
    assert [packet for packet, _ in got] == batch
    assert received.gro_trains == [64, 64, 2, 6]  # each run arrived whole, and was cut up
    stats = endpoint.statistics()
    assert stats.datagrams_received == len(batch) + 1  # and the hello
    assert stats.bytes_received == sum(map(len, batch)) + 5


@pytest.mark.usefixtures("gso_and_gro")
async def test_runs_end_where_the_address_changes(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str]
) -> None:
    _, host = family_host
    syscalls = Syscalls(monkeypatch)
    async with (
        await anydgram.open_udp_endpoint(host, 0) as sender,
        await anydgram.open_udp_endpoint(host, 0, recv_buffer_size=RCVBUF) as first,
        await anydgram.open_udp_endpoint(host, 0, recv_buffer_size=RCVBUF) as second,
    ):
        log = syscalls.watch(sender).log
        a, b = (host, port_of(first)), (host, port_of(second))  # 2-tuples on IPv6 too
        batch = numbered(12, 300)
        targets = [a, a, a, b, b, a, b, a, a, a, a, b]
        await sender.send_packets(list(zip(batch, targets, strict=True)))
        assert log.gso_segments == [3, 2, 4]
        assert log.sendmmsg_datagrams == 3  # the runs of one: not GSO, but batched
        for receiver, address in ((first, a), (second, b)):
            expected = [p for p, t in zip(batch, targets, strict=True) if t == address]
            got = await receive_exactly(receiver.recv_packets, len(expected))
            assert [packet for packet, _ in got] == expected


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EMSGSIZE])
@pytest.mark.usefixtures("gso_and_gro")
async def test_a_refused_gso_size_goes_by_sendmmsg_and_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    code: int,
) -> None:
    client, endpoint = pair
    syscalls = Syscalls(monkeypatch)
    spy = syscalls.watch(client)
    spy.gso_errors = [refusal(code)]  # the first GSO send is refused (a route's MTU, say)
    batch = [*numbered(10, 1200), *numbered(10, 2000), *numbered(10, 500)]
    await client.send_packets(batch)
    # 1200 refused: it and every size from it up go by sendmmsg; smaller ones still use GSO.
    assert spy.log.gso_segments == [10]
    assert spy.log.sendmmsg_datagrams == 20
    got = await receive_exactly(endpoint.recv_packets, len(batch))
    assert [packet for packet, _ in got] == batch
    assert client.statistics().send_errors == 0


@pytest.mark.usefixtures("gso_and_gro")
async def test_gso_unsupported_turns_it_off_for_the_socket(
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
) -> None:
    client, endpoint = pair
    spy = Syscalls(monkeypatch).watch(client)
    spy.gso_errors = [refusal(errno.EIO)]  # no checksum offload on this route, say
    batch = numbered(20, 1000)
    await client.send_packets(batch)
    await client.send_packets(batch)
    assert spy.log.gso_segments == []
    assert spy.log.sendmmsg_datagrams == 40
    got = await receive_exactly(endpoint.recv_packets, 40)
    assert [packet for packet, _ in got] == batch + batch


# -- a full send buffer: resuming where it stopped, and cancellation ------------------------------


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_a_buffer_full_at_random_points_resumes_without_loss_or_duplicates(
    monkeypatch: pytest.MonkeyPatch,
    family_host: tuple[int, str],
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    send_path: str,
) -> None:
    require_paths(family_host[0], send_path)
    client, endpoint = pair
    Paths(monkeypatch).force(client, send=send_path)
    syscalls = Syscalls(monkeypatch)
    spy = syscalls.watch(client)
    rng = random.Random(18)
    blocked = BlockingIOError(errno.EAGAIN, "full")
    spy.gso_errors = [blocked if rng.random() < 0.3 else None for _ in range(2000)]
    spy.single_errors = [blocked if rng.random() < 0.3 else None for _ in range(2000)]

    def sendmmsg(fd: int, count: int) -> int:
        roll = rng.random()
        return -errno.EAGAIN if roll < 0.3 else rng.randint(1, count) if roll < 0.6 else 0

    syscalls.sendmmsg_policy = sendmmsg
    sizes = [rng.choice([1200, 1200, 1200, 64, 9000]) for _ in range(400)]
    batch = [i.to_bytes(4, "big") + bytes(size - 4) for i, size in enumerate(sizes)]
    with anyio.fail_after(20):
        await client.send_packets(batch)
    check_send_path(spy.log, expected_path(send_path), len(batch))
    got = await receive_exactly(endpoint.recv_packets, len(batch))
    assert [packet for packet, _ in got] == batch
    stats = client.statistics()
    assert (stats.datagrams_sent, stats.bytes_sent) == (len(batch), sum(sizes))
    assert stats.send_errors == 0


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_cancelled_while_the_buffer_is_full_sends_each_datagram_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
    family_host: tuple[int, str],
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
    send_path: str,
) -> None:
    require_paths(family_host[0], send_path)
    client, endpoint = pair
    Paths(monkeypatch).force(client, send=send_path)
    log = Syscalls(monkeypatch).watch(client).log
    log.budget = 100  # then the "kernel" has no room, until the test makes some
    batch = numbered(300, 1200)
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send_packets, batch)
        await wait_until(lambda: client.statistics().datagrams_sent > 0, timeout=10)
        tg.cancel_scope.cancel()
    sent = client.statistics().datagrams_sent
    assert 0 < sent <= 100
    got = await receive_exactly(endpoint.recv_packets, sent)
    assert [packet for packet, _ in got] == batch[:sent]
    log.budget = None
    await client.send_packets(batch[sent:])  # resumed by the caller: each exactly once
    got = await receive_exactly(endpoint.recv_packets, len(batch) - sent)
    assert [packet for packet, _ in got] == batch[sent:]
    assert client.statistics().datagrams_sent == len(batch)


# -- refusals: counted per datagram, the rest still goes ------------------------------------------


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_a_refused_destination_is_counted_and_the_rest_goes(
    monkeypatch: pytest.MonkeyPatch, send_path: str
) -> None:
    require_paths(socket.AF_INET, send_path)
    # 127.255.255.255 is lo's broadcast address: without SO_BROADCAST the kernel refuses a
    # datagram to it (EACCES) before it leaves, one datagram at a time.
    refused = ("127.255.255.255", 9)
    async with (
        await anydgram.open_udp_endpoint("127.0.0.1", 0) as sender,
        await anydgram.open_udp_endpoint("127.0.0.1", 0, recv_buffer_size=RCVBUF) as receiver,
    ):
        Paths(monkeypatch).force(sender, send=send_path)
        live = ("127.0.0.1", port_of(receiver))
        batch = numbered(20, 1200)
        targets = [live] * 5 + [refused] * 3 + [live] * 5 + [refused] + [live] * 6
        await sender.send_packets(list(zip(batch, targets, strict=True)))
        good = [p for p, t in zip(batch, targets, strict=True) if t == live]
        got = await receive_exactly(receiver.recv_packets, len(good))
        assert [packet for packet, _ in got] == good
        stats = sender.statistics()
        assert (stats.datagrams_sent, stats.send_errors) == (len(good), 4)
        # Only a batch the kernel refuses whole raises (the first error; all counted).
        with pytest.raises(PermissionError):
            await sender.send_packets([(packet, refused) for packet in batch[:3]])
        assert sender.statistics().send_errors == 7
        assert sender.statistics().datagrams_sent == len(good)


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_icmp_errors_for_a_closed_port_do_not_stop_the_batch(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], send_path: str
) -> None:
    family, host = family_host
    require_paths(family, send_path)
    closed = closed_address(family, host)
    async with (
        await anydgram.open_udp_endpoint(host, 0) as sender,
        await anydgram.open_udp_endpoint(host, 0, recv_buffer_size=RCVBUF) as receiver,
    ):
        Paths(monkeypatch).force(sender, send=send_path)
        live = (host, port_of(receiver))
        batch = numbered(40, 500)
        targets = ([closed] * 4 + [live] * 6) * 4
        await sender.send_packets(list(zip(batch, targets, strict=True)))
        good = [p for p, t in zip(batch, targets, strict=True) if t == live]
        got = await receive_exactly(receiver.recv_packets, len(good))
        assert [packet for packet, _ in got] == good
        stats = sender.statistics()
        assert (stats.datagrams_sent, stats.send_errors) == (len(batch), 0)


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_a_client_raises_only_when_every_datagram_was_refused(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], send_path: str
) -> None:
    family, host = family_host
    require_paths(family, send_path)
    _, port = closed_address(family, host)
    async with await anydgram.connect_udp(host, port) as client:
        Paths(monkeypatch).force(client, send=send_path)
        for _ in range(2):
            await client.send_packet(b"ping")  # refused by ICMP, reported on the next call
            with anyio.fail_after(10):
                await anyio.wait_readable(client.socket.fileno())  # the error is pending
            with pytest.raises(ConnectionRefusedError):
                await client.send_packets([b"only one"])
        stats = client.statistics()
        assert (stats.datagrams_sent, stats.icmp_errors) == (2, 2)
        # A refusal of some is counted, not raised; each datagram is sent or refused once.
        await client.send_packets([b"a", b"b", b"c"])
        stats = client.statistics()
        assert stats.datagrams_sent - 2 + stats.icmp_errors - 2 == 3


@pytest.mark.parametrize("send_path", SEND_PATHS)
async def test_a_pending_icmp_error_is_counted_once_on_every_path(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], send_path: str
) -> None:
    family, host = family_host
    require_paths(family, send_path)
    _, port = closed_address(family, host)
    async with await anydgram.connect_udp(host, port) as client:
        Paths(monkeypatch).force(client, send=send_path)
        await client.send_packet(b"ping")
        with anyio.fail_after(10):
            await anyio.wait_readable(client.socket.fileno())  # the refusal is pending
        await client.send_packets([b"run", b"run"])  # a GSO run where GSO is on
        stats = client.statistics()
        assert stats.icmp_errors == 1
        # One by one, the refusal falls on the first datagram; a GSO run is sent whole.
        assert stats.datagrams_sent == 1 + (2 if expected_path(send_path) == "gso" else 1)


# -- receive side: leftovers of a GRO buffer, a bad datagram inside one ------------------------


@pytest.mark.usefixtures("gso_and_gro")
async def test_a_gro_buffer_larger_than_max_count_is_kept_for_the_next_receives(
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
) -> None:
    client, endpoint = pair
    await _gro_ready(client, endpoint)
    assert receive_strategy(endpoint) == "gro"
    batch = numbered(30, 1200)  # one GSO run: one buffer at the receiver
    await client.send_packets(batch)
    with anyio.fail_after(10):
        first = await endpoint.recv_packets(max_count=10)
        one = await endpoint.recv_packet()  # every receive takes the leftovers first
        rest = await endpoint.recv_packets(max_count=64)
    assert [packet for packet, _ in first] == batch[:10]
    assert one[0] == batch[10]
    assert [packet for packet, _ in rest] == batch[11:]  # the rest of the buffer, all of it
    assert endpoint.statistics().datagrams_received == len(batch) + 1


@pytest.mark.usefixtures("gso_and_gro")
async def test_datagrams_left_in_gro_buffers_at_close_are_each_counted(
    pair: tuple[DatagramClient[bytes, bytes], DatagramEndpoint[bytes, bytes]],
) -> None:
    client, endpoint = pair
    await _gro_ready(client, endpoint)
    assert receive_strategy(endpoint) == "gro"
    # Loopback delivers before the send returns: a 30-datagram train, then three single ones.
    await client.send_packets(numbered(30, 1200))
    for size in (10, 20, 30):
        await client.send_packet(b"y" * size)
    await endpoint.aclose()
    stats = endpoint.statistics()
    assert stats.unread_at_close == 33  # each datagram of the train, not the buffer as one
    assert stats.datagrams_received == 1  # the hello


@pytest.mark.usefixtures("gso_and_gro")
async def test_an_undecodable_datagram_inside_a_gro_buffer_ends_the_batch_there(
    family_host: tuple[int, str],
) -> None:
    _, host = family_host
    protocol = DatagramProtocol(JSONSerializer())
    endpoint = await anydgram.open_udp_endpoint(host, 0, protocol=protocol)
    async with endpoint, await anydgram.connect_udp(host, port_of(endpoint)) as client:
        await client.send_packet(b"0")
        with anyio.fail_after(10):
            assert [packet for packet, _ in await endpoint.recv_packets()] == [0]
        # Equal sizes: one GSO send, one GRO buffer, so one batch holds all five.
        await client.send_packets([b"1111", b"2222", b"{bad", b"3333", b"[44]"])
        sender = client.local_address
        with anyio.fail_after(10):
            assert await endpoint.recv_packets() == [(1111, sender), (2222, sender)]
            with pytest.raises(DatagramProtocolParseError) as info:
                await endpoint.recv_packets()
            assert (info.value.data, info.value.address) == (b"{bad", sender)
            assert await endpoint.recv_packets() == [(3333, sender), ([44], sender)]
        stats = endpoint.statistics()
        assert (stats.parse_errors, stats.datagrams_received) == (1, 6)


# -- IPv6 addresses as (host, port) -----------------------------------------------------------


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_two_tuple_addresses_are_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    syscalls = Syscalls(monkeypatch)
    async with (
        await anydgram.open_udp_endpoint("::1", 0) as sender,
        await anydgram.open_udp_endpoint("::1", 0, recv_buffer_size=RCVBUF) as receiver,
    ):
        Paths(monkeypatch).force(sender, send="sendmmsg")
        log = syscalls.watch(sender).log
        batch = payloads([1, 100, 1200], copies=3)
        await sender.send_packets([(packet, ("::1", port_of(receiver))) for packet in batch])
        # ("::1", port) is as good an address as the 4-tuple: the batch takes sendmmsg.
        check_send_path(log, expected_path("sendmmsg"), len(batch))
        got = await receive_exactly(receiver.recv_packets, len(batch))
        assert [packet for packet, _ in got] == batch
        assert {address for _, address in got} == {sender.local_address}
