"""Per-source limits: the rate limit's token buckets and the anti-amplification cap.

The tables are tested with plain calls and an injected clock; the server-level tests (every
backend) use raw stdlib sockets bound to 127.x.y.z addresses (Linux routes all of 127/8 to the
loopback interface), so each one is a distinct source.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from anydgram import DatagramRequest, DatagramServer, RateLimit
from anydgram._ratelimit import AmplificationLimiter, RateLimiter, source_key
from endpoint_harness import wait_until
from server_harness import serving

BytesRequest = DatagramRequest[bytes, bytes]

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="127/8 aliases and /proc/net/udp are Linux's"
)


def udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """What ``sock`` holds now, without waiting."""
    got: list[bytes] = []
    for _ in range(100_000):
        try:
            got.append(sock.recv(70_000))
        except BlockingIOError:
            break
    return got


# -- RateLimit: the configuration ---------------------------------------------------------------


def test_rate_limit_config() -> None:
    limit = RateLimit(50, 10, max_sources=3, log_only=True, allow=["10.0.0.0/8", "::1"])
    assert limit.rate == 50.0
    assert limit.burst == 10.0
    assert limit.max_sources == 3
    assert limit.log_only is True
    assert limit.allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert RateLimit.__module__ == "anydgram"
    assert limit == RateLimit(50.0, 10, max_sources=3, log_only=True, allow=limit.allow)
    assert hash(limit) == hash(RateLimit(50, 10, max_sources=3, log_only=True, allow=limit.allow))
    assert repr(limit) == (
        "RateLimit(50.0, 10.0, max_sources=3, log_only=True, allow=('10.0.0.0/8', '::1/128'))"
    )
    with pytest.raises(AttributeError):
        limit.rate = 1  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    assert RateLimit(1, 1, allow=[ipaddress.ip_address("127.0.0.1")]).allow == (
        ipaddress.ip_network("127.0.0.1/32"),
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((0, 1), {}, ValueError),
        ((-1, 1), {}, ValueError),
        ((float("nan"), 1), {}, ValueError),
        ((float("inf"), 1), {}, ValueError),
        ((1, 0.5), {}, ValueError),
        ((1, 1), {"max_sources": 0}, ValueError),
        ((1, 1), {"allow": ["not a network"]}, ValueError),
        ((1, 1), {"allow": ["10.0.0.1/8"]}, ValueError),  # host bits set
        (("1", 1), {}, TypeError),
        ((True, 1), {}, TypeError),
        ((1, None), {}, TypeError),
        ((1, 1), {"max_sources": 1.5}, TypeError),
        ((1, 1), {"allow": "10.0.0.0/8"}, TypeError),
        ((1, 1), {"allow": [42]}, TypeError),
        ((1, 1), {"allow": 42}, TypeError),
    ],
)
def test_rate_limit_config_refuses(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        RateLimit(*args, **kwargs)


def test_server_argument_checks() -> None:
    async def handler(request: BytesRequest) -> None:
        pass

    with pytest.raises(TypeError):
        DatagramServer("127.0.0.1", 0, handler, rate_limit=50)  # type: ignore[call-overload]
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="amplification_factor"):
            DatagramServer("127.0.0.1", 0, handler, amplification_factor=bad)
    with pytest.raises(TypeError):
        DatagramServer("127.0.0.1", 0, handler, amplification_factor="3")  # type: ignore[call-overload]
    server = DatagramServer("127.0.0.1", 0, handler, rate_limit=RateLimit(1, 1))
    assert server.statistics().rate_limited == 0


# -- sources -------------------------------------------------------------------------------------


def test_source_key() -> None:
    # Ports are ignored.
    assert source_key(("192.0.2.1", 1)) == source_key(("192.0.2.1", 2)) == "192.0.2.1"
    assert source_key(("192.0.2.1", 1)) != source_key(("192.0.2.2", 1))
    # IPv6 is grouped by /64.
    a = source_key(("2001:db8:1:2::1", 53, 0, 0))
    assert a == source_key(("2001:db8:1:2:ffff:ffff:ffff:ffff", 9, 0, 0))
    assert a != source_key(("2001:db8:1:3::1", 53, 0, 0))
    assert source_key(("fe80::1%lo", 1, 0, 1)) == source_key(("fe80::2", 1, 0, 1))
    # IPv4-mapped IPv6 is IPv4.
    assert source_key(("::ffff:192.0.2.1", 1, 0, 0)) == "192.0.2.1"
    # Anything else is its own key.
    assert source_key("/tmp/sock") == "/tmp/sock"


# -- the token buckets, with an injected clock ---------------------------------------------------


def test_bucket_burst_then_rate() -> None:
    # Times are binary fractions, so the float arithmetic is exact.
    limiter = RateLimiter(RateLimit(4, 5))
    key = source_key(("192.0.2.1", 1))
    assert [limiter.admit(key, 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.limited == 2
    # 4 per second: one token every 0.25 s.
    assert limiter.admit(key, 100.125) is False
    assert limiter.admit(key, 100.25) is True  # 0.125 s carried over + 0.125 s
    assert limiter.admit(key, 100.25) is False
    # A long silence refills the bucket to the burst, no further.
    assert [limiter.admit(key, 1000.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.limited == 5


def test_bucket_fractional_refill() -> None:
    limiter = RateLimiter(RateLimit(4, 1))
    key = "192.0.2.1"
    assert limiter.admit(key, 0.0)
    admitted = sum(limiter.admit(key, i / 64) for i in range(1, 129))  # 2 s, 64 Hz
    assert admitted == 8  # 4 per second, exactly


def test_sources_are_independent_and_grouped() -> None:
    limiter = RateLimiter(RateLimit(1, 1))
    assert limiter.admit(source_key(("192.0.2.1", 1)), 0.0)
    assert not limiter.admit(source_key(("192.0.2.1", 2)), 0.0)  # same IP, other port
    assert limiter.admit(source_key(("192.0.2.2", 1)), 0.0)
    assert limiter.admit(source_key(("2001:db8::1", 1, 0, 0)), 0.0)
    assert not limiter.admit(source_key(("2001:db8::2", 1, 0, 0)), 0.0)  # same /64
    assert limiter.admit(source_key(("2001:db8:0:1::1", 1, 0, 0)), 0.0)
    assert not limiter.admit(source_key(("::ffff:192.0.2.2", 1, 0, 0)), 0.0)  # mapped = IPv4


def test_table_is_bounded_least_recently_seen_evicted() -> None:
    limiter = RateLimiter(RateLimit(1, 1, max_sources=3))
    for i in range(1000):
        limiter.admit(f"10.0.{i // 256}.{i % 256}", 0.0)
        assert len(limiter) <= 3
    assert len(limiter) == 3
    limiter = RateLimiter(RateLimit(1, 1, max_sources=2))
    assert limiter.admit("a", 0.0)
    assert limiter.admit("b", 0.0)
    assert not limiter.admit("a", 0.0)  # "a" seen again: "b" is now the oldest
    assert limiter.admit("c", 0.0)  # evicts "b"
    assert not limiter.admit("a", 0.0)  # still remembered, bucket still empty
    assert limiter.admit("b", 0.0)  # forgotten: a full bucket again
    assert len(limiter) == 2


def test_allow_list() -> None:
    limiter = RateLimiter(RateLimit(1, 1, allow=["10.0.0.0/8", "2001:db8::1"]))
    inside = source_key(("10.1.2.3", 1))
    assert all(limiter.admit(inside, 0.0) for _ in range(100))
    v6 = source_key(("2001:db8::5", 1, 0, 0))  # same /64 as the allowed address
    assert all(limiter.admit(v6, 0.0) for _ in range(100))
    outside = source_key(("11.0.0.1", 1))
    assert limiter.admit(outside, 0.0)
    assert not limiter.admit(outside, 0.0)
    assert limiter.limited == 1


@pytest.mark.parametrize(
    "entry",
    [
        "::ffff:127.0.0.0/104",
        "::ffff:127.0.0.1",
        ipaddress.IPv6Network("::ffff:7f00:0/104"),
        ipaddress.IPv6Address("::ffff:127.0.0.1"),
    ],
)
def test_allow_entries_in_ipv4_mapped_form_match_mapped_sources(entry: Any) -> None:
    config = RateLimit(1, 1, allow=[entry])
    assert all(isinstance(network, ipaddress.IPv4Network) for network in config.allow)
    limiter = RateLimiter(config)
    # A dual-stack socket sees an IPv4 client as ::ffff:127.0.0.1: keyed as IPv4.
    mapped = source_key(("::ffff:127.0.0.1", 1, 0, 0))
    assert all(limiter.admit(mapped, 0.0) for _ in range(100))
    assert all(limiter.admit(source_key(("127.0.0.1", 1)), 0.0) for _ in range(100))
    outside = source_key(("::ffff:10.0.0.1", 1, 0, 0))
    assert limiter.admit(outside, 0.0)
    assert not limiter.admit(outside, 0.0)
    assert limiter.limited == 1


def test_an_ipv6_network_holding_every_mapped_address_allows_ipv4_sources() -> None:
    limiter = RateLimiter(RateLimit(1, 1, allow=["::/0"]))
    for source in [("192.0.2.1", 1), ("::ffff:192.0.2.1", 1, 0, 0), ("2001:db8::1", 1, 0, 0)]:
        assert all(limiter.admit(source_key(source), 0.0) for _ in range(10))
    assert limiter.limited == 0
    # A network beside the mapped range leaves IPv4 sources limited.
    narrow = RateLimiter(RateLimit(1, 1, allow=["2001:db8::/32"]))
    assert narrow.admit(source_key(("192.0.2.1", 1)), 0.0)
    assert not narrow.admit(source_key(("192.0.2.1", 1)), 0.0)


def test_log_only_counts_the_same() -> None:
    enforcing = RateLimiter(RateLimit(5, 2))
    logging_only = RateLimiter(RateLimit(5, 2, log_only=True))
    assert logging_only.log_only
    for i in range(100):
        now = i / 50
        assert enforcing.admit("k", now) == logging_only.admit("k", now)
    assert enforcing.limited == logging_only.limited > 0


def test_amplification_limiter() -> None:
    cap = AmplificationLimiter(3, max_sources=2)
    assert not cap.may_send("a", 1)  # nothing received yet
    cap.received("a", 100)
    assert cap.may_send("a", 300)
    assert not cap.may_send("a", 1)
    cap.received("a", 1)
    assert cap.may_send("a", 3)
    assert cap.dropped == 2
    cap.validate("a")
    assert cap.may_send("a", 1_000_000)
    cap.received("b", 10)
    cap.received("c", 10)  # evicts "a", the least recently seen
    assert len(cap) == 2
    assert not cap.may_send("a", 1)  # forgotten: from zero, and no longer validated


# -- the server ----------------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("log_only", [False, True], ids=["enforcing", "log_only"])
async def test_rate_limit_per_source(log_only: bool) -> None:
    handled: Counter[str] = Counter()  # handler calls that have replied, by source

    async def handler(request: BytesRequest) -> None:
        await request.respond(b"ok")
        assert isinstance(request.address, tuple)
        handled[request.address[0]] += 1

    def all_handled() -> bool:
        stats = server.statistics()
        done = handled.total()
        # Replies on loopback are queued at the client by the time sendto() returns.
        return (
            stats.datagrams_received == 525
            and done + (0 if log_only else stats.rate_limited) == 525
            and stats.datagrams_sent == done
        )

    server = DatagramServer(
        "127.0.0.1", 0, handler, rate_limit=RateLimit(50, 10, log_only=log_only)
    )
    flooder, polite = udp_socket("127.0.0.3"), udp_socket("127.0.0.2")
    try:
        async with serving(server) as addresses:
            target = addresses[0]
            started = time.monotonic()
            # 500 datagrams over one second, in steps of 10 every 20 ms.
            for step in range(50):
                for _ in range(10):
                    flooder.sendto(b"x", target)
                if step % 2 == 0:
                    polite.sendto(b"y", target)
                await anyio.sleep(max(0.0, started + (step + 1) * 0.02 - time.monotonic()))
            await wait_until(all_handled)
            elapsed = time.monotonic() - started
            stats = server.statistics()
            assert stats.kernel_drops == 0
            assert handled["127.0.0.2"] == 25
            assert len(drain(polite)) == 25
            if not log_only:
                assert handled["127.0.0.3"] <= 50 * elapsed + 10 + 1
                assert handled["127.0.0.3"] + stats.rate_limited == 500
                assert len(drain(flooder)) == handled["127.0.0.3"]
            else:
                assert handled["127.0.0.3"] == 500
                assert len(drain(flooder)) == 500
                # About as many as enforcing would drop (500 - 50/s x ~1 s - 10): at
                # least that many, and never the burst.
                assert 500 - (50 * elapsed + 11) <= stats.rate_limited <= 490
    finally:
        flooder.close()
        polite.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@linux_only
async def test_many_sources_keep_the_tables_bounded() -> None:
    """50,000 datagrams from 20,000 source addresses (127.1.x.y); the tables stay bounded.

    Each source is a socket of its own, bound, used and closed at once. The sender waits for
    the server every few hundred datagrams, so loopback loses none.
    """
    handled = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal handled
        handled += 1
        if request.packet == b"ping":
            await request.respond(b"pong")

    max_sources = 1000
    server = DatagramServer(
        "127.0.0.1",
        0,
        handler,
        rate_limit=RateLimit(1, 2, max_sources=max_sources),
        amplification_factor=3,
    )
    limiter, cap = server._rate_limiter, server._amplification  # pyright: ignore[reportPrivateUsage]
    assert limiter is not None
    assert cap is not None
    sent = 0

    def caught_up() -> bool:
        return server.statistics().datagrams_received >= sent

    async with serving(server) as addresses:
        target = addresses[0]
        rss_before = _rss()
        for n in range(20_000):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((f"127.1.{n >> 8}.{n & 0xFF}", 0))
                for _ in range(3 if n < 10_000 else 2):
                    sock.sendto(b"x" * 16, target)
                    sent += 1
            finally:
                sock.close()
            if n % 100 == 99:
                await wait_until(caught_up)
                assert len(limiter) <= max_sources
                assert len(cap) <= max_sources
        assert sent == 50_000
        await wait_until(lambda: server.statistics().datagrams_received == sent)
        grown = _rss() - rss_before
        stats = server.statistics()
        assert stats.kernel_drops == 0
        await wait_until(lambda: handled + server.statistics().rate_limited == sent)
        assert stats.rate_limited > 0  # the third datagram of recently seen sources
        assert len(limiter) == len(cap) == max_sources
        assert grown < 20 << 20
        # A new source is still served.
        newcomer = udp_socket("127.0.0.9")
        try:
            newcomer.sendto(b"ping", target)
            with anyio.fail_after(5):
                await anyio.wait_readable(newcomer)
            assert drain(newcomer) == [b"pong"]
        finally:
            newcomer.close()


@linux_only
async def test_amplification_cap() -> None:
    done = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal done
        if request.packet.startswith(b"V"):
            request.validate_peer()
        await request.respond(b"r" * 1000)
        done += 1

    server = DatagramServer("127.0.0.1", 0, handler, amplification_factor=3)
    client, other = udp_socket("127.0.0.4"), udp_socket("127.0.0.5")
    try:
        async with serving(server) as addresses:
            target = addresses[0]
            for _ in range(10):
                client.sendto(b"q" * 100, target)
            await wait_until(lambda: done == 10)
            replies = drain(client)
            assert sum(map(len, replies)) <= 3000
            assert len(replies) == 3  # 3 x 1000 <= 3 x (10 x 100)
            assert server.statistics().amplification_dropped == 7
            # Server-initiated sends are capped too: "other" has sent nothing.
            await server.send_packet(b"s" * 10, other.getsockname())
            assert server.statistics().amplification_dropped == 8
            # Once validated, replies flow freely.
            client.sendto(b"V" * 100, target)
            for _ in range(10):
                client.sendto(b"q" * 100, target)
            await wait_until(lambda: done == 21)
            assert len(drain(client)) == 11
            await server.send_packet(b"s" * 5000, client.getsockname())
            with anyio.fail_after(5):
                await anyio.wait_readable(client)
            assert drain(client) == [b"s" * 5000]
            assert server.statistics().amplification_dropped == 8
            assert drain(other) == []
    finally:
        client.close()
        other.close()


def _proc_net_udp_drops(inode: int) -> int:
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[9]) == inode:
                return int(fields[-1])
    raise LookupError(f"no socket with inode {inode} in /proc/net/udp")


@linux_only
async def test_kernel_drops_match_the_kernel() -> None:
    handled = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal handled
        handled += 1

    server = DatagramServer("127.0.0.1", 0, handler, recv_buffer_size=4096)
    flooder = udp_socket("127.0.0.6")
    try:
        async with serving(server) as addresses:
            inode = os.fstat(server.sockets[0].fileno()).st_ino
            # Sent without yielding: the server cannot read meanwhile, the buffer overflows.
            for _ in range(1000):
                flooder.sendto(b"f" * 100, addresses[0])
            await wait_until(
                lambda: (
                    handled + server.statistics().kernel_drops == 1000
                    and server.statistics().handlers_active == 0
                )
            )
            stats = server.statistics()
            assert stats.kernel_drops > 0
            assert stats.kernel_drops == _proc_net_udp_drops(inode)
            assert handled + stats.kernel_drops == 1000
            assert stats.datagrams_received == handled
    finally:
        flooder.close()
