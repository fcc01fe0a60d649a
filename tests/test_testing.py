"""``anydgram.testing.MemoryNetwork``: endpoints, clients and servers on an in-memory network."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramClient,
    DatagramEndpoint,
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
    DatagramTooLargeError,
)
from anydgram.serializers import BytesSerializer, JSONSerializer
from anydgram.testing import MemoryNetwork, NetworkStatistics


async def _upper(request: DatagramRequest[bytes, bytes]) -> None:
    await request.respond(request.packet.upper())


async def _serve(
    net: MemoryNetwork,
    handler: Callable[[DatagramRequest[bytes, bytes]], Awaitable[None]],
    body: Callable[[tuple[Any, ...]], Awaitable[None]],
    host: str | None = "10.0.0.1",
    port: int = 53,
) -> DatagramServer[bytes, bytes]:
    server = DatagramServer(host, port, handler, network=net)
    async with anyio.create_task_group() as tg:
        addresses: tuple[Any, ...] = await tg.start(server.serve_forever)
        try:
            await body(addresses)
        finally:
            await server.aclose()
    return server


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"loss": -0.1}, {"duplication": 1.5}, {"reordering": 2}, {"delay": -1.0}, {"queue_size": 0}],
)
def test_arguments_out_of_range_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        MemoryNetwork(**kwargs)


def test_arguments_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(TypeError):
        MemoryNetwork(loss="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MemoryNetwork(queue_size=1.5)  # type: ignore[arg-type]


def test_statistics_start_at_zero() -> None:
    assert MemoryNetwork().statistics() == NetworkStatistics(0, 0, 0, 0, 0, 0, 0)


# -- round trips -----------------------------------------------------------------------------


async def test_endpoint_and_client_round_trip() -> None:
    net = MemoryNetwork()
    async with await net.open_udp_endpoint("10.0.0.1", 9) as server:
        assert isinstance(server, DatagramEndpoint)
        assert server.local_address == ("10.0.0.1", 9)
        async with await net.connect_udp("10.0.0.1", 9) as client:
            assert isinstance(client, DatagramClient)
            assert client.remote_address == ("10.0.0.1", 9)
            await client.send_packet(b"ping")
            packet, address = await server.recv_packet()
            assert (packet, address) == (b"ping", client.local_address)
            await server.send_packet(b"", address)
            assert await client.recv_packet() == b""
            stats = client.statistics()
            assert (stats.datagrams_sent, stats.bytes_sent) == (1, 4)
            assert (stats.datagrams_received, stats.bytes_received) == (1, 0)
    assert net.statistics().delivered == 2


async def test_ipv6_and_port_zero() -> None:
    net = MemoryNetwork()
    async with await net.open_udp_endpoint("::1") as a, await net.open_udp_endpoint("::1") as b:
        a_address, b_address = a.local_address, b.local_address
        assert isinstance(a_address, tuple)
        assert isinstance(b_address, tuple)
        assert a_address[1] != b_address[1] != 0
        await a.send_packet(b"x", b.local_address)
        assert await b.recv_packet() == (b"x", a.local_address)


async def test_taken_address_is_eaddrinuse_and_free_after_aclose() -> None:
    net = MemoryNetwork()
    endpoint = await net.open_udp_endpoint("127.0.0.1", 5000)
    with pytest.raises(OSError, match="in use") as caught:
        await net.open_udp_endpoint("127.0.0.1", 5000)
    assert caught.value.errno == errno.EADDRINUSE
    await endpoint.aclose()
    await (await net.open_udp_endpoint("127.0.0.1", 5000)).aclose()


async def test_host_names_are_refused() -> None:
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="literal"):
        await net.open_udp_endpoint("localhost")
    with pytest.raises(ValueError, match="port 0"):
        await net.connect_udp("127.0.0.1", 0)


async def test_unbound_destination_is_unroutable_and_silent() -> None:
    net = MemoryNetwork()
    async with await net.connect_udp("10.9.9.9", 9) as client:
        await client.send_packet(b"nobody")
        assert client.statistics().datagrams_sent == 1
    assert net.statistics().unroutable == 1


async def test_connected_client_hears_only_its_peer() -> None:
    net = MemoryNetwork()
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as peer,
        await net.open_udp_endpoint("10.0.0.2", 9) as stranger,
        await net.connect_udp("10.0.0.1", 9) as client,
    ):
        await stranger.send_packet(b"spam", client.local_address)
        await peer.send_packet(b"ham", client.local_address)
        assert await client.recv_packet() == b"ham"
    assert net.statistics().unroutable == 1


async def test_size_limits_parse_errors_and_oversize() -> None:
    net = MemoryNetwork()
    small = DatagramProtocol(BytesSerializer(), max_datagram_size=4)
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as big,
        await net.open_udp_endpoint("10.0.0.2", 9, protocol=small) as tiny,
        await net.open_udp_endpoint(
            "10.0.0.3", 9, protocol=DatagramProtocol(JSONSerializer())
        ) as json_endpoint,
    ):
        with pytest.raises(DatagramTooLargeError):
            await tiny.send_packet(b"12345", big.local_address)
        with pytest.raises(DatagramTooLargeError):
            await big.send_packet(bytes(70000), tiny.local_address)
        await big.send_packet(b"12345", tiny.local_address)
        await big.send_packet(b"1234", tiny.local_address)
        assert await tiny.recv_packet() == (b"1234", big.local_address)
        assert tiny.statistics().oversize == 1
        await big.send_packet(b"{not json", json_endpoint.local_address)
        with pytest.raises(DatagramProtocolParseError) as caught:
            await json_endpoint.recv_packet()
        assert caught.value.address == big.local_address
        assert json_endpoint.statistics().parse_errors == 1


async def test_full_queue_is_counted_in_kernel_drops() -> None:
    net = MemoryNetwork(queue_size=8)
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as receiver,
        await net.connect_udp("10.0.0.1", 9) as sender,
    ):
        for i in range(20):
            await sender.send_packet(b"%d" % i)
        received = [p async for p, _ in receiver.iter_received_packets(timeout=0)]
        assert received == [b"%d" % i for i in range(8)]
        assert receiver.statistics().kernel_drops == 12
    assert net.statistics().dropped_full_queue == 12


async def test_aclose_wakes_a_blocked_receiver() -> None:
    net = MemoryNetwork()
    endpoint = await net.open_udp_endpoint("10.0.0.1", 9)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def receive() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await endpoint.recv_packet()

            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            await endpoint.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await endpoint.send_packet(b"x", ("10.0.0.1", 9))


async def test_cancelled_receive_loses_nothing() -> None:
    net = MemoryNetwork()
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as receiver,
        await net.connect_udp("10.0.0.1", 9) as sender,
    ):
        with anyio.move_on_after(0.01):
            await receiver.recv_packet()
        await sender.send_packet(b"kept")
        assert (await receiver.recv_packet())[0] == b"kept"


# -- impairments -----------------------------------------------------------------------------


async def _send_and_collect(net: MemoryNetwork, count: int) -> list[int]:
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as receiver,
        await net.connect_udp("10.0.0.1", 9) as sender,
    ):
        received: list[int] = []
        for i in range(count):
            await sender.send_packet(i.to_bytes(2, "big"))
            if i % 50 == 49:  # keep the queue short of its bound
                received += [
                    int.from_bytes(p, "big") async for p, _ in receiver.iter_received_packets()
                ]
        received += [int.from_bytes(p, "big") async for p, _ in receiver.iter_received_packets()]
        return received


async def test_loss_rate_is_close_to_configured_and_deterministic() -> None:
    received = await _send_and_collect(MemoryNetwork(loss=0.2, seed=7), 1000)
    again = await _send_and_collect(MemoryNetwork(loss=0.2, seed=7), 1000)
    assert received == again
    assert 150 <= 1000 - len(received) <= 250
    assert received == sorted(received)


async def test_duplication_rate_is_close_to_configured() -> None:
    net = MemoryNetwork(duplication=0.1, seed=3)
    received = await _send_and_collect(net, 1000)
    stats = net.statistics()
    assert 60 <= stats.duplicated <= 140
    assert len(received) == 1000 + stats.duplicated == stats.delivered
    assert set(received) == set(range(1000))


async def test_reordering_rate_is_close_to_configured() -> None:
    net = MemoryNetwork(reordering=0.1, seed=5)
    received = await _send_and_collect(net, 1000)
    stats = net.statistics()
    assert 60 <= stats.reordered <= 140
    assert sorted(received) == list(range(1000))
    out_of_order = sum(1 for a, b in itertools.pairwise(received) if a > b)
    # Two reorderings in a row (b ahead of a, then c ahead of a) make one descent only.
    assert 0 < out_of_order <= stats.reordered


async def test_same_seed_same_statistics() -> None:
    def make() -> MemoryNetwork:
        return MemoryNetwork(loss=0.1, duplication=0.1, reordering=0.1, seed=42)

    first, second = make(), make()
    assert await _send_and_collect(first, 500) == await _send_and_collect(second, 500)
    assert first.statistics() == second.statistics()


async def test_delay_holds_datagrams_back() -> None:
    net = MemoryNetwork(delay=0.2)
    async with (
        await net.open_udp_endpoint("10.0.0.1", 9) as receiver,
        await net.connect_udp("10.0.0.1", 9) as sender,
    ):
        start = anyio.current_time()
        await sender.send_packet(b"late")
        assert [p async for p in receiver.iter_received_packets(timeout=0)] == []
        with anyio.fail_after(5):
            packet, _ = await receiver.recv_packet()
        elapsed = anyio.current_time() - start
        assert packet == b"late"
        assert 0.19 <= elapsed < 1.0


# -- servers and requests --------------------------------------------------------------------


async def test_server_answers_a_memory_client() -> None:
    net = MemoryNetwork()

    async def body(addresses: tuple[Any, ...]) -> None:
        assert addresses == (("10.0.0.1", 53),)
        async with await net.connect_udp("10.0.0.1", 53) as client:
            with anyio.fail_after(5):
                assert await client.request(b"hello") == b"HELLO"

    server = await _serve(net, _upper, body)
    assert server.statistics().datagrams_received == 1
    assert server.statistics().datagrams_sent == 1


async def test_wildcard_server_answers_both_families() -> None:
    net = MemoryNetwork()

    async def body(addresses: tuple[Any, ...]) -> None:
        assert [a[0] for a in addresses] == ["0.0.0.0", "::"]
        assert addresses[0][1] == addresses[1][1] != 0
        port = addresses[0][1]
        for host in ("192.0.2.1", "2001:db8::1"):
            async with await net.connect_udp(host, port) as client:
                with anyio.fail_after(5):
                    assert await client.request(b"hi") == b"HI"

    await _serve(net, _upper, body, host=None, port=0)


async def test_server_network_must_be_a_memory_network() -> None:
    with pytest.raises(TypeError, match="MemoryNetwork"):
        DatagramServer("10.0.0.1", 53, _upper, network=object())


async def test_requests_succeed_over_a_lossy_network() -> None:
    # A round trip survives with (1 - 0.3)**2 = 0.49: eight attempts fail with 0.51**8 < 0.5 %.
    net = MemoryNetwork(loss=0.3, seed=11)

    async def body(addresses: tuple[Any, ...]) -> None:
        async with await net.connect_udp("10.0.0.1", 53) as client:
            answered = 0
            for i in range(200):
                packet = b"q%d" % i
                try:
                    reply = await client.request(
                        packet, timeout=0.005, attempts=8, backoff=1.0, match=packet.upper().__eq__
                    )
                except TimeoutError:
                    continue
                assert reply == packet.upper()
                answered += 1
            assert answered >= 198

    await _serve(net, _upper, body)
    assert net.statistics().lost > 0


async def test_duplicate_replies_are_unmatched() -> None:
    net = MemoryNetwork(duplication=1.0)

    async def body(addresses: tuple[Any, ...]) -> None:
        async with await net.connect_udp("10.0.0.1", 53) as client:
            with anyio.fail_after(5):
                for i in range(10):
                    packet = b"q%d" % i
                    assert await client.request(packet, match=packet.upper().__eq__) == (
                        packet.upper()
                    )
            # The last reply's duplicate is still queued: the next call counts it too.
            assert client.statistics().unmatched_replies >= 9

    await _serve(net, _upper, body)
    assert net.statistics().duplicated > 0


async def test_endpoint_request_over_the_network() -> None:
    net = MemoryNetwork()

    async def body(addresses: tuple[Any, ...]) -> None:
        async with await net.open_udp_endpoint("10.0.0.2") as endpoint:
            with anyio.fail_after(5):
                assert await endpoint.request(b"x", addresses[0]) == b"X"

    await _serve(net, _upper, body)


# -- network= on the module-level factories -----------------------------------------------------


async def test_module_factories_open_on_a_memory_network() -> None:
    net = MemoryNetwork()
    json = DatagramProtocol(JSONSerializer())
    server = await anydgram.open_udp_endpoint("127.0.0.1", 0, protocol=json, network=net)
    wildcard = await anydgram.open_udp_endpoint(port=0, network=net)
    async with server, wildcard:
        local = server.local_address
        assert isinstance(local, tuple)
        client = await anydgram.connect_udp(local[0], local[1], protocol=json, network=net)
        async with client:
            await client.send_packet({"n": 1})
            with anyio.fail_after(5):
                data, address = await server.recv_packet()
            assert data == {"n": 1}
            assert address == client.local_address
            await server.send_packet({"n": 2}, address)
            with anyio.fail_after(5):
                assert await client.recv_packet() == {"n": 2}
        assert isinstance(wildcard.local_address, tuple)
        assert wildcard.local_address[0] == "0.0.0.0"
        assert net.statistics().delivered == 2


async def test_module_factories_on_a_memory_network_refuse_what_it_cannot_do() -> None:
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="local_address"):
        await anydgram.connect_udp("127.0.0.1", 9, local_address=("127.0.0.1", 0), network=net)
    with pytest.raises(ValueError, match="literal"):
        await anydgram.connect_udp("localhost", 9, network=net)
    with pytest.raises(ValueError, match="literal"):
        await anydgram.open_udp_endpoint("localhost", 0, network=net)
