"""DTLS clients and servers on every backend: handshakes, failures, data, limits, counters."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from OpenSSL import SSL

from anydgram import (
    DatagramProtocol,
    DatagramRequest,
    DatagramServer,
    RateLimit,
    open_udp_endpoint,
)
from anydgram._socket_io import SocketIO
from anydgram.dtls import (
    DTLSClient,
    DTLSError,
    DTLSServerConfig,
    SyncDTLSClient,
    client_context,
    connect_dtls,
    server_context,
)
from anydgram.dtls._association import Association
from anydgram.serializers import BytesSerializer, JSONSerializer
from dtls_harness import PKI, default_config, echo_server, lossy_relay, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def same_echo(request: DatagramRequest[Any, Any]) -> None:
    await request.respond(request.packet)


def trusting(pki: PKI) -> SSL.Context:
    return client_context(cafile=pki.cafile)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll a condition that only a timer or a peer's datagram makes true, within a bound."""
    try:
        with anyio.fail_after(timeout):
            while not condition():  # noqa: ASYNC110 - no event to wait on: the state is the server's
                await anyio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"no {what} within {timeout} s")


async def test_echo_round_trip_and_counters(pki: PKI) -> None:
    async with echo_server(default_config(pki)) as (server, port):
        async with await connect_dtls("127.0.0.1", port, client_context(cafile=pki.cafile)) as c:
            assert isinstance(c, DTLSClient)
            await c.send_packet(b"hello")
            with anyio.fail_after(5):
                assert await c.recv_packet() == b"HELLO"
            assert await c.request(b"again", timeout=2) == b"AGAIN"
            for packet in (b"p1", b"p2"):
                await c.send_packet(packet)
            received: list[bytes] = []
            # Run to its end (its budget): an iteration left early leaves its inner generator.
            async for packet in c.iter_received_packets(timeout=0.5):
                received.append(packet)
            assert received[-2:] == [b"P1", b"P2"]
            cert = c.peer_certificate
            assert cert is not None
            assert cert.subject.rfc4514_string() == "CN=localhost"
            stats = c.statistics()
            assert (stats.dtls_handshakes, stats.dtls_sessions) == (1, 1)
            assert stats.dtls_records_dropped == 0
            server_stats = server.statistics()
            assert server_stats.dtls_handshakes == 1
            assert server_stats.dtls_sessions == 1
            assert server_stats.dtls_handshake_failures == 0
        assert c.statistics().dtls_sessions == 0
        # The client's close_notify ends its session on the server.
        await wait_until(lambda: server.statistics().dtls_sessions == 0, "session closed")


async def test_handlers_see_decoded_packets_with_any_protocol(pki: PKI) -> None:
    protocol = DatagramProtocol(JSONSerializer())

    async def handler(request: DatagramRequest[Any, Any]) -> None:
        await request.respond({"sum": sum(request.packet["numbers"])})

    server = DatagramServer("127.0.0.1", 0, handler, protocol=protocol, dtls=default_config(pki))
    async with (
        server.serving() as addresses,
        await connect_dtls(
            "localhost", addresses[0][1], trusting(pki), protocol=protocol, family=socket.AF_INET
        ) as client,
    ):
        reply = await client.request({"numbers": [1, 2, 3]}, timeout=2)
    assert reply == {"sum": 6}


async def test_large_packets_and_the_record_limit(pki: PKI) -> None:
    async with (
        echo_server(default_config(pki)) as (_, port),
        await connect_dtls("127.0.0.1", port, trusting(pki)) as client,
    ):
        big = b"x" * 16384
        assert await client.request(big, timeout=2) == big.upper()
        with pytest.raises(ValueError, match="16385 bytes"):
            await client.send_packet(big + b"x")
        with pytest.raises(ValueError, match="empty"):
            await client.send_packet(b"")


async def test_handshake_flights_fit_the_protocols_datagram_size(pki: PKI) -> None:
    protocol = DatagramProtocol(JSONSerializer(), max_datagram_size=400)
    server = DatagramServer("127.0.0.1", 0, same_echo, protocol=protocol, dtls=default_config(pki))
    sizes: list[int] = []
    back: list[int] = []

    def record(index: int, data: bytes) -> bool:
        sizes.append(len(data))
        return False

    def record_back(index: int, data: bytes) -> bool:
        back.append(len(data))
        return False

    async with (
        server.serving() as addresses,
        lossy_relay(addresses[0][1], record, record_back) as (relay, _),
        await connect_dtls("127.0.0.1", relay, trusting(pki), protocol=protocol) as client,
    ):
        assert await client.request([1, 2], timeout=2) == [1, 2]
        # A packet of the largest size still fits once encrypted (records are not split).
        largest = "x" * 398  # 400 bytes of JSON
        assert await client.request(largest, timeout=2) == largest
    assert sizes
    assert back
    # The certificate flight alone is larger: OpenSSL fragmented it to fit. (The last two
    # datagrams each way carry the 400-byte packet and its encryption.)
    assert max(sizes[:-2] + back[:-2]) <= 400
    assert len(back) >= 3


async def test_server_drops_plaintexts_over_its_protocols_limit(pki: PKI) -> None:
    got: list[bytes] = []

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        got.append(request.packet)
        await request.respond(b"ok")

    small = DatagramProtocol(BytesSerializer(), max_datagram_size=100)
    server = DatagramServer("127.0.0.1", 0, handler, protocol=small, dtls=default_config(pki))
    async with (
        server.serving() as addresses,
        await connect_dtls("127.0.0.1", addresses[0][1], trusting(pki)) as client,
    ):
        await client.send_packet(b"x" * 101)
        assert await client.request(b"y" * 100, timeout=2) == b"ok"
        assert server.statistics().dtls_records_dropped == 1
    assert got == [b"y" * 100]


async def test_wrong_host_name_is_refused(pki: PKI) -> None:
    async with echo_server(default_config(pki)) as (server, port):
        with pytest.raises(DTLSError, match=r"not valid for 'example\.org'"):
            await connect_dtls("127.0.0.1", port, trusting(pki), server_hostname="example.org")
        await wait_until(lambda: server.statistics().dtls_handshake_failures == 1, "failure")
        assert server.statistics().dtls_sessions == 0


async def test_untrusted_certificate_is_refused(pki: PKI) -> None:
    async with echo_server(default_config(pki)) as (server, port):
        with pytest.raises(DTLSError, match="certificate verify failed"):
            await connect_dtls("127.0.0.1", port, client_context(cafile=pki.other_cafile))
        await wait_until(lambda: server.statistics().dtls_handshake_failures == 1, "failure")
        # verify=False skips the check (for tests only): the same server is then accepted.
        async with await connect_dtls("127.0.0.1", port, client_context(verify=False)) as c:
            assert await c.request(b"ok", timeout=2) == b"OK"


async def test_no_shared_cipher(pki: PKI) -> None:
    server_ctx = server_context(pki.server.certfile, pki.server.keyfile)
    server_ctx.set_cipher_list(b"ECDHE-ECDSA-AES256-GCM-SHA384")
    client_ctx = client_context(cafile=pki.cafile)
    client_ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-GCM-SHA256")
    async with echo_server(server_ctx) as (server, port):
        with pytest.raises(DTLSError, match="handshake failure"):
            await connect_dtls("127.0.0.1", port, client_ctx)
        await wait_until(lambda: server.statistics().dtls_handshake_failures == 1, "failure")


async def test_handshake_timeout_against_a_silent_peer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = anyio.current_time()
        with pytest.raises(DTLSError, match=r"timed out after 0\.3 s"):
            await connect_dtls(
                "127.0.0.1", port, client_context(verify=False), handshake_timeout=0.3
            )
        assert anyio.current_time() - started < 2
        silent.setblocking(False)
        assert silent.recv(65536)[0] == 22  # it did send a ClientHello


async def test_no_server_at_all_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = anyio.current_time()
    # The kernel's ICMP port unreachable ends the handshake: no need to wait for the timeout.
    with pytest.raises(DTLSError, match="refused"):
        await connect_dtls("127.0.0.1", port, client_context(verify=False), handshake_timeout=5)
    assert anyio.current_time() - started < 2


async def test_lost_flights_are_retransmitted(pki: PKI) -> None:
    # The client's second ClientHello (the one with the cookie) is lost: OpenSSL's timer
    # (RFC 6347: 1 s first) sends it again.
    async with echo_server(default_config(pki)) as (server, port):
        async with lossy_relay(port, lambda index, data: index == 1) as (relay, seen):
            with anyio.fail_after(8):
                client = await connect_dtls("127.0.0.1", relay, trusting(pki))
            async with client:
                assert await client.request(b"x", timeout=2) == b"X"
        # The same hello again, in a record with a new sequence number (not a replay).
        assert seen[1][13:] == seen[2][13:]
        assert seen[1][3:11] != seen[2][3:11]
        assert server.statistics().dtls_handshakes == 1


def epoch0_record_numbers(datagram: bytes) -> list[int]:
    """The sequence numbers of the unencrypted (epoch 0) records in a datagram."""
    numbers: list[int] = []
    offset = 0
    while offset + 13 <= len(datagram):
        if datagram[offset + 3 : offset + 5] == b"\0\0":
            numbers.append(int.from_bytes(datagram[offset + 5 : offset + 11]))
        offset += 13 + int.from_bytes(datagram[offset + 11 : offset + 13])
    return numbers


async def test_a_lost_first_hello_does_not_make_the_server_flight_a_replay(pki: PKI) -> None:
    # The client's first ClientHello is lost (as under a flood that fills the server's
    # receive buffer), so the hello the server answers is the retransmission, record number
    # 1, and its HelloVerifyRequest echoes that number (RFC 6347 4.2.1). The server's
    # records that follow must not use a number the client has seen: the client's replay
    # window drops such a record without a word (it was the ServerHello), and the handshake
    # then waits a retransmission timer for a flight it already had.
    back: list[bytes] = []

    def observe(index: int, data: bytes) -> bool:
        back.append(data)
        return False

    async with (
        echo_server(default_config(pki)) as (server, port),
        lossy_relay(port, lambda index, data: index == 0, observe) as (relay, seen),
    ):
        with anyio.fail_after(8):
            client = await connect_dtls("127.0.0.1", relay, trusting(pki))
        async with client:
            assert await client.request(b"z", timeout=2) == b"Z"
    assert epoch0_record_numbers(seen[1]) == [1]  # the retransmitted hello
    numbers = [number for datagram in back for number in epoch0_record_numbers(datagram)]
    assert numbers[0] == 1  # the HelloVerifyRequest
    assert len(set(numbers)) == len(numbers), f"record numbers reused: {numbers}"
    assert numbers == sorted(numbers)
    assert server.statistics().dtls_handshakes == 1


async def test_a_lost_server_flight_is_sent_again(pki: PKI) -> None:
    # The server's first flight after the cookie (ServerHello to ServerHelloDone, datagram 1
    # back; datagram 0 is the HelloVerifyRequest) is lost.
    async with (
        echo_server(default_config(pki)) as (server, port),
        lossy_relay(port, lambda i, d: False, lambda index, data: index == 1) as (relay, _),
    ):
        with anyio.fail_after(8):
            client = await connect_dtls("127.0.0.1", relay, trusting(pki))
        async with client:
            assert await client.request(b"y", timeout=2) == b"Y"
        assert server.statistics().dtls_handshakes == 1


async def test_server_drops_a_handshake_that_stalls(pki: PKI) -> None:
    config = default_config(pki, handshake_timeout=0.3)
    async with (
        echo_server(config) as (server, port),
        await open_udp_endpoint("127.0.0.1") as peer,
    ):
        # A client that echoes the cookie, then never answers the server's flight.
        association = Association(client_context(verify=False), mtu=1200, server=False)
        association.handshake()
        await peer.send_packet(association.outgoing()[0], ("127.0.0.1", port))
        with anyio.fail_after(5):
            hello_verify_request, _ = await peer.recv_packet()
        association.feed_untrusted(hello_verify_request)
        association.handshake()
        await peer.send_packet(association.outgoing()[0], ("127.0.0.1", port))
        with anyio.fail_after(5):
            await peer.recv_packet()  # the server's flight: it has a session now
        assert server.statistics().dtls_sessions == 1
        await wait_until(lambda: server.statistics().dtls_sessions == 0, "handshake timeout")
        stats = server.statistics()
        assert (stats.dtls_handshakes, stats.dtls_handshake_failures) == (0, 1)


async def test_rate_limit_and_amplification_cap_apply(pki: PKI) -> None:
    async with echo_server(
        default_config(pki), rate_limit=RateLimit(1000, 100), amplification_factor=2
    ) as (server, port):
        async with await connect_dtls("127.0.0.1", port, trusting(pki)) as client:
            assert await client.request(b"fine", timeout=2) == b"FINE"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noisy:
            for _ in range(150):
                noisy.sendto(b"junk", ("127.0.0.1", port))

        def screened() -> int:
            stats = server.statistics()
            return stats.rate_limited + stats.dtls_records_dropped

        # Each junk datagram is either over the limit (before decryption) or not DTLS.
        await wait_until(lambda: screened() >= 150, "the junk screened")
        stats = server.statistics()
        assert stats.rate_limited > 0
        assert stats.amplification_dropped == 0


async def test_mutual_authentication(pki: PKI) -> None:
    config = DTLSServerConfig(
        server_context(
            pki.server.certfile,
            pki.server.keyfile,
            cafile=pki.cafile,
            require_client_certificate=True,
        )
    )
    async with echo_server(config) as (server, port):
        with pytest.raises(DTLSError):
            await connect_dtls("127.0.0.1", port, trusting(pki), handshake_timeout=3)
        stranger = client_context(
            cafile=pki.cafile, certfile=pki.stranger.certfile, keyfile=pki.stranger.keyfile
        )
        with pytest.raises(DTLSError):
            await connect_dtls("127.0.0.1", port, stranger, handshake_timeout=3)
        await wait_until(lambda: server.statistics().dtls_handshake_failures == 2, "failures")
        known = client_context(
            cafile=pki.cafile, certfile=pki.client.certfile, keyfile=pki.client.keyfile
        )
        async with await connect_dtls("127.0.0.1", port, known) as client:
            assert await client.request(b"me", timeout=2) == b"ME"
        assert server.statistics().dtls_handshakes == 1


async def test_shutdown_sends_close_notify(pki: PKI) -> None:
    server = DatagramServer("127.0.0.1", 0, same_echo, dtls=default_config(pki))
    async with anyio.create_task_group() as tasks:
        addresses = await tasks.start(server.serve_forever)
        client = await connect_dtls("127.0.0.1", addresses[0][1], trusting(pki))
        async with client:
            assert await client.request(b"hi", timeout=2) == b"hi"
            await server.shutdown(1)
            with anyio.fail_after(5), pytest.raises(DTLSError, match="peer closed"):
                await client.recv_packet()
            assert client.statistics().dtls_sessions == 0
            with pytest.raises(DTLSError, match="peer closed"):
                await client.send_packet(b"more")


async def test_garbage_and_replays_are_dropped_and_counted(pki: PKI) -> None:
    got: list[bytes] = []

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        got.append(request.packet)
        await request.respond(b"ack")

    server = DatagramServer("127.0.0.1", 0, handler, dtls=default_config(pki))
    async with server.serving() as addresses:
        port = addresses[0][1]
        async with await connect_dtls("127.0.0.1", port, trusting(pki)) as client:
            # A record sent twice: the second is a replay.
            association: Association = client._dtls.association
            (record,) = association.seal(b"once")
            client._dtls.send_nowait(record, None)
            client._dtls.send_nowait(record, None)
            # A forged record in the session's epoch, and bytes that are no record at all.
            forged = bytearray(record)
            forged[-1] ^= 1
            forged[10] ^= 0x40  # a fresh sequence number, so it is not a replay
            client._dtls.send_nowait(bytes(forged), None)
            client._dtls.send_nowait(b"\x00garbage", None)
            with anyio.fail_after(5):
                assert await client.recv_packet() == b"ack"
            # The session survives and still works.
            assert await client.request(b"after", timeout=2) == b"ack"
        # From a peer with no session at all.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"\x17\xfe\xfd" + bytes(10) + b"junk", ("127.0.0.1", port))
        await wait_until(lambda: server.statistics().dtls_records_dropped >= 4, "drops")
    assert got == [b"once", b"after"]
    stats = server.statistics()
    assert stats.dtls_records_dropped == 4
    assert stats.handler_errors == 0


async def test_a_late_copy_of_the_hello_does_not_reset_the_session(pki: PKI) -> None:
    async with (
        echo_server(default_config(pki)) as (server, port),
        lossy_relay(port, lambda index, data: False) as (relay, seen),
        await connect_dtls("127.0.0.1", relay, trusting(pki)) as client,
    ):
        assert await client.request(b"one", timeout=2) == b"ONE"
        client._dtls.send_nowait(seen[1], None)  # the hello with the cookie, again
        assert await client.request(b"two", timeout=2) == b"TWO"
        stats = server.statistics()
        assert (stats.dtls_handshakes, stats.dtls_sessions) == (1, 1)
        assert stats.dtls_records_dropped == 1


async def test_a_restarted_client_gets_a_new_session(pki: PKI) -> None:
    async with echo_server(default_config(pki)) as (server, port):
        first = await connect_dtls("127.0.0.1", port, trusting(pki))
        assert await first.request(b"a", timeout=2) == b"A"
        local = first.local_address
        assert isinstance(local, tuple)
        await SocketIO.aclose(first._dtls)  # gone without a close_notify, as in a crash
        async with await connect_dtls(
            "127.0.0.1", port, trusting(pki), local_address=("127.0.0.1", local[1])
        ) as second:
            assert await second.request(b"b", timeout=2) == b"B"
            stats = server.statistics()
            assert (stats.dtls_handshakes, stats.dtls_sessions) == (2, 1)


async def test_session_table_is_bounded_lru(pki: PKI) -> None:
    async with echo_server(default_config(pki, max_sessions=2)) as (server, port):
        clients = [await connect_dtls("127.0.0.1", port, trusting(pki)) for _ in range(3)]
        try:
            assert server.statistics().dtls_sessions == 2
            # The first client's session was evicted (least recently used), with a
            # close_notify.
            with anyio.fail_after(5), pytest.raises(DTLSError, match="peer closed"):
                await clients[0].recv_packet()
            for client in clients[1:]:
                assert await client.request(b"kept", timeout=2) == b"KEPT"
        finally:
            for client in clients:
                await client.aclose()


async def test_idle_sessions_expire(pki: PKI) -> None:
    async with echo_server(default_config(pki, idle_timeout=0.2)) as (server, port):
        async with await connect_dtls("127.0.0.1", port, trusting(pki)) as client:
            assert await client.request(b"a", timeout=2) == b"A"
            assert server.statistics().dtls_sessions == 1
            # The server closes the idle session with a close_notify.
            with anyio.fail_after(5), pytest.raises(DTLSError, match="peer closed"):
                await client.recv_packet()
        assert server.statistics().dtls_sessions == 0


async def test_spoofed_hello_costs_one_smaller_reply_and_no_state(pki: PKI) -> None:
    hello = first_client_hello()
    async with echo_server(default_config(pki)) as (server, port):
        async with await open_udp_endpoint("127.0.0.1") as spoofer:
            for _ in range(3):
                await spoofer.send_packet(hello, ("127.0.0.1", port))
            with anyio.fail_after(5):
                replies = [(await spoofer.recv_packet())[0] for _ in range(3)]
        assert all(len(reply) < len(hello) for reply in replies)
        assert all(reply[0] == 22 and reply[13] == 3 for reply in replies)  # HelloVerifyRequest
        assert server.statistics().dtls_sessions == 0
        # A hello too short to be answered with less is not answered at all.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tiny:
            tiny.sendto(hello[:60], ("127.0.0.1", port))
        await wait_until(lambda: server.statistics().dtls_records_dropped == 1, "dropped")


def first_client_hello() -> bytes:
    association = Association(client_context(verify=False), mtu=1200, server=False)
    assert not association.handshake()
    (hello,) = association.outgoing()
    return hello


async def test_bad_arguments(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="DTLSServerConfig"):
        DatagramServer("127.0.0.1", 0, same_echo, dtls=object())  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_sessions"):
        default_config(pki, max_sessions=0)
    with pytest.raises(TypeError, match=r"OpenSSL\.SSL\.Context"):
        await connect_dtls("127.0.0.1", 1, object())  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="handshake_timeout"):
        await connect_dtls("127.0.0.1", 1, trusting(pki), handshake_timeout=0)
    with pytest.raises(ValueError, match="cafile"):
        server_context(pki.server.certfile, pki.server.keyfile, require_client_certificate=True)
    with pytest.raises(ValueError, match="not a DTLS"):
        await connect_dtls("127.0.0.1", 9, SSL.Context(SSL.TLS_CLIENT_METHOD))
    with pytest.raises(ValueError, match="not a DTLS"):
        DatagramServer("127.0.0.1", 0, same_echo, dtls=SSL.Context(SSL.TLS_METHOD))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))
        with pytest.raises(TypeError, match="connect_dtls"):
            DTLSClient.from_socket(sock)
        with pytest.raises(TypeError, match="constructor"):
            SyncDTLSClient.from_socket(sock)


async def test_contexts_are_reusable(pki: PKI) -> None:
    client_ctx = trusting(pki)
    server_ctx = server_context(pki.server.certfile, pki.server.keyfile)
    for _ in range(2):  # a context serves server after server, client after client
        async with echo_server(server_ctx) as (_, port):
            for _ in range(2):
                async with await connect_dtls("127.0.0.1", port, client_ctx) as client:
                    assert await client.request(b"again", timeout=2) == b"AGAIN"
    used = server_context(pki.server.certfile, pki.server.keyfile)
    SSL.Connection(used, None)
    with pytest.raises(ValueError, match="context of its own"):
        DatagramServer("127.0.0.1", 0, same_echo, dtls=used)


async def test_server_initiated_sends_are_encrypted(pki: PKI) -> None:
    senders: list[Any] = []

    async def remember(request: DatagramRequest[bytes, bytes]) -> None:
        senders.append(request.address)
        await request.respond(b"noted")

    server = DatagramServer("127.0.0.1", 0, remember, dtls=default_config(pki))
    async with (
        server.serving() as addresses,
        await connect_dtls("127.0.0.1", addresses[0][1], trusting(pki)) as client,
    ):
        assert await client.request(b"hi", timeout=2) == b"noted"
        await server.send_packet(b"pushed", senders[0])
        with anyio.fail_after(5):
            assert await client.recv_packet() == b"pushed"
        with pytest.raises(ValueError, match="no DTLS session"):
            await server.send_packet(b"nobody", ("127.0.0.1", 9))


def test_a_missing_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['OpenSSL'] = None\n"
        "import anydgram\n"
        "async def h(r): pass\n"
        "try:\n"
        "    anydgram.DatagramServer('127.0.0.1', 0, h, dtls=object())\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'anydgram[dtls]'" in result.stdout
