"""request(): retries with backoff, oldest-first reply routing, unmatched counting.

The routing table and the schedule are tested with plain calls. The behaviour cases run on
every implementation through the endpoint harness (the async endpoints, and the blocking ones
behind their async adapter), against small servers written here as tasks over a raw socket:
one that echoes, one that loses requests (seeded), one that answers twice, one that answers a
batch in random order.
"""

from __future__ import annotations

import random
import socket
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from anydgram import DatagramProtocol, DatagramTooLargeError
from anydgram._client_request import PendingRequest, RequestTable, destination_key, peer_key
from anydgram._retry_schedule import MAX_BACKOFF_WAIT, attempt_timeouts
from anydgram.serializers import BytesSerializer, JSONSerializer
from endpoint_harness import (
    KINDS,
    Client,
    Harness,
    RawPeer,
    harness_fixture,
    harness_params,
    wait_until,
)

UDP = [k for k in KINDS if k.startswith("udp")]


harness = harness_fixture("harness", harness_params(KINDS))


# For cases about timing and volume, where the address family does not matter.
udp_harness = harness_fixture("udp_harness", harness_params(["udp4"]))


ip_harness = harness_fixture("ip_harness", harness_params(UDP))


# For cases only the async API can express (cancel scopes around request()).
async_harness = harness_fixture("async_harness", harness_params(["udp4"], ["async"]))


# -- the schedule ----------------------------------------------------------------------------


def test_attempt_timeouts_grow_exponentially_with_jitter() -> None:
    timeouts = list(attempt_timeouts(0.1, 5, 2.0, rng=random.Random(7)))
    assert len(attempt_timeouts(0.1, 5, 2.0)) == len(timeouts) == 5
    for i, value in enumerate(timeouts):
        base = 0.1 * 2.0**i
        assert base <= value <= base * 1.25
    assert timeouts == list(attempt_timeouts(0.1, 5, 2.0, rng=random.Random(7)))
    assert timeouts != list(attempt_timeouts(0.1, 5, 2.0, rng=random.Random(8)))
    # backoff=1 keeps every wait near the first one.
    assert all(1.0 <= t <= 1.25 for t in attempt_timeouts(1, 4, 1))


def test_backoff_stops_growing_a_wait_at_an_hour() -> None:
    # 2**1100 overflows a float: the schedule caps the wait instead of raising OverflowError.
    waits = list(attempt_timeouts(1.0, 1100, 2.0))
    assert len(waits) == 1100
    assert all(MAX_BACKOFF_WAIT <= wait <= MAX_BACKOFF_WAIT * 1.25 for wait in waits[12:])
    assert all(wait <= MAX_BACKOFF_WAIT * 1.25 for wait in waits)
    # Huge factors and a first wait over the cap: the wait never grows, and is never cut.
    assert all(5000 <= w <= 6250 for w in attempt_timeouts(5000, 4, 1e308))
    assert all(w <= MAX_BACKOFF_WAIT * 1.25 for w in attempt_timeouts(1e-300, 5, 1e308))


def test_many_attempts_cost_nothing_up_front() -> None:
    tracemalloc.start()
    try:
        schedule = attempt_timeouts(0.1, 3_000_000, 2.0)
        first = next(iter(schedule))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(schedule) == 3_000_000
    assert 0.1 <= first <= 0.125
    assert peak < 64 * 1024  # a list of the waits would take about 96 MB


def test_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(1)
    factors = [next(iter(attempt_timeouts(1.0, 1, 2.0, rng=rng))) for _ in range(2000)]
    assert min(factors) < 1.01
    assert max(factors) > 1.24


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": float("inf")}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"timeout": True}, TypeError),
        ({"attempts": 0}, ValueError),
        ({"attempts": 2.0}, TypeError),
        ({"attempts": True}, TypeError),
        ({"backoff": 0.5}, ValueError),
        ({"backoff": None}, TypeError),
    ],
)
def test_attempt_timeouts_refuse_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"timeout": 1.0, "attempts": 3, "backoff": 2.0}
    arguments.update(kwargs)
    with pytest.raises(error):
        attempt_timeouts(**arguments)


# -- the table -------------------------------------------------------------------------------


def test_route_goes_to_the_oldest_call_that_accepts() -> None:
    table: RequestTable[str] = RequestTable()
    wants_b = table.add(None, lambda p: p.startswith("b"))
    first_any = table.add(None, None)
    second_any = table.add(None, None)
    assert table.route("a1", None) is first_any
    assert table.route("b1", None) is wants_b
    assert table.route("a2", None) is second_any
    assert table.route("a3", None) is None  # everyone is answered
    assert [first_any.result(), wants_b.result(), second_any.result()] == ["a1", "b1", "a2"]
    table.discard(first_any)
    table.discard(first_any)  # twice is fine
    assert len(table) == 2


def test_route_respects_the_sender() -> None:
    table: RequestTable[str] = RequestTable()
    from_a = table.add("a", None)
    from_b = table.add("b", None)
    assert table.candidates("c") == []
    assert table.route("x", "c") is None
    assert table.route("y", "b") is from_b
    assert table.candidates("a") == [from_a]
    assert table.candidates("b") == []  # answered
    assert table.route("z", "a") is from_a


def test_a_raising_match_fails_only_its_own_call() -> None:
    table: RequestTable[str] = RequestTable()

    def broken(packet: str) -> bool:
        raise KeyError(packet)

    failing = table.add(None, broken)
    healthy = table.add(None, None)
    assert table.route("p", None) is healthy
    assert healthy.result() == "p"
    with pytest.raises(KeyError):
        failing.result()


def test_settle_ignores_calls_that_left_or_are_answered() -> None:
    table: RequestTable[str] = RequestTable()
    gone = table.add(None, None)
    table.discard(gone)
    assert not table.settle(gone, True, "late")
    assert not gone.done
    answered = table.add(None, None)
    assert table.settle(answered, True, "first")
    assert not table.settle(answered, True, "second")
    assert answered.result() == "first"
    assert not table.settle(table.add(None, None), False, "rejected")


def test_pending_request_starts_unanswered() -> None:
    entry: PendingRequest[bytes] = PendingRequest(None, None)
    assert not entry.done
    assert entry.result() is None


def test_peer_keys_ignore_spelling_and_scope() -> None:
    inet6 = socket.AF_INET6
    assert peer_key(inet6, ("::1", 5, 0, 0)) == peer_key(inet6, ("0:0::1", 5))
    assert peer_key(inet6, ("::ffff:127.0.0.1", 5, 0, 0)) == peer_key(
        socket.AF_INET, ("127.0.0.1", 5)
    )
    assert peer_key(inet6, ("fe80::1%lo", 5, 0, 1)) == peer_key(inet6, ("fe80::1", 5, 0, 0))
    assert peer_key(socket.AF_INET, ("127.0.0.1", 5)) != peer_key(socket.AF_INET, ("127.0.0.1", 6))
    assert peer_key(socket.AF_UNIX, "/tmp/x") == "/tmp/x"


def test_destination_keys() -> None:
    assert destination_key(socket.AF_INET, ("127.0.0.1", 9)) == (
        ("127.0.0.1", 9),
        peer_key(socket.AF_INET, ("127.0.0.1", 9)),
    )
    assert destination_key(socket.AF_INET, ("localhost", 9)) is None  # needs a lookup
    assert destination_key(socket.AF_UNIX, "\0name") == ("\0name", "\0name")
    with pytest.raises(TypeError):
        destination_key(socket.AF_INET, "127.0.0.1:9")
    with pytest.raises(TypeError):
        destination_key(socket.AF_INET, ("127.0.0.1", "9"))
    with pytest.raises(TypeError):
        destination_key(socket.AF_UNIX, ("127.0.0.1", 9))


# -- servers ---------------------------------------------------------------------------------


def reply_to(request: bytes) -> bytes:
    return b"R" + request


def is_reply_to(request: bytes) -> Callable[[bytes], bool]:
    expected = reply_to(request)
    return lambda reply: reply == expected


@dataclass
class Server:
    """A raw-socket server run as a task; it records every datagram it is sent."""

    peer: RawPeer
    #: Probability of ignoring a request, decided by a seeded generator.
    loss: float = 0.0
    seed: int = 0
    #: How many times each request is answered.
    copies: int = 1
    #: Requests whose answer is delayed, by that many seconds.
    delays: dict[bytes, float] = field(default_factory=dict[bytes, float])
    #: Answer nothing until this many requests have come (or `batch_wait` passed), then answer
    #: them all in a random order.
    batch: int = 0
    batch_wait: float = 0.2
    answer: bool = True
    received: list[bytes] = field(default_factory=list[bytes])
    dropped: int = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        rng = random.Random(self.seed)
        pending: list[tuple[bytes, Any]] = []
        async with anyio.create_task_group() as tg:
            task_status.started()
            # Bounded: the test's timeout ends it at the latest (every test cancels it earlier).
            with anyio.fail_after(60):
                while True:
                    if self.batch:
                        with anyio.move_on_after(self.batch_wait if pending else None) as idle:
                            data, address = await self.peer.recv()
                            self.received.append(data)
                            pending.append((data, address))
                        if len(pending) >= self.batch or idle.cancelled_caught:
                            rng.shuffle(pending)
                            for data, address in pending:
                                await self.peer.send(reply_to(data), address)
                            pending.clear()
                        continue
                    data, address = await self.peer.recv()
                    self.received.append(data)
                    if not self.answer:
                        continue
                    if self.loss and rng.random() < self.loss:
                        self.dropped += 1
                        continue
                    delay = self.delays.get(data, 0.0)
                    if delay:
                        tg.start_soon(self._answer_later, data, address, delay)
                    else:
                        for _ in range(self.copies):
                            await self.peer.send(reply_to(data), address)

    async def _answer_later(self, data: bytes, address: Any, delay: float) -> None:
        await anyio.sleep(delay)
        await self.peer.send(reply_to(data), address)


async def start(tg: anyio.abc.TaskGroup, server: Server) -> None:
    await tg.start(server.run)


# -- round trips -----------------------------------------------------------------------------


async def test_client_request_round_trip(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    server = Server(peer)
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(5):
            assert await client.request(b"1") == b"R1"
            assert await client.request(b"2", match=is_reply_to(b"2")) == b"R2"
        tg.cancel_scope.cancel()
    assert server.received == [b"1", b"2"]
    stats = client.statistics()
    assert (stats.datagrams_sent, stats.datagrams_received, stats.unmatched_replies) == (2, 2, 0)


async def test_request_with_a_huge_number_of_attempts(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer))
        with anyio.fail_after(5):
            assert await client.request(b"1", attempts=1100, backoff=2) == b"R1"
            assert await client.request(b"2", attempts=3_000_000) == b"R2"
        tg.cancel_scope.cancel()


async def test_endpoint_request_considers_only_its_address(harness: Harness) -> None:
    peer = harness.peer()
    other = harness.peer()
    endpoint = await harness.endpoint()
    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer, delays={b"q": 0.1}))
        with anyio.fail_after(5):

            async def noise() -> None:
                await wait_until(lambda: endpoint.statistics().datagrams_sent >= 1)
                await other.send(reply_to(b"q"), endpoint.local_address)

            tg.start_soon(noise)
            assert await endpoint.request(b"q", peer.address, timeout=1) == b"Rq"
        tg.cancel_scope.cancel()
    stats = endpoint.statistics()
    assert stats.datagrams_received == 2
    assert stats.unmatched_replies == 1  # the same bytes from another sender


async def test_endpoint_request_resolves_names_once(udp_harness: Harness) -> None:
    # udp4 only: "localhost" is the one name the tests may look up, and it is 127.0.0.1.
    peer = udp_harness.peer()
    endpoint = await udp_harness.endpoint()
    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer))
        with anyio.fail_after(5):
            reply = await endpoint.request(b"n", ("localhost", peer.address[1]))
        assert reply == b"Rn"
        with pytest.raises(socket.gaierror):
            await endpoint.request(b"n", ("bad..host", peer.address[1]))
        tg.cancel_scope.cancel()


# -- retries and timeouts --------------------------------------------------------------------


async def test_request_resends_until_answered(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    server = Server(peer, loss=1.0)  # loses everything for now
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(5):

            async def recover() -> None:
                await wait_until(lambda: len(server.received) >= 2)
                server.loss = 0.0

            tg.start_soon(recover)
            assert await client.request(b"x", timeout=0.05, attempts=5) == b"Rx"
        tg.cancel_scope.cancel()
    assert 3 <= len(server.received) <= 5
    assert client.statistics().datagrams_sent == len(server.received)


async def test_request_gives_up_after_the_last_attempt(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    server = Server(peer, answer=False)
    elapsed = -1.0
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        start_time = time.monotonic()
        with anyio.fail_after(5), pytest.raises(TimeoutError):
            await client.request(b"t", timeout=0.05, attempts=3, backoff=2.0)
        elapsed = time.monotonic() - start_time
        await wait_until(lambda: len(server.received) == 3)
        tg.cancel_scope.cancel()
    # 0.05 + 0.1 + 0.2 before jitter, at most 1.25 times that after.
    assert 0.35 <= elapsed < 0.4375 + 0.3
    assert server.received == [b"t"] * 3


async def test_late_answer_is_dropped_not_taken_by_the_next_call(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    async with anyio.create_task_group() as tg:
        # Every copy of "slow" is answered 0.15 s late: the first answer comes during the
        # second attempt, the second one after the call returned.
        await start(tg, Server(peer, delays={b"slow": 0.15}))
        with anyio.fail_after(5):
            assert await client.request(b"slow", timeout=0.1, attempts=3) == b"Rslow"
            await anyio.sleep(0.3)  # the late answer is waiting now
            # No match given: without the drop it would take b"Rslow" for its reply.
            assert await client.request(b"fast", timeout=1) == b"Rfast"
        tg.cancel_scope.cancel()
    assert client.statistics().unmatched_replies == 1


async def test_duplicates_are_counted(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    calls = 100
    server = Server(peer, copies=2)
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(20):
            for i in range(calls):
                packet = str(i).encode()
                assert await client.request(packet, match=is_reply_to(packet)) == reply_to(packet)
            # The last duplicate is still waiting; the next call drops and counts it.
            assert await client.request(b"last") == b"Rlast"
        tg.cancel_scope.cancel()
    assert len(server.received) == calls + 1
    stats = client.statistics()
    assert stats.unmatched_replies == calls
    assert stats.datagrams_received == 2 * calls + 1


async def test_lossy_server_with_retries(
    udp_harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer, recv_buffer_size=1 << 20)
    calls, workers = 500, 25
    answered: list[int] = []
    timed_out: list[int] = []

    async def worker(first: int) -> None:
        for i in range(first, calls, workers):
            packet = f"{i}".encode()
            try:
                reply = await client.request(
                    packet, timeout=0.05, attempts=5, match=is_reply_to(packet)
                )
            except TimeoutError:
                timed_out.append(i)
            else:
                assert reply == reply_to(packet)
                answered.append(i)

    server = Server(peer, loss=0.3, seed=20240501)

    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(50):
            async with anyio.create_task_group() as workers_group:
                for first in range(workers):
                    workers_group.start_soon(worker, first)
        tg.cancel_scope.cancel()
    rate = len(answered) / calls
    with capsys.disabled():
        print(
            f"\n[{udp_harness.impl}] lossy server: {rate:.1%} of {calls} requests answered, "
            f"{server.dropped}/{len(server.received)} datagrams dropped by the server, "
            f"{client.statistics().unmatched_replies} unmatched"
        )
    assert sorted(answered + timed_out) == list(range(calls))
    assert rate >= 0.99
    assert 0.2 < server.dropped / len(server.received) < 0.4


async def test_concurrent_requests_each_get_their_own_reply(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer, recv_buffer_size=1 << 20)
    count = 50 if not harness.is_sync else 30  # the blocking calls each hold a worker thread
    replies: dict[int, bytes] = {}

    async def ask(i: int) -> None:
        packet = f"id={i}".encode()
        replies[i] = await client.request(packet, timeout=2, match=is_reply_to(packet))

    server = Server(peer, batch=count, batch_wait=0.3, seed=5)

    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as askers:
                for i in range(count):
                    askers.start_soon(ask, i)
        tg.cancel_scope.cancel()
    assert replies == {i: reply_to(f"id={i}".encode()) for i in range(count)}
    assert len(server.received) == count  # all answered by the first attempt
    assert client.statistics().unmatched_replies == 0


async def test_concurrent_endpoint_requests_to_several_peers(udp_harness: Harness) -> None:
    peers = [udp_harness.peer() for _ in range(3)]
    endpoint = await udp_harness.endpoint()
    replies: list[tuple[int, bytes]] = []

    async def ask(i: int) -> None:
        # The same packet to every peer: only the sender tells the replies apart.
        peer = peers[i % 3]
        replies.append((i % 3, await endpoint.request(b"same", peer.address, timeout=2)))

    async with anyio.create_task_group() as tg:
        for peer in peers:
            await start(tg, Server(peer, batch=2, batch_wait=0.2, seed=1))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as askers:
                for i in range(6):
                    askers.start_soon(ask, i)
        tg.cancel_scope.cancel()
    assert sorted(replies) == [(0, b"Rsame")] * 2 + [(1, b"Rsame")] * 2 + [(2, b"Rsame")] * 2


# -- errors ----------------------------------------------------------------------------------


async def test_bad_arguments_are_refused_before_sending(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(
        peer, protocol=DatagramProtocol(BytesSerializer(), max_datagram_size=10)
    )
    with pytest.raises(ValueError, match="timeout"):
        await client.request(b"x", timeout=0)
    with pytest.raises(ValueError, match="attempts"):
        await client.request(b"x", attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        await client.request(b"x", backoff=0.5)
    with pytest.raises(TypeError, match="match"):
        await client.request(b"x", match=42)  # type: ignore[arg-type]
    with pytest.raises(DatagramTooLargeError):
        await client.request(b"x" * 11)
    assert client.statistics().datagrams_sent == 0


async def test_undecodable_replies_are_counted_as_parse_errors(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer, protocol=DatagramProtocol(JSONSerializer()))

    async def answer() -> None:
        data, address = await peer.recv()
        await peer.send(b"{not json", address)
        await peer.send(b'{"re": ' + data + b"}", address)

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer)
        with anyio.fail_after(5):
            assert await client.request(1) == {"re": 1}
    stats = client.statistics()
    assert (stats.parse_errors, stats.unmatched_replies) == (1, 0)


async def test_a_raising_match_fails_its_call(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)

    def broken(reply: bytes) -> bool:
        raise LookupError(reply)

    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer))
        with anyio.fail_after(5), pytest.raises(LookupError):
            await client.request(b"m", match=broken)
        tg.cancel_scope.cancel()


def _free_port(kind: str) -> int:
    family, host = (socket.AF_INET, "127.0.0.1") if kind == "udp4" else (socket.AF_INET6, "::1")
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


async def test_refused_request_raises_and_client_recovers(ip_harness: Harness) -> None:
    host = "127.0.0.1" if ip_harness.kind == "udp4" else "::1"
    client = await ip_harness.connect_udp(host, _free_port(ip_harness.kind))
    with anyio.fail_after(5), pytest.raises(ConnectionRefusedError):
        await client.request(b"anyone?", timeout=1)
    assert client.statistics().icmp_errors == 1


# -- sharing the socket with other receivers -------------------------------------------------


async def test_receiving_while_a_request_is_pending_is_refused(harness: Harness) -> None:
    peer = harness.peer()
    client = await harness.client(peer)
    server = Server(peer, answer=False)
    async with anyio.create_task_group() as tg:
        await start(tg, server)

        finished = anyio.Event()

        async def pending_request() -> None:
            with pytest.raises(TimeoutError):
                await client.request(b"p", timeout=0.2, attempts=1)
            finished.set()

        tg.start_soon(pending_request)
        with anyio.fail_after(5):
            await wait_until(lambda: len(server.received) == 1)
            with pytest.raises(anyio.BusyResourceError):
                await client.recv_packet()
            with pytest.raises(anyio.BusyResourceError):
                async for _ in client.iter_received_packets(timeout=0):
                    pass
        server.answer = True
        with anyio.fail_after(5):
            await finished.wait()  # the request timed out: receiving works again
            await client.send_packet(b"echo me")
            assert await client.recv_packet() == b"Recho me"
        tg.cancel_scope.cancel()


async def test_receiver_already_waiting_does_not_steal_the_reply(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    outcome: list[str] = []

    async def receiver() -> None:
        try:
            await client.recv_packet()
        except anyio.BusyResourceError:
            outcome.append("busy")
        else:
            outcome.append("stole a datagram")

    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer, delays={b"r": 0.1}))
        tg.start_soon(receiver)
        await anyio.sleep(0.1)  # the receiver is waiting (in a thread, for the sync client)
        with anyio.fail_after(5):
            # The reply goes to the request even if the waiting receiver reads it first.
            assert await client.request(b"r", timeout=0.5, attempts=1) == b"Rr"
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert "stole a datagram" not in outcome
    if not udp_harness.is_sync:
        assert outcome == ["busy"]  # one event loop: the waiting receiver always wakes first


async def test_close_wakes_pending_requests(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client = await udp_harness.client(peer)
    woke: list[float] = []

    async def pending(i: int) -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await client.request(str(i).encode(), timeout=10, attempts=1)
        woke.append(time.monotonic())

    server = Server(peer, answer=False)
    closed_at = 0.0
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        for i in range(4):  # one reads for all, three wait for it
            tg.start_soon(pending, i)
        with anyio.fail_after(5):
            await wait_until(lambda: len(server.received) == 4)
        closed_at = time.monotonic()
        await client.aclose()
        with anyio.fail_after(5):
            await wait_until(lambda: len(woke) == 4)
        tg.cancel_scope.cancel()
    assert max(woke) - closed_at < 0.5


async def test_cancelled_request_leaves_nothing_behind(async_harness: Harness) -> None:
    peer = async_harness.peer()
    client = await async_harness.client(peer)
    async with anyio.create_task_group() as tg:
        await start(tg, Server(peer, delays={b"c": 0.2}))
        with anyio.move_on_after(0.05) as scope:
            await client.request(b"c", timeout=1)
        assert scope.cancelled_caught
        with anyio.fail_after(5):
            await anyio.sleep(0.3)  # the cancelled call's reply arrives meanwhile
            assert await client.recv_packet() == b"Rc"  # nothing pending: recv is free again
            assert await client.request(b"d", timeout=1) == b"Rd"
        tg.cancel_scope.cancel()


async def test_requests_and_plain_sends_share_a_client(udp_harness: Harness) -> None:
    peer = udp_harness.peer()
    client: Client = await udp_harness.client(peer)
    server = Server(peer, answer=False)
    async with anyio.create_task_group() as tg:
        await start(tg, server)
        with anyio.fail_after(5):
            await client.send_packet(b"plain")
            await wait_until(lambda: server.received == [b"plain"])
            server.answer = True
            assert await client.request(b"q") == b"Rq"
        tg.cancel_scope.cancel()
