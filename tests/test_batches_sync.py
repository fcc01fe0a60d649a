"""Batches on the blocking side: ``SyncDatagramClient`` and ``SyncDatagramEndpoint``.

The same promises as the async side (``test_batches.py``), with ``timeout=`` instead of
cancellation, and threads: a sender blocked in ``poll()`` resumes when a reader thread makes
room, and two threads receiving batches from one socket never see a datagram twice.
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramTooLargeError,
    SyncDatagramClient,
    SyncDatagramEndpoint,
)
from anydgram.serializers import BytesSerializer, JSONSerializer
from batch_harness import (
    FAMILY_LIMIT,
    PATTERN,
    RAW_MAX,
    RCVBUF,
    RECV_PATHS,
    SEND_PATHS,
    V4_SIZES,
    V6_SIZES,
    Paths,
    Syscalls,
    check_receive_path,
    check_send_path,
    expected_path,
    index_of,
    numbered,
    payloads,
    port_of,
    require_paths,
)

SyncPair = tuple[SyncDatagramClient[bytes, bytes], SyncDatagramEndpoint[bytes, bytes]]


@pytest.fixture
def pair(family_host: tuple[int, str]) -> Iterator[SyncPair]:
    _, host = family_host
    with SyncDatagramEndpoint(host, 0, protocol=RAW_MAX, recv_buffer_size=RCVBUF) as endpoint:
        port = port_of(endpoint)
        with SyncDatagramClient(host, port, protocol=RAW_MAX, recv_buffer_size=RCVBUF) as client:
            yield client, endpoint


def _receive_exactly(recv: Callable[..., list[Any]], count: int, max_count: int = 64) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while len(got) < count:
        batch = recv(max_count=max_count, timeout=max(deadline - time.monotonic(), 0))
        assert 1 <= len(batch) <= max_count
        got += batch
    assert len(got) == count
    return got


def _wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``predicate`` until true (counters have no event); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.002)


def _warm_up(
    client: SyncDatagramClient[Any, Any], endpoint: SyncDatagramEndpoint[Any, Any]
) -> None:
    """A datagram each way through ``recv_packets``: both have chosen their batch receive."""
    client.send_packet(b"hello")
    assert [p for p, _ in endpoint.recv_packets(timeout=10)] == [b"hello"]
    endpoint.send_packet(b"hello", client.local_address)
    assert client.recv_packets(timeout=10) == [b"hello"]


@pytest.mark.parametrize("recv_path", RECV_PATHS)
@pytest.mark.parametrize("send_path", SEND_PATHS)
def test_round_trip_is_byte_exact_on_every_path(
    monkeypatch: pytest.MonkeyPatch,
    family_host: tuple[int, str],
    pair: SyncPair,
    send_path: str,
    recv_path: str,
) -> None:
    family, _ = family_host
    require_paths(family, send_path, recv_path)
    client, endpoint = pair
    paths, syscalls = Paths(monkeypatch), Syscalls(monkeypatch)
    for side in pair:
        paths.force(side, send_path, recv_path)
    _warm_up(client, endpoint)
    logs = [syscalls.watch(side).log for side in pair]
    batch = payloads(V4_SIZES if family == socket.AF_INET else V6_SIZES)
    total = sum(map(len, batch))
    client.send_packets(batch, timeout=10)
    got = _receive_exactly(endpoint.recv_packets, len(batch))
    assert [packet for packet, _ in got] == batch
    assert {address for _, address in got} == {client.local_address}
    endpoint.send_packets([(packet, client.local_address) for packet in batch], timeout=10)
    assert _receive_exactly(client.recv_packets, len(batch)) == batch
    send, recv = expected_path(send_path), expected_path(recv_path)
    sides: tuple[Any, Any] = pair
    for side, log in zip(sides, logs, strict=True):
        check_send_path(log, send, len(batch))
        check_receive_path(side, log, recv)
        if send == "gso" and recv == "gro":
            assert log.gro_trains
        stats = side.statistics()
        assert (stats.datagrams_sent, stats.bytes_sent) == (len(batch) + 1, total + 5)
        assert (stats.datagrams_received, stats.bytes_received) == (len(batch) + 1, total + 5)
        assert (stats.oversize, stats.send_errors, stats.kernel_drops) == (0, 0, 0)
    client.send_packet(b"marker")  # nothing was duplicated before it
    assert [p for p, _ in endpoint.recv_packets(timeout=10)] == [b"marker"]


def test_too_large_or_bad_packets_send_nothing(family_host: tuple[int, str]) -> None:
    family, host = family_host
    limit = FAMILY_LIMIT[family]
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=70000)
    endpoint = SyncDatagramEndpoint(host, 0, protocol=protocol)
    with endpoint, SyncDatagramClient(host, port_of(endpoint), protocol=protocol) as client:
        good = payloads([0, 1200, limit], copies=1)
        with pytest.raises(DatagramTooLargeError) as info:
            client.send_packets([*good, PATTERN[: limit + 1]])
        assert (info.value.size, info.value.limit) == (limit + 1, limit)
        with pytest.raises(DatagramTooLargeError):
            endpoint.send_packets([(p, client.local_address) for p in [*good, PATTERN]])
        with pytest.raises(TypeError):
            client.send_packets([b"ok", 5])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="address"):
            endpoint.send_packets([(b"ok", client.local_address), (b"ok", 5)])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="timeout"):
            client.send_packets([b"ok"], timeout=-1)
        for side in (client, endpoint):
            assert side.statistics().datagrams_sent == 0
        client.send_packets(good)
        got = _receive_exactly(endpoint.recv_packets, len(good))
        assert [packet for packet, _ in got] == good


def test_max_count_and_timeout_are_checked(pair: SyncPair) -> None:
    for side in pair:
        for bad in (0, -1):
            with pytest.raises(ValueError, match="max_count"):
                side.recv_packets(max_count=bad, timeout=5)
        for wrong in (2.0, "2", None, False):
            with pytest.raises(TypeError, match="max_count"):
                side.recv_packets(max_count=wrong, timeout=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            side.recv_packets(timeout=-0.5)
        with pytest.raises(TimeoutError):
            side.recv_packets(timeout=0.05)  # nothing came: nothing lost either
    client, endpoint = pair
    client.send_packet(b"after the timeouts")
    assert endpoint.recv_packets(timeout=10) == [(b"after the timeouts", client.local_address)]


@pytest.mark.parametrize("recv_path", RECV_PATHS)
def test_a_batch_stops_before_an_undecodable_datagram(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], recv_path: str
) -> None:
    family, host = family_host
    require_paths(family, "", recv_path)
    with SyncDatagramEndpoint(host, 0, protocol=DatagramProtocol(JSONSerializer())) as endpoint:
        Paths(monkeypatch).force(endpoint, recv=recv_path)
        with socket.socket(family, socket.SOCK_DGRAM) as raw:
            raw.connect((host, port_of(endpoint)))
            for datagram in (b"1", b"2", b"{bad", b"3", b"[4]"):
                raw.send(datagram)
            sender = raw.getsockname()
            before: list[Any] = []
            with pytest.raises(DatagramProtocolParseError) as info:  # noqa: PT012
                while True:
                    before += endpoint.recv_packets(timeout=10)
            assert before == [(1, sender), (2, sender)]
            assert (info.value.data, info.value.address) == (b"{bad", sender)
            assert _receive_exactly(endpoint.recv_packets, 2) == [(3, sender), ([4], sender)]
        stats = endpoint.statistics()
        assert (stats.parse_errors, stats.datagrams_received) == (1, 5)


# -- a blocked sender: resuming, timeouts, and a full buffer at random points ----------------


def _unix_pair(tmp_path: pathlib.Path) -> tuple[socket.socket, SyncDatagramClient[bytes, bytes]]:
    """A Unix peer that reads only when told, and a blocking client connected to it."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(str(tmp_path / "peer"))
    peer.setblocking(False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.bind(str(tmp_path / "client"))
    sock.connect(str(tmp_path / "peer"))
    return peer, SyncDatagramClient.from_socket(sock)


def _read(peer: socket.socket, count: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} came"
        try:
            got.append(peer.recv(1 << 17))
        except BlockingIOError:
            time.sleep(0.001)
    return got


def test_a_blocked_sender_resumes_when_the_reader_makes_room(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    syscalls = Syscalls(monkeypatch)
    peer, client = _unix_pair(tmp_path)
    batch = numbered(300, 1000)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            client.send_packets(batch, timeout=20)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with peer, client:
        log = syscalls.watch(client).log
        sender = threading.Thread(target=send)
        sender.start()
        try:
            # The counters merge when the call returns: the kernel's refusals show it blocked.
            _wait_until(lambda: log.full > 0)
            assert _read(peer, len(batch)) == batch
        finally:
            sender.join(20)
        assert not errors
        assert client.statistics().datagrams_sent == len(batch)
        with pytest.raises(BlockingIOError):
            peer.recv(1)  # nothing twice


def test_a_send_timeout_leaves_each_datagram_sent_once_or_not(tmp_path: pathlib.Path) -> None:
    peer, client = _unix_pair(tmp_path)
    batch = numbered(300, 1000)
    with peer, client:
        with pytest.raises(TimeoutError):
            client.send_packets(batch, timeout=0.2)  # nobody reads
        sent = client.statistics().datagrams_sent
        assert 0 < sent < len(batch)
        assert _read(peer, sent) == batch[:sent]
        with pytest.raises(BlockingIOError):
            peer.recv(1)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(_read(peer, len(batch) - sent)))
        reader.start()
        try:
            client.send_packets(batch[sent:], timeout=20)
        finally:
            reader.join(20)
        assert got == batch[sent:]


@pytest.mark.parametrize("send_path", SEND_PATHS)
def test_a_buffer_full_at_random_points_resumes_exactly(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], pair: SyncPair, send_path: str
) -> None:
    require_paths(family_host[0], send_path)
    client, endpoint = pair
    Paths(monkeypatch).force(endpoint, send=send_path)
    syscalls = Syscalls(monkeypatch)
    spy = syscalls.watch(endpoint)
    rng = random.Random(81)
    full = BlockingIOError(errno.EAGAIN, "full")
    spy.gso_errors = [full if rng.random() < 0.3 else None for _ in range(2000)]
    spy.single_errors = [full if rng.random() < 0.3 else None for _ in range(2000)]
    syscalls.sendmmsg_policy = lambda fd, count: (
        -errno.EAGAIN if rng.random() < 0.3 else rng.randint(1, count)
    )
    batch = [i.to_bytes(4, "big") + bytes(rng.choice([1200, 1200, 60, 5000])) for i in range(400)]
    endpoint.send_packets([(packet, client.local_address) for packet in batch], timeout=20)
    check_send_path(spy.log, expected_path(send_path), len(batch))
    assert _receive_exactly(client.recv_packets, len(batch)) == batch
    assert endpoint.statistics().datagrams_sent == len(batch)


# -- refusals, counters, threads ------------------------------------------------------------


def test_a_refused_destination_is_counted_and_the_rest_goes() -> None:
    refused = ("127.255.255.255", 9)  # lo's broadcast address: EACCES without SO_BROADCAST
    with (
        SyncDatagramEndpoint("127.0.0.1", 0) as sender,
        SyncDatagramEndpoint("127.0.0.1", 0, recv_buffer_size=RCVBUF) as receiver,
    ):
        live = ("127.0.0.1", port_of(receiver))
        batch = numbered(12, 800)
        targets = [live] * 4 + [refused] * 2 + [live] * 4 + [refused] + [live]
        sender.send_packets(list(zip(batch, targets, strict=True)))
        good = [p for p, t in zip(batch, targets, strict=True) if t == live]
        assert [p for p, _ in _receive_exactly(receiver.recv_packets, len(good))] == good
        assert (sender.statistics().datagrams_sent, sender.statistics().send_errors) == (9, 3)
        with pytest.raises(PermissionError):
            sender.send_packets([(b"x", refused), (b"y", refused)])
        assert sender.statistics().send_errors == 5


@pytest.mark.parametrize("recv_path", RECV_PATHS)
def test_oversize_and_kernel_drops_are_exact(
    monkeypatch: pytest.MonkeyPatch, recv_path: str
) -> None:
    require_paths(socket.AF_INET, "gso", recv_path)
    small = DatagramProtocol(BytesSerializer(), max_datagram_size=1000)
    rx = SyncDatagramEndpoint("127.0.0.1", 0, protocol=small, recv_buffer_size=RCVBUF)
    with rx, SyncDatagramClient("127.0.0.1", port_of(rx)) as tx:
        Paths(monkeypatch).force(rx, recv=recv_path)
        tx.send_packet(b"hello")
        assert [p for p, _ in rx.recv_packets(timeout=10)] == [b"hello"]
        batch = payloads([500, 1200, 1200, 1200, 999, 1001, 64, 1000, 1000], copies=1)
        tx.send_packets(batch)
        fitting = [p for p in batch if len(p) <= 1000]
        assert [p for p, _ in _receive_exactly(rx.recv_packets, len(fitting))] == fitting
        tx.send_packet(b"marker")
        assert [p for p, _ in rx.recv_packets(timeout=10)] == [b"marker"]
        stats = rx.statistics()
        assert (stats.oversize, stats.datagrams_received) == (4, len(fitting) + 2)
    rx = SyncDatagramEndpoint("127.0.0.1", 0, recv_buffer_size=4096)
    with rx, SyncDatagramClient("127.0.0.1", port_of(rx)) as tx:
        Paths(monkeypatch).force(tx, send="sendmmsg")  # GSO trains are dropped whole
        Paths(monkeypatch).force(rx, recv=recv_path)
        batch = numbered(200, 1000)
        tx.send_packets(batch)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) + rx.statistics().kernel_drops < len(batch):
            assert time.monotonic() < deadline, (len(got), rx.statistics())
            with contextlib.suppress(TimeoutError):
                got += [p for p, _ in rx.recv_packets(timeout=0.05)]
        stats = rx.statistics()
        assert len(got) + stats.kernel_drops == len(batch)
        assert stats.kernel_drops > 0
        indices = [index_of(p) for p in got]
        assert indices == sorted(set(indices))


@pytest.mark.parametrize("recv_path", RECV_PATHS)
def test_two_threads_receiving_batches_never_share_a_datagram(
    monkeypatch: pytest.MonkeyPatch, pair: SyncPair, recv_path: str, family_host: tuple[int, str]
) -> None:
    require_paths(family_host[0], "gso", recv_path)
    client, endpoint = pair
    Paths(monkeypatch).force(endpoint, recv=recv_path)
    _warm_up(client, endpoint)
    batch = numbered(2000, 200)
    seen: list[list[bytes]] = [[], []]
    done = threading.Event()

    def receive(into: list[bytes]) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                into += [p for p, _ in endpoint.recv_packets(max_count=7, timeout=0.05)]

    threads = [threading.Thread(target=receive, args=(into,)) for into in seen]
    for thread in threads:
        thread.start()
    try:
        for start in range(0, len(batch), 200):  # within what the receive buffer holds
            client.send_packets(batch[start : start + 200])

            def arrived(end: int = start + 200) -> bool:
                return len(seen[0]) + len(seen[1]) >= end

            _wait_until(arrived)
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    together = [index_of(p) for p in seen[0] + seen[1]]
    assert sorted(together) == list(range(len(batch)))  # each exactly once
    for part in seen:
        indices = [index_of(p) for p in part]
        assert indices == sorted(indices)  # each thread sees them in order
    assert endpoint.statistics().datagrams_received == len(batch) + 1
