"""The I/O core: its one translation of OS errors, its counting, and the portable strategy.

A scripted socket stands in for the kernel: each call pops the next outcome (a datagram, or an
exception to raise), so every errno path is reached without a network. The same core runs
under the async endpoints, the server, the blocking client and the memory network.

The module under test: ``_io_core.py``.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio
import pytest

from anydgram import DatagramTooLargeError
from anydgram._io_core import MAX_BATCH, RecvFrom, SocketCore, Tally
from anydgram._socket_os import IS_LINUX

_PEER = ("127.0.0.1", 9)


class ScriptedSocket:
    """A socket whose receives and sends return or raise what the test queued, in order."""

    def __init__(self, *, family: int = socket.AF_INET, connected: bool = False) -> None:
        self.family = socket.AddressFamily(family)
        self.type = socket.SOCK_DGRAM
        self.proto = 0
        self.connected = connected
        self.incoming: deque[bytes | OSError] = deque()
        self.send_outcomes: deque[OSError | None] = deque()
        self.errqueue = 0  # ICMP errors waiting on MSG_ERRQUEUE
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool, /) -> None:
        pass

    def getsockname(self) -> Any:
        return ("127.0.0.1", 1)

    def getpeername(self) -> Any:
        return _PEER

    def getsockopt(self, level: int, option: int, buflen: int = 0, /) -> Any:
        raise OSError(errno.ENOPROTOOPT, "no options")

    def setsockopt(self, level: int, option: int, value: int | bytes, /) -> None:
        pass

    def _next(self, bufsize: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.incoming.popleft()
        if isinstance(item, OSError):
            raise item
        return item[:bufsize]

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        return self._next(bufsize)

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        return self._next(bufsize), _PEER

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0, /) -> Any:
        if flags & socket.MSG_ERRQUEUE and self.errqueue:
            self.errqueue -= 1
            return b"", [], 0, _PEER
        raise BlockingIOError(errno.EAGAIN, "empty")

    def _send(self, data: bytes, address: Any) -> int:
        outcome = self.send_outcomes.popleft() if self.send_outcomes else None
        if outcome is not None:
            raise outcome
        self.sent.append((data, address))
        return len(data)

    def send(self, data: bytes, flags: int = 0, /) -> int:
        return self._send(data, _PEER)

    def sendto(self, data: bytes, address: Any, /) -> int:
        return self._send(data, address)

    def sendmsg(
        self,
        buffers: Iterable[bytes],
        ancdata: Iterable[Any] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        return self._send(b"".join(buffers), address)

    def close(self) -> None:
        self.closed = True


def _core(sock: ScriptedSocket, limit: int = 10) -> SocketCore:
    return SocketCore(sock, max_datagram_size=limit, connected=sock.connected)


def _error(code: int) -> OSError:
    return OSError(code, "scripted")


def test_receive_takes_what_waits_and_counts_it() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([b"one", b"", b"three"])
    tally = Tally()
    batch = _core(sock).receive(MAX_BATCH, tally)
    assert batch == [
        (b"one", _PEER, None, None),
        (b"", _PEER, None, None),
        (b"three", _PEER, None, None),
    ]
    assert (tally.datagrams_received, tally.bytes_received) == (3, 8)
    assert _core(sock).receive(MAX_BATCH, tally) == []  # EAGAIN: empty, no error


def test_receive_stops_at_max_count() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([b"a", b"b", b"c"])
    core = _core(sock)
    tally = Tally()
    assert [d for d, _, _, _ in core.receive(2, tally)] == [b"a", b"b"]
    assert [d for d, _, _, _ in core.receive(2, tally)] == [b"c"]


def test_oversize_is_counted_and_skipped_never_cut() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([b"x" * 11, b"y" * 10])
    tally = Tally()
    assert _core(sock, limit=10).receive(MAX_BATCH, tally) == [(b"y" * 10, _PEER, None, None)]
    assert tally.oversize == 1
    assert tally.datagrams_received == 1


def test_skips_are_bounded_so_junk_cannot_hold_the_loop() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([b"z" * 50] * (MAX_BATCH + 5))
    tally = Tally()
    assert _core(sock).receive(1, tally) == []
    assert tally.oversize == MAX_BATCH  # the rest waits for the next call
    assert len(sock.incoming) == 5


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_receive_one_agrees_with_receive_of_one(connected: bool) -> None:
    # The one-datagram fast path against the batch loop, on the same scripted arrivals:
    # plain, empty, oversize then valid, an ICMP error then valid (unconnected: counted and
    # skipped), a run of junk longer than the bound, and nothing waiting.
    script: list[bytes | OSError] = [b"one", b"", b"x" * 11, b"two"]
    if not connected:
        script += [_error(errno.ECONNREFUSED), b"three"]
    script += [b"z" * 50] * (MAX_BATCH + 2) + [b"four"]
    results: list[list[Any]] = []
    tallies: list[dict[str, int]] = []
    for take_one in (True, False):
        sock = ScriptedSocket(connected=connected)
        sock.incoming.extend(script)
        core, tally = _core(sock), Tally()
        got: list[Any] = []
        for _ in range(len(script)):
            if take_one:
                got.append(core.receive_one(tally))
            else:
                batch = core.receive(1, tally)
                got.append(batch[0] if batch else None)
        results.append(got)
        tallies.append(tally.as_dict())
    assert results[0] == results[1]
    assert tallies[0] == tallies[1]
    assert [item[0] for item in results[0] if item is not None][:3] == [b"one", b"", b"two"]
    assert results[0][-1] is None  # EAGAIN at the end


def test_icmp_error_on_a_connected_socket_raises_and_is_counted() -> None:
    sock = ScriptedSocket(connected=True)
    sock.incoming.extend([ConnectionRefusedError(errno.ECONNREFUSED, "refused"), b"after"])
    core = _core(sock)
    tally = Tally()
    with pytest.raises(ConnectionRefusedError):
        core.receive(MAX_BATCH, tally)
    assert tally.icmp_errors == 1
    assert core.receive(MAX_BATCH, tally) == [(b"after", _PEER, None, None)]  # still usable


def test_icmp_error_on_an_unconnected_socket_is_counted_from_the_error_queue() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([_error(errno.ECONNREFUSED), b"next"])
    sock.errqueue = 2  # the kernel queued the error (and one more) with IP_RECVERR
    tally = Tally()
    assert _core(sock).receive(MAX_BATCH, tally) == [(b"next", _PEER, None, None)]
    assert tally.icmp_errors == (2 if IS_LINUX else 1)  # elsewhere there is no error queue


def test_icmp_error_with_an_empty_error_queue_counts_once() -> None:
    sock = ScriptedSocket()
    sock.incoming.append(_error(errno.EHOSTUNREACH))
    tally = Tally()
    assert _core(sock).receive(MAX_BATCH, tally) == []
    assert tally.icmp_errors == 1


def test_other_receive_errors_are_raised_as_they_are() -> None:
    sock = ScriptedSocket()
    sock.incoming.append(_error(errno.ENOBUFS))
    with pytest.raises(OSError, match="scripted") as caught:
        _core(sock).receive(MAX_BATCH, Tally())
    assert caught.value.errno == errno.ENOBUFS


def test_a_closed_socket_is_a_closed_resource_error() -> None:
    sock = ScriptedSocket()
    sock.incoming.append(_error(errno.EBADF))
    with pytest.raises(anyio.ClosedResourceError):
        _core(sock).receive(MAX_BATCH, Tally())
    sock.send_outcomes.append(_error(errno.EBADF))
    with pytest.raises(anyio.ClosedResourceError):
        _core(sock).send(Tally(), b"x", _PEER)


def test_send_counts_what_the_kernel_took() -> None:
    sock = ScriptedSocket()
    tally = Tally()
    assert _core(sock).send(tally, b"hello", ("127.0.0.1", 7))
    assert sock.sent == [(b"hello", ("127.0.0.1", 7))]
    assert (tally.datagrams_sent, tally.bytes_sent) == (1, 5)


def test_send_that_would_block_returns_false_and_counts_nothing() -> None:
    sock = ScriptedSocket()
    sock.send_outcomes.append(BlockingIOError(errno.EAGAIN, "full"))
    tally = Tally()
    assert not _core(sock).send(tally, b"x", _PEER)
    assert tally.as_dict() == Tally().as_dict()


def test_emsgsize_is_datagram_too_large_and_a_send_error() -> None:
    sock = ScriptedSocket()
    sock.send_outcomes.append(_error(errno.EMSGSIZE))
    tally = Tally()
    with pytest.raises(DatagramTooLargeError, match="EMSGSIZE"):
        _core(sock).send(tally, b"x" * 9, _PEER)
    assert tally.send_errors == 1
    assert sock.sent == []


def test_unconnected_send_failed_by_an_earlier_icmp_error_is_sent_once_more() -> None:
    sock = ScriptedSocket()
    sock.send_outcomes.append(_error(errno.ECONNREFUSED))
    tally = Tally()
    assert _core(sock).send(tally, b"again", _PEER)
    assert sock.sent == [(b"again", _PEER)]  # sent once, not twice
    assert tally.icmp_errors == 1
    assert tally.datagrams_sent == 1


def test_a_second_icmp_error_on_the_retry_is_raised() -> None:
    sock = ScriptedSocket()
    sock.send_outcomes.extend([_error(errno.ECONNREFUSED), _error(errno.ECONNREFUSED)])
    tally = Tally()
    with pytest.raises(OSError, match="scripted"):
        _core(sock).send(tally, b"x", _PEER)
    assert tally.icmp_errors == 2
    assert tally.datagrams_sent == 0


def test_connected_send_icmp_error_is_raised_at_once() -> None:
    sock = ScriptedSocket(connected=True)
    sock.send_outcomes.append(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    tally = Tally()
    with pytest.raises(ConnectionRefusedError):
        _core(sock).send(tally, b"x", None)
    assert tally.icmp_errors == 1
    assert sock.send_outcomes == deque()


def test_other_send_errors_are_send_errors() -> None:
    sock = ScriptedSocket()
    sock.send_outcomes.append(_error(errno.EPERM))
    tally = Tally()
    with pytest.raises(PermissionError):
        _core(sock).send(tally, b"x", _PEER)
    assert tally.send_errors == 1


def test_release_counts_the_unread_and_closes() -> None:
    sock = ScriptedSocket()
    sock.incoming.extend([b"a", b"b", _error(errno.ECONNREFUSED), b"c"])
    core = _core(sock)
    tally = Tally()
    core.release(tally)
    assert tally.unread_at_close == 3  # the queued ICMP error is skipped, not counted
    assert sock.closed
    assert core.closed
    assert core.kernel_drops() == 0
    assert core.buffer_sizes() == (0, 0)


def test_the_default_strategy_is_the_portable_one() -> None:
    core = _core(ScriptedSocket())
    assert isinstance(getattr(core.receive, "__self__", None), RecvFrom)


def test_tally_adds_and_names_every_counter() -> None:
    first, second = Tally(), Tally()
    first.datagrams_received, second.datagrams_received = 2, 3
    second.unread_at_close = 4
    first.add(second)
    assert first.as_dict()["datagrams_received"] == 5
    assert first.as_dict()["unread_at_close"] == 4
    assert set(first.as_dict()) == set(Tally.__slots__)
