"""SyncDTLSClient: the blocking twin, against a DatagramServer(dtls=...) in another thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.from_thread
import pytest

from anydgram import DatagramProtocol, DatagramRequest, DatagramServer
from anydgram.dtls import DTLSError, SyncDTLSClient, client_context
from anydgram.serializers import JSONSerializer
from dtls_harness import PKI, default_config, make_pki, upper_echo


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: PKI) -> Iterator[tuple[DatagramServer[bytes, bytes], int]]:
    """An upper-casing DTLS server on an event loop in a thread of its own (trio)."""
    dtls_server = DatagramServer("127.0.0.1", 0, upper_echo, dtls=default_config(pki))
    with anyio.from_thread.start_blocking_portal("trio") as portal:
        context = portal.wrap_async_context_manager(dtls_server.serving(grace_period=1))
        addresses = context.__enter__()
        try:
            yield dtls_server, addresses[0][1]
        finally:
            context.__exit__(None, None, None)


def test_round_trip_request_and_counters(
    pki: PKI, server: tuple[DatagramServer[bytes, bytes], int]
) -> None:
    dtls_server, port = server
    with SyncDTLSClient("127.0.0.1", port, client_context(cafile=pki.cafile)) as client:
        client.send_packet(b"hello")
        assert client.recv_packet(timeout=5) == b"HELLO"
        assert client.request(b"req", timeout=2) == b"REQ"
        cert = client.peer_certificate
        assert cert is not None
        assert cert.subject.rfc4514_string() == "CN=localhost"
        stats = client.statistics()
        assert (stats.dtls_handshakes, stats.dtls_sessions) == (1, 1)
        with pytest.raises(TimeoutError):
            client.recv_packet(timeout=0.05)
    assert dtls_server.statistics().dtls_handshakes == 1


def test_threads_share_one_client(
    pki: PKI, server: tuple[DatagramServer[bytes, bytes], int]
) -> None:
    _, port = server
    with SyncDTLSClient("localhost", port, client_context(cafile=pki.cafile)) as client:

        def ask(i: int) -> bytes:
            return client.request(b"n%d" % i, timeout=2, match=lambda reply: reply == b"N%d" % i)

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, range(20)))
    assert replies == [b"N%d" % i for i in range(20)]


def test_typed_packets(pki: PKI) -> None:
    protocol = DatagramProtocol(JSONSerializer())

    async def handler(request: DatagramRequest[Any, Any]) -> None:
        await request.respond({"echo": request.packet})

    dtls_server = DatagramServer(
        "127.0.0.1", 0, handler, protocol=protocol, dtls=default_config(pki)
    )
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(dtls_server.serving(grace_period=1)) as addresses,
        SyncDTLSClient(
            "127.0.0.1", addresses[0][1], client_context(cafile=pki.cafile), protocol=protocol
        ) as client,
    ):
        assert client.request([1, "two"], timeout=2) == {"echo": [1, "two"]}


def test_failures_are_dtls_errors(
    pki: PKI, server: tuple[DatagramServer[bytes, bytes], int]
) -> None:
    _, port = server
    with pytest.raises(DTLSError, match="not valid for"):
        SyncDTLSClient(
            "127.0.0.1", port, client_context(cafile=pki.cafile), server_hostname="nope.test"
        )
    with pytest.raises(DTLSError, match="certificate verify failed"):
        SyncDTLSClient("127.0.0.1", port, client_context(cafile=pki.other_cafile))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(DTLSError, match="refused"):
        SyncDTLSClient("127.0.0.1", closed_port, client_context(verify=False), handshake_timeout=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(DTLSError, match="timed out"):
            SyncDTLSClient(
                "127.0.0.1",
                silent.getsockname()[1],
                client_context(verify=False),
                handshake_timeout=0.2,
            )


def test_close_wakes_a_blocked_receiver(
    pki: PKI, server: tuple[DatagramServer[bytes, bytes], int]
) -> None:
    _, port = server
    client = SyncDTLSClient("127.0.0.1", port, client_context(cafile=pki.cafile))
    errors: list[BaseException] = []
    started = threading.Event()

    def receive() -> None:
        started.set()
        try:
            client.recv_packet(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receive)
    thread.start()
    started.wait(5)
    client.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], anyio.ClosedResourceError)


def test_server_shutdown_reaches_the_client(pki: PKI) -> None:
    dtls_server = DatagramServer("127.0.0.1", 0, upper_echo, dtls=default_config(pki))
    with anyio.from_thread.start_blocking_portal("trio") as portal:
        context = portal.wrap_async_context_manager(dtls_server.serving(grace_period=1))
        addresses = context.__enter__()
        client = SyncDTLSClient("127.0.0.1", addresses[0][1], client_context(cafile=pki.cafile))
        with client:
            assert client.request(b"x", timeout=2) == b"X"
            context.__exit__(None, None, None)  # shutdown: close_notify to the client
            with pytest.raises(DTLSError, match="peer closed"):
                client.recv_packet(timeout=5)
