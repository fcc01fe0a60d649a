"""The blocking client and endpoint in threaded programs.

The behaviour both share with the async endpoints runs in ``test_endpoint.py`` and
``test_request.py`` (the ``sync`` implementation); this file covers what only a blocking API
has: threads sharing one client, ``close()`` from another thread, ``timeout`` keywords, and the
constructors. Servers here are plain threads over a blocking stdlib socket, each loop bounded in
time.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import Any, assert_type, cast

import anyio
import pytest

import anydgram
from anydgram import Address, DatagramProtocol, SyncDatagramClient, SyncDatagramEndpoint
from anydgram.serializers import JSONSerializer

#: No test thread may outlive this; every loop checks it.
THREAD_BUDGET = 30.0


class EchoServer:
    """A thread that answers each datagram on a loopback socket with the same bytes.

    ``copies`` answers each request that many times; ``batch`` collects that many requests (or
    what came within 0.1 s) and answers them in a random order.
    """

    def __init__(
        self,
        family: int = socket.AF_INET,
        *,
        copies: int = 1,
        batch: int = 0,
        answer: Callable[[bytes], bytes] = lambda data: data,
    ) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        self.copies = copies
        self.batch = batch
        self.answer = answer
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        rng = random.Random(3)
        pending: list[tuple[bytes, Any]] = []
        deadline = time.monotonic() + THREAD_BUDGET
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, address = self.sock.recvfrom(70000)
            except TimeoutError:
                idle = True
            else:
                idle = False
                self.received.append(data)
                if not self.batch:
                    for _ in range(self.copies):
                        self.sock.sendto(self.answer(data), address)
                    continue
                pending.append((data, address))
            if pending and (len(pending) >= self.batch or idle):
                rng.shuffle(pending)
                for data, address in pending:
                    self.sock.sendto(self.answer(data), address)
                pending.clear()


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run ``targets`` in threads; re-raise the first failure once all have ended."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_BUDGET)
        assert not thread.is_alive(), "a test thread hung"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def blocked_in_thread(
    call: Callable[[], object],
) -> Generator[list[tuple[BaseException, float]]]:
    """Run ``call`` in a thread; yields where it records ``(error, time it ended)``."""
    outcome: list[tuple[BaseException, float]] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append((exc, time.monotonic()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.1)  # long enough to be blocked in poll()
    try:
        yield outcome
    finally:
        thread.join(5)
        assert not thread.is_alive(), "the blocked call never returned"


# -- many threads, one client ----------------------------------------------------------------


def test_eight_threads_send_while_one_receives() -> None:
    senders, per_sender = 8, 500
    total = senders * per_sender
    # At most this many packets in flight: far less than either side's buffer holds, so
    # nothing can be dropped, and a loss would be a bug.
    window = threading.BoundedSemaphore(256)
    echoes: list[bytes] = []
    with (
        EchoServer() as server,
        SyncDatagramClient(*server.address, recv_buffer_size=1 << 21) as client,
    ):

        def send(sender: int) -> Callable[[], None]:
            def run() -> None:
                for i in range(per_sender):
                    assert window.acquire(timeout=10), "echoes stopped coming"
                    client.send_packet(f"{sender}:{i}".encode(), timeout=10)

            return run

        def receive() -> None:
            while len(echoes) < total:
                echoes.append(client.recv_packet(timeout=10))
                window.release()

        run_threads([receive, *(send(s) for s in range(senders))])
        stats = client.statistics()
    expected = Counter(f"{s}:{i}".encode() for s in range(senders) for i in range(per_sender))
    assert Counter(server.received) == expected  # every packet arrived, once
    assert Counter(echoes) == expected  # every echo was received, once
    # The counters are exact even with eight threads updating them.
    assert (stats.datagrams_sent, stats.datagrams_received) == (total, total)
    assert stats.kernel_drops == 0


def test_threads_receive_at_once() -> None:
    with EchoServer() as server, SyncDatagramClient(*server.address) as client:
        got: list[bytes] = []
        lock = threading.Lock()

        def receive() -> None:
            with contextlib.suppress(anyio.ClosedResourceError):
                while True:
                    packet = client.recv_packet()
                    with lock:
                        got.append(packet)

        receivers = [threading.Thread(target=receive, daemon=True) for _ in range(4)]
        for thread in receivers:
            thread.start()
        for i in range(200):
            client.send_packet(str(i).encode())
        deadline = time.monotonic() + 10
        while len(got) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.close()
        for thread in receivers:
            thread.join(5)
    assert sorted(got) == sorted(str(i).encode() for i in range(200))


def test_threaded_requests_each_get_their_own_reply() -> None:
    threads, per_thread = 8, 25
    with (
        EchoServer(batch=8, answer=lambda data: b"R" + data) as server,
        SyncDatagramClient(*server.address) as client,
    ):
        replies: dict[bytes, bytes] = {}

        def ask(thread: int) -> Callable[[], None]:
            def run() -> None:
                for i in range(per_thread):
                    packet = f"{thread}:{i}".encode()
                    expected = b"R" + packet
                    replies[packet] = client.request(
                        packet, timeout=0.5, attempts=5, match=expected.__eq__
                    )

            return run

        run_threads([ask(t) for t in range(threads)])
    assert len(replies) == threads * per_thread
    assert all(reply == b"R" + packet for packet, reply in replies.items())


def test_duplicate_answers_are_counted_with_threads() -> None:
    with (
        EchoServer(copies=2) as server,
        SyncDatagramEndpoint("127.0.0.1") as endpoint,
    ):
        for i in range(50):
            packet = str(i).encode()
            reply = endpoint.request(packet, server.address, match=packet.__eq__)
            assert reply == packet
        endpoint.request(b"last", server.address)  # drops the 50th duplicate, still waiting
        assert endpoint.statistics().unmatched_replies == 50


def test_a_match_may_call_back_into_the_endpoint() -> None:
    # match runs without the routing lock held, so it may even close the endpoint.
    with EchoServer() as server:
        endpoint = SyncDatagramEndpoint("127.0.0.1")

        def close_and_accept(reply: bytes) -> bool:
            endpoint.close()
            return True

        assert endpoint.request(b"bye", server.address, match=close_and_accept) == b"bye"
        assert endpoint.closed


# -- close() from another thread -------------------------------------------------------------


def test_close_wakes_a_blocked_receiver_at_once() -> None:
    with EchoServer() as server:
        client = SyncDatagramClient(*server.address)
        with blocked_in_thread(client.recv_packet) as outcome:
            closed_at = time.monotonic()
            client.close()
            closed_for = time.monotonic() - closed_at
        assert len(outcome) == 1
        error, woke_at = outcome[0]
        assert isinstance(error, anyio.ClosedResourceError)
        assert woke_at - closed_at < 0.1
        assert closed_for < 0.1


def test_close_wakes_a_blocked_endpoint_and_frees_the_port() -> None:
    endpoint = SyncDatagramEndpoint("127.0.0.1")
    address = endpoint.local_address
    assert isinstance(address, tuple)
    with blocked_in_thread(endpoint.recv_packet) as outcome:
        closed_at = time.monotonic()
        endpoint.close()
        # The port is free the moment close() returns.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(address)
    assert isinstance(outcome[0][0], anyio.ClosedResourceError)
    assert outcome[0][1] - closed_at < 0.1
    with pytest.raises(anyio.ClosedResourceError):
        endpoint.recv_packet(timeout=0)
    with pytest.raises(anyio.ClosedResourceError):
        endpoint.send_packet(b"late", address)
    with pytest.raises(anyio.ClosedResourceError):
        _ = endpoint.local_address
    endpoint.close()  # idempotent


def test_close_wakes_pending_requests_from_threads() -> None:
    endpoint = SyncDatagramEndpoint("127.0.0.1")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        errors: list[tuple[BaseException, float]] = []

        def pending(i: int) -> None:
            try:
                endpoint.request(str(i).encode(), silent.getsockname(), timeout=10, attempts=1)
            except BaseException as exc:
                errors.append((exc, time.monotonic()))

        threads = [threading.Thread(target=pending, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        closed_at = time.monotonic()
        endpoint.close()
        for thread in threads:
            thread.join(5)
        assert len(errors) == 4
        assert all(isinstance(error, anyio.ClosedResourceError) for error, _ in errors)
        assert max(at for _, at in errors) - closed_at < 0.1
    finally:
        silent.close()


@pytest.fixture
def unix_directory() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="anydgram-") as directory:
        yield directory


def _fill(send: Callable[[], None]) -> int:
    """Send until the peer's queue is full; how many datagrams went."""
    for count in range(100000):
        try:
            send()
        except TimeoutError:
            return count
    raise AssertionError("the peer's queue never filled")


def test_close_wakes_a_sender_blocked_on_a_full_unix_peer(unix_directory: str) -> None:
    path = os.path.join(unix_directory, "peer.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(path)
        client = SyncDatagramClient.from_socket(sock)
        assert _fill(lambda: client.send_packet(b"x" * 100, timeout=0)) > 0
        with blocked_in_thread(lambda: client.send_packet(b"blocked")) as outcome:
            closed_at = time.monotonic()
            client.close()
        assert isinstance(outcome[0][0], anyio.ClosedResourceError)
        assert outcome[0][1] - closed_at < 0.1


def test_unconnected_unix_send_to_a_full_peer_backs_off(unix_directory: str) -> None:
    path = os.path.join(unix_directory, "peer.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(unix_directory, "me.sock"))
        endpoint = SyncDatagramEndpoint.from_socket(sock)
        with endpoint:
            sent = _fill(lambda: endpoint.send_packet(b"x" * 100, path, timeout=0))
            # poll() says writable while the peer is full: the wait is a backoff, not a spin.
            cpu_before, start = time.process_time(), time.monotonic()
            with pytest.raises(TimeoutError):
                endpoint.send_packet(b"late", path, timeout=0.3)
            assert time.monotonic() - start >= 0.3
            assert time.process_time() - cpu_before < 0.15
            peer.recv(100)  # room for one more
            endpoint.send_packet(b"fits", path, timeout=5)
            assert endpoint.statistics().datagrams_sent == sent + 1
            with blocked_in_thread(lambda: endpoint.send_packet(b"again", path)) as outcome:
                closed_at = time.monotonic()
                endpoint.close()
            assert isinstance(outcome[0][0], anyio.ClosedResourceError)
            assert outcome[0][1] - closed_at < 0.1


# -- timeouts --------------------------------------------------------------------------------


def test_recv_timeout_raises_and_loses_nothing() -> None:
    with EchoServer() as server, SyncDatagramClient(*server.address) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.recv_packet(timeout=0.05)
        assert 0.05 <= time.monotonic() - start < 0.5
        with pytest.raises(TimeoutError):
            client.recv_packet(timeout=0)
        client.send_packet(b"after")
        assert client.recv_packet(timeout=5) == b"after"
        assert list(client.iter_received_packets(timeout=0)) == []


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan")])
def test_negative_timeouts_are_refused(timeout: float) -> None:
    with SyncDatagramEndpoint("127.0.0.1") as endpoint:
        with pytest.raises(ValueError, match="timeout"):
            endpoint.recv_packet(timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            endpoint.send_packet(b"x", endpoint.local_address, timeout=timeout)
        with pytest.raises(ValueError, match="timeout"):
            endpoint.iter_received_packets(timeout=timeout)  # refused before iterating
        with pytest.raises(TypeError, match="timeout"):
            endpoint.recv_packet(timeout="1")  # type: ignore[arg-type]
        assert endpoint.statistics().datagrams_sent == 0


def test_iteration_budget_is_for_the_whole_iteration() -> None:
    with EchoServer() as server, SyncDatagramClient(*server.address) as client:
        for i in range(3):
            client.send_packet(bytes([i]))
        start = time.monotonic()
        got = list(client.iter_received_packets(timeout=0.3))
        assert got == [bytes([i]) for i in range(3)]
        assert 0.29 <= time.monotonic() - start < 1.0


# -- construction ----------------------------------------------------------------------------


def test_constructors_check_their_arguments() -> None:
    with pytest.raises(TypeError):
        SyncDatagramClient(1, 5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty"):
        SyncDatagramClient("", 5)
    with pytest.raises(ValueError, match="port"):
        SyncDatagramClient("127.0.0.1", 70000)
    with pytest.raises(TypeError):
        SyncDatagramEndpoint("127.0.0.1", True)  # a bool is an int, but not a port
    with pytest.raises(ValueError, match="family"):
        SyncDatagramEndpoint(None, 0, family=socket.AF_UNIX)
    with pytest.raises(socket.gaierror):
        SyncDatagramClient("bad..host", 5)
    with pytest.raises(socket.gaierror):
        SyncDatagramEndpoint("bad..host", 0)


def test_all_addresses_failed_names_each_one() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        in_use = taken.getsockname()
        with pytest.raises(OSError, match="could not connect") as info:
            SyncDatagramClient("127.0.0.1", 9, local_address=in_use)
        assert "127.0.0.1:9" in str(info.value)
        cause = info.value.__cause__
        assert isinstance(cause, ExceptionGroup)
        group = cast("ExceptionGroup[Exception]", cause)
        assert [getattr(exc, "errno", None) for exc in group.exceptions] == [errno.EADDRINUSE]
        with pytest.raises(OSError, match="could not bind") as bind_info:
            SyncDatagramEndpoint("127.0.0.1", in_use[1])
        assert isinstance(bind_info.value.__cause__, ExceptionGroup)


def test_endpoint_options_and_wildcards() -> None:
    def ip(address: Address) -> tuple[str, int] | tuple[str, int, int, int]:
        assert isinstance(address, tuple)
        return address

    with SyncDatagramEndpoint() as wildcard:
        assert ip(wildcard.local_address)[0] == "0.0.0.0"
    with SyncDatagramEndpoint(family=socket.AF_INET6) as wildcard6:
        assert ip(wildcard6.local_address)[0] == "::"
    with SyncDatagramEndpoint("127.0.0.1", reuse_port=True, broadcast=True) as first:
        port = ip(first.local_address)[1]
        assert first.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        with SyncDatagramEndpoint("127.0.0.1", port, reuse_port=True) as second:
            assert second.local_address == first.local_address
    with SyncDatagramEndpoint("localhost", family=socket.AF_INET) as named:
        assert ip(named.local_address)[0] == "127.0.0.1"


def test_state_repr_and_statistics_after_close() -> None:
    endpoint = SyncDatagramEndpoint("127.0.0.1", recv_buffer_size=1 << 16)
    assert repr(endpoint) == f"<SyncDatagramEndpoint local={endpoint.local_address!r}>"
    assert endpoint.statistics().recv_buffer_size >= 1 << 16
    assert endpoint.protocol.max_datagram_size == anydgram.MAX_UDP_PAYLOAD
    with endpoint:
        pass
    assert endpoint.closed
    assert repr(endpoint) == "<SyncDatagramEndpoint closed>"
    assert endpoint.socket.fileno() == -1
    stats = endpoint.statistics()
    assert (stats.recv_buffer_size, stats.send_buffer_size, stats.kernel_drops) == (0, 0, 0)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_an_endpoint_dropped_without_close_leaks_no_descriptor() -> None:
    before = _open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the socket's own "unclosed" warning
        for _ in range(20):
            SyncDatagramEndpoint("127.0.0.1")
        gc.collect()
    assert _open_fds() <= before


def test_multicast_membership_is_checked_before_any_system_call() -> None:
    # Nothing is joined: a successful join would send IGMP off the loopback interface.
    with SyncDatagramEndpoint("127.0.0.1") as endpoint:
        with pytest.raises(ValueError, match="not a multicast"):
            endpoint.join_multicast_group("127.0.0.1")
        with pytest.raises(ValueError, match="IPv6 group"):
            endpoint.join_multicast_group("ff02::1")
        with pytest.raises(TypeError):
            endpoint.leave_multicast_group("239.1.2.3", interface=1.5)  # type: ignore[arg-type]
    with pytest.raises(anyio.ClosedResourceError):
        endpoint.join_multicast_group("239.1.2.3")


def test_unix_names_are_str(unix_directory: str) -> None:
    name = f"\0anydgram-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("")  # autobind: an abstract name the peer can answer
        sock.connect(name)
        with SyncDatagramClient.from_socket(sock) as client:
            assert client.remote_address == name
            assert isinstance(client.local_address, str)
            client.send_packet(b"hi")
            _, address = peer.recvfrom(10)
            assert os.fsdecode(address) == client.local_address


# -- typing ------------------------------------------------------------------------------------


def test_generic_parameters_follow_the_protocol() -> None:
    json_protocol: DatagramProtocol[list[int], list[int]] = DatagramProtocol(JSONSerializer())
    with EchoServer() as server:
        with SyncDatagramClient(*server.address) as raw:
            assert_type(raw, SyncDatagramClient[bytes, bytes])
        with SyncDatagramClient(*server.address, protocol=json_protocol) as typed:
            assert_type(typed, SyncDatagramClient[list[int], list[int]])
            typed.send_packet([1, 2])
            echo = typed.recv_packet(timeout=5)
            assert_type(echo, list[int])
            assert echo == [1, 2]  # the echo, parsed
    with SyncDatagramEndpoint("127.0.0.1", protocol=json_protocol) as endpoint:
        assert_type(endpoint, SyncDatagramEndpoint[list[int], list[int]])
        assert_type(endpoint.iter_received_packets(), Iterator[tuple[list[int], Address]])


# -- close() from a signal handler ---------------------------------------------------------------

_SIGNAL_CLOSE = """
import signal, socket, sys
import anyio
from anydgram import SyncDatagramClient, SyncDatagramEndpoint

kind = sys.argv[1]
peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
peer.bind(("127.0.0.1", 0))  # never answers
if kind == "endpoint":
    target = SyncDatagramEndpoint("127.0.0.1")
else:
    target = SyncDatagramClient(*peer.getsockname())
port = target.local_address[1]
signal.signal(signal.SIGALRM, lambda *args: target.close())
signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    if kind == "endpoint":
        target.recv_packet(timeout=30)
    elif kind == "client":
        target.recv_packet(timeout=30)
    else:
        target.request(b"ping", timeout=30, attempts=1)
except anyio.ClosedResourceError:
    print("woken")
assert target.closed
# The socket was released as the interrupted call left: the port is free again.
again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
again.bind(("127.0.0.1", port))
print("released")
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
@pytest.mark.parametrize("kind", ["endpoint", "client", "request"])
def test_close_from_a_signal_handler_wakes_the_interrupted_call(kind: str) -> None:
    # In a child process: before the fix this deadlocked, which must not hang the test run.
    try:
        result = subprocess.run(
            [sys.executable, "-c", _SIGNAL_CLOSE, kind],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("close() in a signal handler deadlocked")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["woken", "released"]
