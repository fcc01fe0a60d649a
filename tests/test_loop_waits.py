"""Readiness waits that keep an asyncio reader registered (``_loop_waits.py``).

On asyncio and uvloop a socket's reader stays registered between waits; these tests check the
three ways that could go wrong: a datagram nobody waits for must not make the loop spin, a
closed socket must leave the selector (its descriptor number is reused at once), and closing
must wake the waiter. On trio the path is not used, which the same tests check.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

import anydgram
from anydgram._loop_waits import LoopReadiness
from anydgram._socket_io import SocketIO
from batch_harness import closed_address

pytestmark = pytest.mark.anyio


def _io(client: anydgram.DatagramClient[bytes, bytes]) -> SocketIO:
    io: SocketIO = client._io
    return io


def _registered(waits: LoopReadiness) -> bool:
    return waits._registered


def _peer() -> socket.socket:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    return peer


async def test_the_reader_stays_between_waits_and_leaves_when_nobody_waits(
    anyio_backend: Any,
) -> None:
    with _peer() as peer:
        async with await anydgram.connect_udp(*peer.getsockname()) as client:
            await client.send_packet(b"ping")
            _, address = peer.recvfrom(100)
            got: list[bytes] = []

            async def receive() -> None:
                got.append(await client.recv_packet())

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive)
                    await anyio.wait_all_tasks_blocked()  # waiting: the reader is registered
                    peer.sendto(b"one", address)
            assert got == [b"one"]
            waits = _io(client)._loop_waits
            if anyio_backend[0] == "trio":
                assert waits is None  # trio's own waits are used
                return
            assert waits is not None
            assert _registered(waits)  # kept for the next wait
            # A datagram with nobody waiting: the loop reports it once, and the reader goes,
            # so the loop does not spin on it while it waits unread.
            peer.sendto(b"two", address)
            with anyio.fail_after(5):
                while _registered(waits):
                    await anyio.lowlevel.checkpoint()
            assert await client.recv_packet() == b"two"  # nothing was lost


async def test_a_closed_socket_leaves_the_selector_for_the_next_one(anyio_backend: Any) -> None:
    # Each client's socket gets the descriptor number the previous one freed; a reader left
    # behind in the selector would break the next client's waits.
    with _peer() as peer:
        for close_now in (False, True, False):
            client = await anydgram.connect_udp(*peer.getsockname())
            with anyio.move_on_after(0.05):
                await client.recv_packet()  # a wait registers the reader, then is cancelled
            if close_now:
                _io(client).close_now()
            await client.aclose()
            client = await anydgram.connect_udp(*peer.getsockname())
            async with client:
                await client.send_packet(b"ping")
                _, address = peer.recvfrom(100)
                peer.sendto(b"pong", address)
                with anyio.fail_after(5):
                    assert await client.recv_packet() == b"pong"


async def test_closing_wakes_a_waiting_receiver(anyio_backend: Any) -> None:
    with _peer() as peer:
        client = await anydgram.connect_udp(*peer.getsockname())
        outcome: list[str] = []

        async def receive() -> None:
            try:
                await client.recv_packet()
            except anyio.ClosedResourceError:
                outcome.append("closed")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                await client.aclose()
        assert outcome == ["closed"]


async def test_an_icmp_error_does_not_stop_the_waits(anyio_backend: Any) -> None:
    # An unconnected socket queues ICMP errors (IP_RECVERR), which the kernel reports as
    # EPOLLERR. libuv takes that as the end of a poll handle: uvloop runs the reader once and
    # closes the handle, so a reader kept registered would never be called again.
    with _peer() as peer:
        unreachable = closed_address(socket.AF_INET, "127.0.0.1")
        async with await anydgram.open_udp_endpoint("127.0.0.1", 0) as endpoint:
            address = endpoint.socket.getsockname()
            got: list[bytes] = []

            async def receive() -> None:
                packet, _ = await endpoint.recv_packet()
                got.append(packet)

            for round_ in range(3):
                await endpoint.send_packet(b"lost", unreachable)  # port unreachable comes back
                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(receive)
                        await anyio.wait_all_tasks_blocked()
                        peer.sendto(b"after %d" % round_, address)
                assert got[-1:] == [b"after %d" % round_]
            assert endpoint.statistics().icmp_errors >= 1
