"""Helpers for the batch tests (``send_packets`` / ``recv_packets``): payloads, kernel probes,
forcing a socket's send and receive path, and spies that say which system calls it made.

The paths (DESIGN.md, "Batches"): a send leaves by UDP GSO runs (``sendmsg`` with
``UDP_SEGMENT``), by ``sendmmsg`` slots, or one system call per datagram (portable); a batch
receive takes ``UDP_GRO`` buffers (one ``recvmsg`` each, split), ``recvmmsg``, or one receive
per datagram. :class:`Paths` forces one per socket through the library's own choice points
(``uses_batches``' argument, the GSO probe, the GRO switch), so the rest of the code runs as
it would. :class:`Syscalls` records what a socket's core asked the kernel for.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from errno import EAGAIN
from typing import Any, TypeVar, cast

import anyio
import pytest

from anydgram import DatagramProtocol, _batches, _mmsg, _mmsg_send, _socket_io, _sync_socket
from anydgram._gro import SOL_UDP, UDP_GRO, RecvGro, enable_gro
from anydgram._io_core import RecvFrom, SocketCore, SocketLike
from anydgram._mmsg import RecvMmsg
from anydgram._socket_io import SocketIO
from anydgram._sync_socket import ThreadedSocketIO
from anydgram.serializers import BytesSerializer

UDP_SEGMENT = _batches.UDP_SEGMENT

SEND_PATHS = ("gso", "sendmmsg", "portable")
RECV_PATHS = ("gro", "recvmmsg", "portable")

#: Every payload is a slice of this, so a datagram is checked byte for byte.
PATTERN = os.urandom(1 << 17)

#: Sizes every IP round trip carries: the empty datagram, tiny ones, the usual MTU marks, and
#: each family's largest.
V4_SIZES = [0, 1, 2, 100, 1199, 1200, 1472, 1473, 8972, 9000, 32767, 65506, 65507]
V6_SIZES = [*V4_SIZES, 65508, 65526, 65527]
FAMILY_LIMIT: dict[int, int] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}

#: A receive buffer that holds a whole test batch (the kernel doubles what is asked).
RCVBUF = 4 << 20

_T = TypeVar("_T")

#: Raw bytes up to the largest datagram any family carries (IPv6's 65,527).
RAW_MAX = DatagramProtocol(BytesSerializer(), max_datagram_size=65527)


def closed_address(family: int, host: str) -> tuple[str, int]:
    """``(host, port)`` of a port just closed: a datagram sent there comes back as ICMP."""
    with socket.socket(family, socket.SOCK_DGRAM) as gone:
        gone.bind((host, 0))
        address: tuple[str, int] = gone.getsockname()[:2]
    return address


def payloads(sizes: Iterable[int], copies: int = 2) -> list[bytes]:
    """``copies`` datagrams of each size, each copy different (a duplicate is visible)."""
    return [PATTERN[7 * copy : 7 * copy + size] for size in sizes for copy in range(copies)]


def numbered(count: int, size: int = 100) -> list[bytes]:
    """``count`` datagrams of ``size`` bytes (at least 4) that start with their index."""
    return [i.to_bytes(4, "big") + PATTERN[i : i + size - 4] for i in range(count)]


def index_of(datagram: bytes) -> int:
    return int.from_bytes(datagram[:4], "big")


def batched_by_environment() -> bool:
    """Whether sockets may take batched system calls here (Linux, not switched off)."""
    return _mmsg.enabled_by_environment() and _mmsg.available() and _mmsg_send.available()


def expected_path(forced: str) -> str:
    """The path a socket forced to ``forced`` takes: ``ANYDGRAM_BATCHED_SYSCALLS=0`` wins."""
    return forced if batched_by_environment() else "portable"


@functools.cache
def gso_refused(family: int) -> str | None:
    """Why the kernel refuses UDP GSO on a ``family`` socket, or ``None`` if it offers it."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError as exc:
        return f"the kernel refuses UDP_SEGMENT here ({exc})"
    return None


@functools.cache
def gro_refused(family: int) -> str | None:
    """Why the kernel refuses ``UDP_GRO`` on a ``family`` socket, or ``None``."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        return f"the kernel refuses UDP_GRO here ({exc})"
    return None


def require_paths(family: int, send_path: str = "", recv_path: str = "") -> None:
    """Skip, saying why, when the kernel refuses a path the test forces."""
    if not batched_by_environment():
        return  # every path is the portable one: nothing to refuse
    if send_path == "gso" and (reason := gso_refused(family)):
        pytest.skip(reason)
    if recv_path == "gro" and (reason := gro_refused(family)):
        pytest.skip(reason)


def core_of(endpoint: Any) -> SocketCore:
    """The I/O core under an async or blocking client or endpoint."""
    io = endpoint._io
    if isinstance(io, SocketIO):
        return io.core
    assert isinstance(io, ThreadedSocketIO)
    core: SocketCore = io._core
    return core


def receive_strategy(endpoint: Any) -> str:
    """What serves the endpoint's ``recv_packets``: ``gro``, ``recvmmsg`` or ``portable``."""
    owner = getattr(core_of(endpoint).receive_many, "__self__", None)
    if isinstance(owner, RecvGro):
        return "gro"
    if isinstance(owner, RecvMmsg):
        return "recvmmsg"
    assert isinstance(owner, RecvFrom), owner
    return "portable"


def port_of(endpoint: Any) -> int:
    """The port an IP endpoint is bound to."""
    address: Any = endpoint.local_address
    assert isinstance(address, tuple)
    return cast("tuple[str, int]", address)[1]


def gro_enabled(endpoint: Any) -> bool:
    return bool(endpoint.socket.getsockopt(SOL_UDP, UDP_GRO))


# -- forcing paths ------------------------------------------------------------------------------


class Paths:
    """Force chosen sockets onto a send and a receive path; others keep the library's choice.

    It wraps the choice points the library consults when a socket first sends or receives a
    batch, so it must be told before the socket's first ``send_packets``/``recv_packets``.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._send: dict[SocketCore, str] = {}
        self._recv: dict[SocketCore, str] = {}
        real_sender = _batches.BatchSender
        real_choose = _batches.choose_batch_receive
        real_probe = _batches._probe_gso
        real_enable = enable_gro  # what _batches calls

        def sender(core: SocketCore, *, batched: bool | None = None) -> _batches.BatchSender:
            if self._send.get(core) == "portable":
                batched = False
            return real_sender(core, batched=batched)

        def choose(core: SocketCore, batched: bool | None = None) -> str:
            if self._recv.get(core) == "portable":
                batched = False
            return real_choose(core, batched)

        def probe(core: SocketCore) -> bool:
            return self._send.get(core) != "sendmmsg" and real_probe(core)

        def enable(core: SocketCore) -> bool:
            return self._recv.get(core) != "recvmmsg" and real_enable(core)

        for module in (_socket_io, _sync_socket):
            monkeypatch.setattr(module, "BatchSender", sender)
            monkeypatch.setattr(module, "choose_batch_receive", choose)
        monkeypatch.setattr(_batches, "_probe_gso", probe)
        monkeypatch.setattr(_batches, "enable_gro", enable)

    def force(self, endpoint: Any, send: str = "", recv: str = "") -> None:
        core = core_of(endpoint)
        if send:
            self._send[core] = send
        if recv:
            self._recv[core] = recv


# -- watching system calls ----------------------------------------------------------------------


@dataclass
class Log:
    """The system calls one socket's core made (batches and single datagrams)."""

    gso_segments: list[int] = field(default_factory=list[int])  # one entry per GSO sendmsg
    sendmmsg_calls: int = 0
    sendmmsg_datagrams: int = 0
    singles: int = 0  # send, sendto, sendmsg without UDP_SEGMENT
    recvmmsg_calls: int = 0
    recvmsg_calls: int = 0
    gro_trains: list[int] = field(default_factory=list[int])  # datagrams per coalesced buffer
    full: int = 0  # calls the real kernel answered EAGAIN (its buffer was full)
    #: Datagrams the "kernel" still takes before its buffer is full (``EAGAIN``); None: any.
    budget: int | None = None

    def take(self, count: int) -> int:
        """How many of ``count`` datagrams the budget lets through now (and spend them)."""
        if self.budget is None:
            return count
        taken = min(count, self.budget)
        self.budget -= taken
        return taken

    @property
    def gso_datagrams(self) -> int:
        return sum(self.gso_segments)

    @property
    def sent(self) -> int:
        return self.gso_datagrams + self.sendmmsg_datagrams + self.singles


class SpySocket:
    """Stands in for a core's socket: records calls and can refuse some, else forwards.

    ``gso_errors`` and ``single_errors`` are consumed one per call (``None``: let it through);
    an error is raised instead of calling the kernel.
    """

    def __init__(self, sock: Any, log: Log) -> None:
        self._sock = sock
        self.log = log
        self.gso_errors: list[OSError | None] = []
        self.single_errors: list[OSError | None] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _single(self) -> None:
        if self.single_errors and (error := self.single_errors.pop(0)) is not None:
            raise error
        if not self.log.take(1):
            raise BlockingIOError(EAGAIN, "the budget is spent")

    def _call(self, method: Callable[..., int], *args: Any) -> int:
        try:
            return method(*args)
        except BlockingIOError:
            self.log.full += 1
            raise

    def send(self, data: bytes, flags: int = 0, /) -> int:
        self._single()
        result = self._call(self._sock.send, data, flags)
        self.log.singles += 1
        return result

    def sendto(self, data: bytes, address: Any, /) -> int:
        self._single()
        result = self._call(self._sock.sendto, data, address)
        self.log.singles += 1
        return result

    def sendmsg(
        self,
        buffers: Iterable[bytes],
        ancdata: Iterable[tuple[int, int, bytes]] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        buffers = list(buffers)
        ancdata = list(ancdata)
        gso = any(level == SOL_UDP and kind == UDP_SEGMENT for level, kind, _ in ancdata)
        if gso:
            if self.gso_errors and (error := self.gso_errors.pop(0)) is not None:
                raise error
            budget = self.log.budget
            if budget is not None and budget < len(buffers):
                raise BlockingIOError(EAGAIN, "the budget is spent")  # a GSO send is whole
            self.log.take(len(buffers))
        else:
            self._single()
        args: tuple[Any, ...] = (buffers, ancdata, flags) + (() if address is None else (address,))
        result = self._call(self._sock.sendmsg, *args)
        if gso:
            self.log.gso_segments.append(len(buffers))
        else:
            self.log.singles += 1
        return result

    def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        result: tuple[bytes, list[tuple[int, int, bytes]], int, Any] = self._sock.recvmsg(
            bufsize, ancbufsize, flags
        )
        if not flags & socket.MSG_ERRQUEUE:
            self.log.recvmsg_calls += 1
            data, ancillary = result[0], result[1]
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    size = struct.unpack("=i", value[:4])[0]
                    if 0 < size < len(data):
                        self.log.gro_trains.append(-(-len(data) // size))
        return result


class Syscalls:
    """Watch the system calls of chosen sockets (install before their first batch).

    ``sendmmsg`` and ``recvmmsg`` go through :mod:`ctypes` by file descriptor, so the libc
    functions are wrapped; everything else goes through the core's socket, replaced by a
    :class:`SpySocket`. ``sendmmsg_policy(fd, count)`` may shape a ``sendmmsg`` call: return
    ``0`` to pass it on, ``n > 0`` to hand the kernel only the first ``n`` messages, or
    ``-errno`` to fail it without calling the kernel (``EAGAIN``: the buffer is full).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._logs: dict[int, Log] = {}
        self.sendmmsg_policy: Callable[[int, int], int] | None = None
        real_send = _mmsg_send._SENDMMSG
        real_recv = _mmsg._RECVMMSG

        def sendmmsg(fd: int, messages: Any, count: int, flags: int) -> int:
            log = self._logs.get(fd)
            policy = self.sendmmsg_policy
            decision = 0 if policy is None else policy(fd, count)
            if decision == 0 and log is not None and log.budget is not None:
                decision = min(count, log.budget) or -EAGAIN
            if decision < 0:
                ctypes.set_errno(-decision)
                return -1
            if decision:
                count = min(count, decision)
            result: int = real_send(fd, messages, count, flags)
            if log is not None:
                if result < 0 and ctypes.get_errno() == EAGAIN:
                    log.full += 1
                sent = max(result, 0)
                if log.budget is not None:
                    log.budget -= sent
                log.sendmmsg_calls += 1
                log.sendmmsg_datagrams += sent
            return result

        def recvmmsg(fd: int, messages: Any, count: int, flags: int, timeout: Any) -> int:
            log = self._logs.get(fd)
            if log is not None:
                log.recvmmsg_calls += 1
            result: int = real_recv(fd, messages, count, flags, timeout)
            return result

        if real_send is not None:
            monkeypatch.setattr(_mmsg_send, "_SENDMMSG", sendmmsg)
        if real_recv is not None:
            monkeypatch.setattr(_mmsg, "_RECVMMSG", recvmmsg)

    def watch(self, endpoint: Any) -> SpySocket:
        """Start recording ``endpoint``'s system calls; its spy (and log) is returned."""
        core = core_of(endpoint)
        log = self._logs[core.sock.fileno()] = Log()
        spy = SpySocket(core.sock, log)
        core.sock = cast(SocketLike, spy)
        return spy


def check_send_path(log: Log, path: str, count: int) -> None:
    """Assert that ``count`` datagrams left by ``path``, each handed to the kernel once."""
    assert log.sent == count, log
    if path == "gso":
        assert log.gso_segments, f"no GSO send: {log}"
        assert log.singles == 0, log
    elif path == "sendmmsg":
        assert not log.gso_segments, log
        assert log.sendmmsg_datagrams == count, log
    else:
        assert not log.gso_segments, log
        assert log.sendmmsg_calls == 0, log
        assert log.singles == count, log


def check_receive_path(endpoint: Any, log: Log, path: str) -> None:
    """Assert that ``endpoint``'s batch receive is ``path`` and used what that path uses."""
    assert receive_strategy(endpoint) == path
    assert gro_enabled(endpoint) == (path == "gro")
    if path == "recvmmsg":
        assert log.recvmmsg_calls > 0, log
    else:
        assert log.recvmmsg_calls == 0, log
    if path == "gro":
        assert log.recvmsg_calls > 0, log


# -- receiving ----------------------------------------------------------------------------------


async def receive_exactly(
    recv: Callable[..., Awaitable[list[_T]]], count: int, *, max_count: int = 64
) -> list[_T]:
    """Call ``recv(max_count=...)`` until ``count`` items came; each call returns 1..max_count."""
    got: list[_T] = []
    with anyio.fail_after(10):
        while len(got) < count:
            batch = await recv(max_count=max_count)
            assert 1 <= len(batch) <= max_count
            got += batch
    assert len(got) == count, f"{len(got) - count} more than sent"
    return got


def refusal(code: int) -> OSError:
    return OSError(code, os.strerror(code))
