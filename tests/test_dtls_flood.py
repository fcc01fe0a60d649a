"""A flood of ClientHellos from many sources costs the DTLS server no per-peer state."""

from __future__ import annotations

import socket
import threading

import anyio
import pytest

from anydgram.dtls import client_context, connect_dtls
from anydgram.dtls._association import Association
from dtls_harness import PKI, default_config, echo_server, make_pki

SOURCES = 1000
HELLOS_PER_SOURCE = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def flood(port: int, hello: bytes, done: threading.Event) -> None:
    """Send ``HELLOS_PER_SOURCE`` real ClientHellos from each of ``SOURCES`` loopback addresses."""
    try:
        for index in range(SOURCES):
            source = f"127.{1 + index // 250}.{index % 250}.1"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((source, 0))
                for _ in range(HELLOS_PER_SOURCE):
                    sock.sendto(hello, ("127.0.0.1", port))
    finally:
        done.set()


@pytest.mark.timeout(120)
async def test_hello_flood_leaves_no_state_while_a_real_client_connects(pki: PKI) -> None:
    association = Association(client_context(verify=False), mtu=1200, server=False)
    association.handshake()
    (hello,) = association.outgoing()
    flooded = SOURCES * HELLOS_PER_SOURCE
    async with echo_server(default_config(pki)) as (server, port):
        before = resident_bytes()
        done = threading.Event()
        thread = threading.Thread(target=flood, args=(port, hello, done), daemon=True)
        thread.start()
        try:
            client = await connect_dtls(
                "127.0.0.1", port, client_context(cafile=pki.cafile), handshake_timeout=10
            )
            async with client:
                assert await client.request(b"still here", timeout=2) == b"STILL HERE"
                assert server.statistics().dtls_sessions == 1  # the real client's only
                with anyio.fail_after(60):
                    while not done.is_set():  # noqa: ASYNC110 - a thread's flag, polled
                        await anyio.sleep(0.05)
                with anyio.fail_after(30):
                    while True:
                        stats = server.statistics()
                        if stats.datagrams_received + stats.kernel_drops >= flooded:
                            break
                        await anyio.sleep(0.05)
                # Every hello has been read or dropped by the kernel: none left a session.
                assert stats.dtls_sessions == 1
                assert stats.dtls_handshakes == 1
                assert stats.dtls_handshake_failures == 0
                # Per-peer state would be an OpenSSL connection each (tens of kilobytes):
                # 10,000 of them, or even the 4,096 the table allows, would grow the
                # process by far more.
                grown = resident_bytes() - before
                assert grown < 16 << 20, f"the server grew by {grown} bytes"
                assert await client.request(b"served", timeout=2) == b"SERVED"
            # The client's close_notify ends its session. It is one datagram, sent once: the
            # client closes after the flood, since a receive buffer full of hellos would drop
            # it (counted in kernel_drops) and leave the session to its idle timeout.
            with anyio.fail_after(10):
                while server.statistics().dtls_sessions:  # noqa: ASYNC110 - the close_notify
                    await anyio.sleep(0.01)
        finally:
            thread.join(60)
