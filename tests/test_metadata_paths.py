"""Receive metadata, continued: the blocking endpoints, DTLS, and the parser and slots below.

The blocking client and endpoint read the same fields as the async ones (test_metadata.py);
DTLS servers hand each record its datagram's metadata and DTLS clients refuse to pretend; the
control-area parser is fed what a kernel writes and what it never would; the compiled unpack
keeps each slot's control bytes exactly as the pure-Python reference; a control area cut short
(``MSG_CTRUNC``) is counted on the ``recvmmsg`` and GRO paths too.
"""

from __future__ import annotations

import pathlib
import random
import socket
import struct
import sys
import threading
import time
from typing import Any

import anyio
import pytest

import anydgram
from anydgram import (
    DatagramMetadata,
    DatagramRequest,
    DatagramServer,
    _gro,
    _mmsg,
)
from anydgram._compiled import speedups
from anydgram._metadata import (
    IP_PKTINFO,
    IP_TOS,
    IP_TTL,
    SO_TIMESTAMPNS,
    MetadataParser,
    split_control_untrusted,
)
from anydgram._mmsg import available as mmsg_available
from anydgram._mmsg import decode_sockaddr_untrusted, unpack_batch
from anydgram._mmsg_send import encode_sockaddr
from batch_harness import gro_refused, port_of
from endpoint_harness import has_ipv6_loopback
from test_metadata import _TOS, _TTL, check, sender

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the metadata options are Linux's"
)

# -- the blocking endpoints ----------------------------------------------------------------------


def test_blocking_endpoint_reports_every_field(family_host: tuple[int, str]) -> None:
    family, host = family_host
    with anydgram.SyncDatagramEndpoint(host, 0, receive_metadata=True) as endpoint:
        local = endpoint.local_address
        assert isinstance(local, tuple)
        with sender(family) as peer:
            start = time.time()
            peer.sendto(b"block", (host, port_of(endpoint)))
            packet, address, metadata = endpoint.recv_packet_with_metadata(timeout=5)
            assert (packet, address) == (b"block", peer.getsockname())
        check(metadata, (start, time.time()), local)
        assert endpoint.statistics().metadata_truncated == 0


def test_blocking_wildcard_endpoint_tells_the_destination() -> None:
    with anydgram.SyncDatagramEndpoint(None, 0, receive_metadata=True) as endpoint:
        port = port_of(endpoint)
        for destination in ("127.0.0.1", "127.0.0.2"):
            with sender(socket.AF_INET) as peer:
                start = time.time()
                peer.sendto(b"where", (destination, port))
                _, _, metadata = endpoint.recv_packet_with_metadata(timeout=5)
            check(metadata, (start, time.time()), (destination, port))
    if has_ipv6_loopback():
        with anydgram.SyncDatagramEndpoint(
            None, 0, family=socket.AF_INET6, receive_metadata=True
        ) as endpoint:
            port = port_of(endpoint)
            with sender(socket.AF_INET6) as peer:
                start = time.time()
                peer.sendto(b"where", ("::1", port))
                _, _, metadata = endpoint.recv_packet_with_metadata(timeout=5)
            check(metadata, (start, time.time()), ("::1", port, 0, 0))


def test_blocking_client_with_tos_and_metadata(family_host: tuple[int, str]) -> None:
    family, host = family_host
    with anydgram.SyncDatagramEndpoint(host, 0, receive_metadata=True) as endpoint:
        port = port_of(endpoint)
        with anydgram.SyncDatagramClient(host, port, receive_metadata=True, tos=_TOS) as client:
            hops = (socket.IPPROTO_IP, socket.IP_TTL)
            if family == socket.AF_INET6:
                hops = (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
            client.socket.setsockopt(*hops, _TTL)
            start = time.time()
            client.send_packet(b"marked")
            _, address, metadata = endpoint.recv_packet_with_metadata(timeout=5)
            check(metadata, (start, time.time()), endpoint.local_address)
            start = time.time()
            endpoint.send_packet(b"back", address)
            packet, reply = client.recv_packet_with_metadata(timeout=5)
            assert packet == b"back"
            assert reply.timestamp is not None
            assert start <= reply.timestamp <= time.time()
            assert reply.local_address == client.local_address


def test_blocking_receive_times_out_and_refuses_without_the_option() -> None:
    with (
        anydgram.SyncDatagramEndpoint("127.0.0.1", 0, receive_metadata=True) as endpoint,
        pytest.raises(TimeoutError),
    ):
        endpoint.recv_packet_with_metadata(timeout=0)
    with anydgram.SyncDatagramEndpoint("127.0.0.1", 0) as endpoint:
        with pytest.raises(ValueError, match="receive_metadata=True"):
            endpoint.recv_packet_with_metadata(timeout=0)
        port = port_of(endpoint)
        with (
            anydgram.SyncDatagramClient("127.0.0.1", port) as client,
            pytest.raises(ValueError, match="receive_metadata=True"),
        ):
            client.recv_packet_with_metadata(timeout=0)
    with pytest.raises(ValueError, match="tos"):
        anydgram.SyncDatagramEndpoint("127.0.0.1", 0, tos=300)


def test_blocking_close_wakes_a_metadata_receiver() -> None:
    endpoint = anydgram.SyncDatagramEndpoint("127.0.0.1", 0, receive_metadata=True)
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            endpoint.recv_packet_with_metadata(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    deadline = time.monotonic() + 5
    while not endpoint._io._recv.users and time.monotonic() < deadline:  # inside the call
        time.sleep(0.001)
    endpoint.close()
    thread.join(5)
    assert not thread.is_alive()
    assert [type(exc) for exc in errors] == [anyio.ClosedResourceError]


# -- DTLS -----------------------------------------------------------------------------------------


async def test_dtls_server_passes_metadata_and_clients_refuse(
    anyio_backend: Any, tmp_path: pathlib.Path
) -> None:
    pytest.importorskip("OpenSSL", reason="the dtls extra (pyOpenSSL) is not installed")
    from anydgram.dtls import DTLSServerConfig, connect_dtls
    from dtls_harness import client_context, make_pki, server_context

    seen: list[DatagramMetadata | None] = []

    async def record(request: DatagramRequest[bytes, bytes]) -> bytes:
        seen.append(request.metadata)
        return request.packet

    pki = make_pki(tmp_path)
    config = DTLSServerConfig(server_context(pki.server.certfile, pki.server.keyfile))
    server = DatagramServer("127.0.0.1", 0, record, dtls=config, receive_metadata=True)
    async with (
        server.serving(grace_period=1.0) as addresses,
        await connect_dtls(
            "127.0.0.1", addresses[0][1], client_context(cafile=pki.cafile)
        ) as client,
    ):
        start = time.time()
        await client.send_packet(b"secret")
        with anyio.fail_after(10):
            assert await client.recv_packet() == b"secret"
        with pytest.raises(ValueError, match="DTLS"):
            await client.recv_packet_with_metadata()
        port = addresses[0][1]
    assert len(seen) == 1
    metadata = seen[0]
    assert metadata is not None
    assert metadata.timestamp is not None
    assert start <= metadata.timestamp <= time.time()
    assert metadata.local_address == ("127.0.0.1", port)
    assert metadata.ttl is not None


# -- the parser -----------------------------------------------------------------------------------


def _cmsg(level: int, kind: int, data: bytes) -> bytes:
    header = struct.pack("@Nii", socket.CMSG_LEN(len(data)), level, kind)
    return (header + data).ljust(socket.CMSG_SPACE(len(data)), b"\0")


def test_parser_reads_a_raw_control_area_as_the_list_recvmsg_gives() -> None:
    pktinfo = struct.pack("@i", 1) + socket.inet_aton("127.0.0.2") + socket.inet_aton("127.0.0.2")
    messages = [
        (socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("@qq", 1_700_000_000, 500_000_000)),
        (socket.IPPROTO_IP, IP_TTL, struct.pack("@i", 42)),
        (socket.IPPROTO_IP, IP_TOS, bytes([0xB9])),
        (socket.IPPROTO_IP, IP_PKTINFO, pktinfo),
    ]
    raw = b"".join(_cmsg(*message) for message in messages)
    assert split_control_untrusted(raw) == messages
    parser = MetadataParser(socket.AF_INET, 53)
    expected = DatagramMetadata(1_700_000_000.5, 42, 0xB9, 1, ("127.0.0.2", 53))
    assert parser.parse(raw) == parser.parse(messages) == expected
    assert parser.parse(None) == DatagramMetadata()
    mapped = MetadataParser(socket.AF_INET6, 53).parse(messages)
    assert mapped.local_address == ("::ffff:127.0.0.2", 53, 0, 0)


def test_parser_survives_any_bytes() -> None:
    rng = random.Random(19)
    parser = MetadataParser(socket.AF_INET6, 1)
    good = _cmsg(socket.IPPROTO_IPV6, 52, struct.pack("@i", 5))
    for _ in range(2000):
        raw = bytearray(good * rng.randrange(4) + rng.randbytes(rng.randrange(80)))
        for _ in range(rng.randrange(4)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        metadata = parser.parse(bytes(raw))  # never raises, whatever the bytes
        assert isinstance(metadata, DatagramMetadata)
    cut = good[: socket.CMSG_LEN(4) - 1]
    assert parser.parse(cut).ttl is None  # cut short: the message is dropped
    assert parser.parse(good).ttl == 5


# -- recvmmsg slots: the compiled unpack against the reference ------------------------------------


@pytest.mark.skipif(speedups is None, reason="anydgram._speedups is not built")
def test_compiled_unpack_keeps_control_bytes_as_the_reference() -> None:
    assert speedups is not None
    rng = random.Random(7)
    count, bufsize, control_size = 16, 64, 48
    data = memoryview(bytearray(rng.randbytes(count * bufsize)))
    controls = memoryview(bytearray(rng.randbytes(count * control_size)))
    sender_raw = encode_sockaddr(socket.AF_INET, ("127.0.0.1", 9))
    assert sender_raw is not None
    names = (sender_raw.ljust(128, b"\0")) * count
    lengths = [rng.randrange(bufsize) for _ in range(count)]
    offsets = list(range(0, count * bufsize, bufsize))
    name_offsets = list(range(0, count * 128, 128))
    control_offsets = list(range(0, count * control_size, control_size))
    control_lengths = [rng.randrange(control_size + 1) for _ in range(count)]
    args: list[Any] = [lengths, names, data, offsets, name_offsets, 16, bufsize - 2]
    tail = [controls, control_offsets, control_lengths]
    python = unpack_batch(*args, {}, decode_sockaddr_untrusted, 8, *tail)  # type: ignore[call-arg]
    compiled = speedups.unpack_batch(*args, {}, decode_sockaddr_untrusted, 8, *tail)
    assert compiled == python
    assert all(type(item[3]) is bytes for item in compiled[0])
    plain = speedups.unpack_batch(*args, {}, decode_sockaddr_untrusted, 8, None, [], [])
    assert plain == unpack_batch(*args, {}, decode_sockaddr_untrusted, 8)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="control"):
        speedups.unpack_batch(
            *args, {}, decode_sockaddr_untrusted, 8, controls, control_offsets, [10**6] * count
        )


# -- MSG_CTRUNC on the batched paths --------------------------------------------------------------


async def test_truncation_is_counted_on_the_server_batch_path(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not mmsg_available():
        pytest.skip("no recvmmsg here")
    monkeypatch.delenv("ANYDGRAM_BATCHED_SYSCALLS", raising=False)
    monkeypatch.setattr(_mmsg, "CONTROL_SIZE", socket.CMSG_SPACE(16))
    seen: list[DatagramMetadata | None] = []

    async def record(request: DatagramRequest[bytes, bytes]) -> bytes:
        seen.append(request.metadata)
        return request.packet

    server = DatagramServer("127.0.0.1", 0, record, receive_metadata=True)
    async with server.serving(grace_period=1.0) as addresses:
        with sender(socket.AF_INET) as peer:
            peer.settimeout(5)
            peer.sendto(b"cut", ("127.0.0.1", addresses[0][1]))
            assert await anyio.to_thread.run_sync(peer.recv, 10) == b"cut"
        assert server.statistics().metadata_truncated == 1
    assert seen[0] is not None
    assert seen[0].timestamp is not None
    assert seen[0].ttl is None


async def test_truncation_is_counted_on_the_gro_path(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reason := gro_refused(socket.AF_INET):
        pytest.skip(reason)
    monkeypatch.delenv("ANYDGRAM_BATCHED_SYSCALLS", raising=False)
    monkeypatch.setattr(_gro, "GRO_CONTROL_SIZE", socket.CMSG_SPACE(16))
    async with await anydgram.open_udp_endpoint("127.0.0.1", 0, receive_metadata=True) as endpoint:
        with sender(socket.AF_INET) as peer:
            peer.sendto(b"one", endpoint.local_address)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                assert [p for p, _ in await endpoint.recv_packets()] == [b"one"]
            peer.sendto(b"two", endpoint.local_address)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                packet, _, metadata = await endpoint.recv_packet_with_metadata()
        assert packet == b"two"
        assert metadata.timestamp is not None
        assert metadata.ttl is None
        assert endpoint.statistics().metadata_truncated >= 1


# -- found in review: shapes, messages, 32-bit timestamps, truncation on GRO ------------------


async def test_the_memory_networks_ipv6_local_address_has_its_own_shape(anyio_backend: Any) -> None:
    from anydgram.testing import MemoryNetwork

    net = MemoryNetwork()
    async with (
        await anydgram.open_udp_endpoint("::1", 5000, network=net, receive_metadata=True) as ep,
        await anydgram.connect_udp("::1", 5000, network=net) as client,
    ):
        await client.send_packet(b"x")
        with anyio.fail_after(5):
            _, sender_address, metadata = await ep.recv_packet_with_metadata()
        local = ep.local_address
    # The memory network writes IPv6 addresses as (host, port), like its senders' addresses.
    assert metadata.local_address == local == ("::1", 5000)
    assert isinstance(sender_address, tuple)
    assert len(sender_address) == 2


async def test_a_unix_socket_says_it_has_no_metadata(
    anyio_backend: Any, tmp_path: pathlib.Path
) -> None:
    async with await anydgram.open_unix_datagram_endpoint(str(tmp_path / "u")) as endpoint:
        with pytest.raises(
            ValueError, match="Unix datagram socket: they carry no receive metadata"
        ):
            await endpoint.recv_packet_with_metadata()
    with (
        anydgram.SyncDatagramEndpoint.from_socket(
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ) as blocking,
        pytest.raises(ValueError, match="Unix datagram socket"),
    ):
        blocking.recv_packet_with_metadata(timeout=0)


def test_a_32_bit_timespec_is_read() -> None:
    # On 32-bit Linux SCM_TIMESTAMPNS carries two 32-bit longs (8 bytes), not 16.
    parser = MetadataParser(socket.AF_INET, 1)
    for raw in (
        struct.pack("@ii", 1_700_000_000, 500_000_000),
        struct.pack("@qq", 1_700_000_000, 500_000_000),
    ):
        metadata = parser.parse([(socket.SOL_SOCKET, SO_TIMESTAMPNS, raw)])
        assert metadata.timestamp == 1_700_000_000.5
    assert parser.parse([(socket.SOL_SOCKET, SO_TIMESTAMPNS, b"short")]).timestamp is None


async def test_a_truncated_gro_buffer_counts_each_of_its_datagrams(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reason := gro_refused(socket.AF_INET):
        pytest.skip(reason)
    monkeypatch.delenv("ANYDGRAM_BATCHED_SYSCALLS", raising=False)
    # Room for the timestamp and the segment size that follows it, not for the IP messages.
    room = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
    monkeypatch.setattr(_gro, "GRO_CONTROL_SIZE", room)
    async with await anydgram.open_udp_endpoint("127.0.0.1", 0, receive_metadata=True) as endpoint:
        client = await anydgram.connect_udp("127.0.0.1", port_of(endpoint))
        async with client:
            await client.send_packet(b"first")
            with anyio.fail_after(5):
                await endpoint.recv_packets()  # UDP_GRO chosen, with the small control area
            before = endpoint.statistics().metadata_truncated
            batch = [bytes([i]) * 100 for i in range(8)]
            await client.send_packets(batch)  # one GSO send: one buffer at the receiver
            got: list[tuple[bytes, Any]] = []
            with anyio.fail_after(5):
                while len(got) < len(batch):
                    got += await endpoint.recv_packets()
            truncated = endpoint.statistics().metadata_truncated - before
    assert [packet for packet, _ in got] == batch  # cut at the segment size that did arrive
    assert truncated == len(batch)  # each datagram of the buffer, not the buffer once
