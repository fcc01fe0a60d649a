"""A UDP load generator that keeps a window of datagrams in flight against an echo server.

It sends datagrams carrying a sequence number and a send timestamp to ``HOST:PORT``, keeps
``window`` of them unanswered at all times (``window=1`` is ping-pong), and counts the echoes:
replies per second, latency percentiles, and datagrams never answered. On Linux it batches its
system calls with ``sendmmsg``/``recvmmsg`` (through :mod:`ctypes`), so that it costs clearly
less CPU per datagram than the Python servers it measures; elsewhere it falls back to
``send``/``recv`` one datagram at a time.

Loss handling: a datagram not answered within ``timeout`` seconds is given up on, so the window
is refilled instead of stalling; an echo arriving after that counts as ``late``. When the run
ends, what is still unanswered after another ``timeout`` counts as ``lost``.

Use it as a library (:func:`run_load`) or from the command line::

    python benchmarks/_loadgen.py 127.0.0.1 9999 --window 64 --duration 2 --size 64 --json

Nothing here imports anydgram or the other benchmark modules.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import math
import os
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import sub
from typing import Any, Final, Protocol

__all__ = (
    "MSG_WAITFORONE",
    "PAYLOAD_FORMATS",
    "MMsgVector",
    "PayloadFormat",
    "cpu_busy_ticks",
    "libc_mmsg",
    "mmsg_available",
    "process_cpu_seconds",
    "run_load",
)

_IS_LINUX: Final = sys.platform.startswith("linux")

#: How long one wait for echoes may block before the loop looks at its clocks again.
_POLL_INTERVAL: Final = 0.005
#: At most this many datagrams per sendmmsg/recvmmsg call (the kernel's UIO_MAXIOV).
_MAX_BATCH: Final = 1024
#: The load generator's own receive buffer: echoes must never be dropped on our side.
_RECV_BUFFER: Final = 4 << 20
#: How often unanswered datagrams are checked against the timeout.
_EXPIRY_CHECK_NS: Final = 10_000_000
#: Linux values (asm-generic/socket.h) the socket module does not export.
_SO_MEMINFO: Final = 55
_SK_MEMINFO_DROPS: Final = 8
MSG_WAITFORONE: Final = 0x10000
#: Room for any socket address (sizeof(struct sockaddr_storage)).
_SOCKADDR_SIZE: Final = 128
_UDP_SEGMENT: Final = 103
#: Segments per UDP GSO send: the kernel's UDP_MAX_SEGMENTS (64 before Linux 6.10)...
_GSO_MAX_SEGMENTS: Final = 64
#: ... and the bytes of one IP packet.
_GSO_MAX_BYTES: Final = 65535


# -- payloads ----------------------------------------------------------------------------------
# A datagram carries its sequence number and its send time (perf_counter_ns); a batch of ``n``
# datagrams sits in a buffer at offsets 0, stride, 2 * stride, ... A format packs and unpacks a
# whole batch at once, so the per-datagram work stays in C for the binary format.


class PayloadFormat(Protocol):
    """How the sequence number and send time travel inside a datagram."""

    name: str
    #: The smallest datagram that holds both numbers.
    min_size: int

    def template(self, size: int) -> bytes:
        """A datagram of ``size`` bytes whose numbers ``pack_batch`` then fills in."""
        ...

    def pack_batch(self, buffer: bytearray, size: int, count: int, seq: int, now: int) -> None:
        """Number the datagrams in slots ``0..count-1`` ``seq, seq + 1, ...``, sent at ``now``."""
        ...

    def unpack_batch(
        self, buffer: bytearray, stride: int, lengths: Sequence[int], size: int
    ) -> tuple[Sequence[int], Sequence[int], int]:
        """Read ``(seqs, send_times, malformed)`` from echoes of the given lengths.

        Echoes that do not hold the numbers (wrong length or content) are left out and
        counted in ``malformed``.
        """
        ...


class BinaryPayload:
    """A 16-byte little-endian header (sequence number, send time), then zeros.

    The echo must come back byte for byte, so its length is checked too.
    """

    name = "binary"
    min_size = 16
    _header = struct.Struct("<QQ")

    def __init__(self) -> None:
        self._structs: dict[tuple[int, int], struct.Struct] = {}

    def _batch_struct(self, stride: int, count: int) -> struct.Struct:
        # One struct for a whole batch: header, padding, header, padding, ...
        key = (stride, count)
        batch = self._structs.get(key)
        if batch is None:
            batch = self._structs[key] = struct.Struct("<" + f"QQ{stride - 16}x" * count)
        return batch

    def template(self, size: int) -> bytes:
        return bytes(size)

    def pack_batch(self, buffer: bytearray, size: int, count: int, seq: int, now: int) -> None:
        numbers = chain.from_iterable(zip(range(seq, seq + count), repeat(now)))
        self._batch_struct(size, count).pack_into(buffer, 0, *numbers)

    def unpack_batch(
        self, buffer: bytearray, stride: int, lengths: Sequence[int], size: int
    ) -> tuple[Sequence[int], Sequence[int], int]:
        count = len(lengths)
        if lengths.count(size) == count:
            numbers = self._batch_struct(stride, count).unpack_from(buffer)
            return numbers[0::2], numbers[1::2], 0
        seqs, sents = [], []
        unpack_from = self._header.unpack_from
        for i, length in enumerate(lengths):
            if length == size:
                seq, sent = unpack_from(buffer, i * stride)
                seqs.append(seq)
                sents.append(sent)
        return seqs, sents, count - len(seqs)


class JSONPayload:
    """A JSON array ``["<seq><sent>", "xx..."]``, both numbers as 20 ASCII digits.

    For servers that decode JSON and encode it again: the numbers stay at the same offset in
    the echo whatever whitespace the server's encoder puts between elements.
    """

    name = "json"
    _head = b'["'
    _digits = 20
    min_size = len(_head) + 2 * _digits + len(b'","') + len(b'"]')

    def template(self, size: int) -> bytes:
        padding = b"x" * (size - self.min_size)
        return self._head + b"0" * (2 * self._digits) + b'","' + padding + b'"]'

    def pack_batch(self, buffer: bytearray, size: int, count: int, seq: int, now: int) -> None:
        start, width = len(self._head), 2 * self._digits
        for i in range(count):
            offset = start + i * size
            buffer[offset : offset + width] = b"%020d%020d" % (seq + i, now)

    def unpack_batch(
        self, buffer: bytearray, stride: int, lengths: Sequence[int], size: int
    ) -> tuple[Sequence[int], Sequence[int], int]:
        head, digits = self._head, self._digits
        seqs, sents = [], []
        for i, length in enumerate(lengths):
            offset = i * stride
            start = offset + len(head)
            if length < self.min_size or buffer[offset:start] != head:
                continue
            try:
                seq = int(buffer[start : start + digits])
                sent = int(buffer[start + digits : start + 2 * digits])
            except ValueError:
                continue
            seqs.append(seq)
            sents.append(sent)
        return seqs, sents, len(lengths) - len(seqs)


PAYLOAD_FORMATS: Final[dict[str, PayloadFormat]] = {
    "binary": BinaryPayload(),
    "json": JSONPayload(),
}


# -- the socket side: one batch out, one batch in ----------------------------------------------


class _Transport(Protocol):
    """Datagram slots in two buffers; ``send``/``recv`` move whole batches of slots.

    Slot ``i`` starts at ``i * stride`` in ``send_buffer`` (``size`` bytes each) and in
    ``recv_buffer`` (``stride`` bytes each).
    """

    stride: int
    send_buffer: bytearray
    recv_buffer: bytearray

    @property
    def method(self) -> str:
        """How datagrams are sent and received, for the report."""
        ...

    def send(self, count: int) -> int:
        """Send slots ``0..count-1`` without blocking; return how many the kernel took."""
        ...

    def recv(self) -> int:
        """Wait up to the poll interval for echoes; return how many landed in slots ``0..``."""
        ...

    def lengths(self, count: int) -> Sequence[int]:
        """The byte lengths of the first ``count`` slots of the last ``recv``."""
        ...


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def _load_libc() -> ctypes.CDLL | None:
    if not _IS_LINUX:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        send, recv = libc.sendmmsg, libc.recvmmsg
    except (OSError, AttributeError):
        return None
    send.argtypes = (ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int)
    send.restype = ctypes.c_int
    recv.argtypes = (
        ctypes.c_int,
        ctypes.POINTER(_MMsgHdr),
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    recv.restype = ctypes.c_int
    return libc


_LIBC: Final = _load_libc()


def mmsg_available() -> bool:
    """Whether the batched ``sendmmsg``/``recvmmsg`` path can be used here."""
    return _LIBC is not None


class MMsgVector:
    """``count`` messages for ``sendmmsg``/``recvmmsg``, each one buffer slot of ``buffer``.

    Message ``i`` reads or writes ``length`` bytes at ``i * stride``. With ``names``, each also
    has room for a peer address (what a server needs to reply to whoever sent it). The
    ``*_view`` memoryviews expose one field of every message (or iovec) as a strided array, so
    a whole batch can be read or rewritten in one C-level slice operation.
    """

    def __init__(
        self, buffer: bytearray, count: int, stride: int, length: int, *, names: bool = False
    ) -> None:
        base = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
        self.iovecs = (_IoVec * count)()
        self.messages = (_MMsgHdr * count)()
        self.names = (ctypes.c_char * (_SOCKADDR_SIZE * count))() if names else None
        for i in range(count):
            self.iovecs[i].iov_base = base + i * stride
            self.iovecs[i].iov_len = length
            header = self.messages[i].msg_hdr
            header.msg_iov = ctypes.pointer(self.iovecs[i])
            header.msg_iovlen = 1
            if self.names is not None:
                header.msg_name = ctypes.addressof(self.names) + i * _SOCKADDR_SIZE
                header.msg_namelen = _SOCKADDR_SIZE
        words = ctypes.sizeof(_MMsgHdr) // 4
        as_words = memoryview(self.messages).cast("B").cast("I")
        #: ``msg_len`` of every message: the bytes a receive got, or a send sent.
        self.lengths_view = as_words[_MMsgHdr.msg_len.offset // 4 :: words]
        #: ``msg_namelen`` of every message, which a receive overwrites.
        self.namelens_view = as_words[_MsgHdr.msg_namelen.offset // 4 :: words]
        #: ``iov_len`` of every message's buffer.
        self.iov_lengths_view = memoryview(self.iovecs).cast("B").cast("Q")[1::2]


def libc_mmsg() -> tuple[Any, Any] | None:
    """``(sendmmsg, recvmmsg)`` from libc through ctypes, or ``None`` where they are missing.

    Both take ``(fd, messages, count, flags)`` (``recvmmsg`` a timeout pointer too, pass
    ``None``), return a count or -1, and leave the error in ``ctypes.get_errno()``.
    """
    if _LIBC is None:
        return None
    return _LIBC.sendmmsg, _LIBC.recvmmsg


class _MMsgTransport:
    """``sendmmsg``/``recvmmsg`` on a connected, blocking socket with ``SO_RCVTIMEO`` set.

    Receiving uses ``MSG_WAITFORONE``: block (up to the timeout) for the first echo, then take
    whatever else is queued, all in one system call.

    With ``gso``, a batch goes out as one ``sendmsg`` with ``UDP_SEGMENT`` (UDP generic
    segmentation offload, Linux 4.18+): the kernel builds one packet and cuts it into
    datagrams on delivery, which roughly halves the load generator's own kernel time per
    datagram. The server receives ordinary datagrams either way. If the kernel refuses the
    option, sends fall back to ``sendmmsg``.
    """

    def __init__(self, sock: socket.socket, size: int, batch: int, *, gso: bool) -> None:
        assert _LIBC is not None
        self._sock = sock
        self._size = size
        self._fd = sock.fileno()
        self._batch = batch
        self.stride = size + 64  # room to notice an echo longer than what was sent
        self.send_buffer = bytearray(size * batch)
        self.recv_buffer = bytearray(self.stride * batch)
        self._send = MMsgVector(self.send_buffer, batch, size, size)
        self._recv = MMsgVector(self.recv_buffer, batch, self.stride, self.stride)
        self._send_msgs, self._recv_msgs = self._send.messages, self._recv.messages
        self._msg_lens = self._recv.lengths_view
        self._sendmmsg = _LIBC.sendmmsg
        self._recvmmsg = _LIBC.recvmmsg
        seconds = int(_POLL_INTERVAL)
        micros = int((_POLL_INTERVAL - seconds) * 1_000_000)
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros))
        self.errors = 0
        self._send_view = memoryview(self.send_buffer)
        self._gso_segments = (
            min(_GSO_MAX_SEGMENTS, (_GSO_MAX_BYTES - 8 - 40) // size) if gso and size else 0
        )
        self._gso_ancillary = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("H", size))]

    @property
    def method(self) -> str:
        return "UDP GSO/recvmmsg" if self._gso_segments > 1 else "sendmmsg/recvmmsg"

    def send(self, count: int) -> int:
        if count > 1 and self._gso_segments > 1:
            return self._send_gso(count)
        return self.send_mmsg_from(0, count)

    def _send_gso(self, count: int) -> int:
        size, done = self._size, 0
        while done < count:
            chunk = min(count - done, self._gso_segments)
            view = self._send_view[done * size : (done + chunk) * size]
            try:
                self._sock.sendmsg([view], self._gso_ancillary, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    self._gso_segments = 0  # not supported here: sendmmsg from now on
                    return done + self.send_mmsg_from(done, count - done)
                self.errors += 1
                break
            done += chunk
        return done

    def send_mmsg_from(self, first: int, count: int) -> int:
        """Send slots ``first..first+count-1`` with ``sendmmsg``."""
        messages = ctypes.cast(
            ctypes.byref(self._send_msgs, first * ctypes.sizeof(_MMsgHdr)),
            ctypes.POINTER(_MMsgHdr),
        )
        sent: int = self._sendmmsg(self._fd, messages, count, socket.MSG_DONTWAIT)
        if sent < 0:
            self._on_error()
            return 0
        return sent

    def recv(self) -> int:
        got: int = self._recvmmsg(self._fd, self._recv_msgs, self._batch, MSG_WAITFORONE, None)
        if got < 0:
            self._on_error()
            return 0
        return got

    def lengths(self, count: int) -> Sequence[int]:
        lengths: list[int] = self._msg_lens[:count].tolist()
        return lengths

    def _on_error(self) -> None:
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return
        # ECONNREFUSED (nobody on the port) and the like: counted, and the run goes on until
        # its deadline, so a server that died shows up as errors and loss, not as a hang.
        self.errors += 1


class _PortableTransport:
    """One ``send``/``recv_into`` per datagram on a non-blocking socket, ``select`` to wait."""

    method = "send/recv"

    def __init__(self, sock: socket.socket, size: int, batch: int) -> None:
        self._sock = sock
        self._batch = batch
        self.stride = size + 64
        self.send_buffer = bytearray(size * batch)
        self.recv_buffer = bytearray(self.stride * batch)
        send_view, recv_view = memoryview(self.send_buffer), memoryview(self.recv_buffer)
        self._send_slots = [send_view[i * size : (i + 1) * size] for i in range(batch)]
        self._recv_slots = [
            recv_view[i * self.stride : (i + 1) * self.stride] for i in range(batch)
        ]
        self._lengths: list[int] = []
        sock.setblocking(False)
        self.errors = 0

    def send(self, count: int) -> int:
        send = self._sock.send
        for i in range(count):
            try:
                send(self._send_slots[i])
            except BlockingIOError:
                return i
            except OSError:
                self.errors += 1
                return i
        return count

    def _drain(self) -> int:
        recv_into = self._sock.recv_into
        lengths = self._lengths
        lengths.clear()
        for slot in self._recv_slots:
            try:
                lengths.append(recv_into(slot))
            except BlockingIOError:
                break
            except OSError:
                self.errors += 1
                break
        return len(lengths)

    def recv(self) -> int:
        got = self._drain()
        if got:
            return got
        readable, _, _ = select.select([self._sock], [], [], _POLL_INTERVAL)
        return self._drain() if readable else 0

    def lengths(self, count: int) -> Sequence[int]:
        return self._lengths[:count]


# -- CPU accounting ----------------------------------------------------------------------------


def _thread_cpu_seconds() -> tuple[float, float]:
    """User and system CPU seconds of the calling thread (the whole process where unknown)."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime


def process_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds used so far by process ``pid`` (all its threads).

    Read from ``/proc/<pid>/stat`` (Linux), in clock ticks of usually 10 ms; ``None`` where
    that cannot be read.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after it are fixed.
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_busy_ticks() -> list[tuple[int, int]] | None:
    """Per CPU, ``(busy, total)`` clock ticks so far from ``/proc/stat`` (Linux), else ``None``.

    Busy is everything but idle and iowait, so it includes interrupt and softirq time: on
    loopback much of a datagram's kernel work runs as softirq, which process CPU times omit.
    """
    try:
        with open("/proc/stat", "rb") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    ticks = []
    for line in lines:
        if not line.startswith(b"cpu") or line.startswith(b"cpu "):
            continue
        values = [int(v) for v in line.split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        ticks.append((sum(values) - idle, sum(values)))
    return ticks


def _busy_percent(
    before: list[tuple[int, int]] | None, after: list[tuple[int, int]] | None
) -> list[float] | None:
    if before is None or after is None or len(before) != len(after):
        return None
    return [
        (b1 - b0) / (t1 - t0) * 100 if t1 > t0 else math.nan
        for (b0, t0), (b1, t1) in zip(before, after, strict=True)
    ]


def _socket_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for ``sock`` (Linux ``SO_MEMINFO``), ``None`` elsewhere."""
    if not _IS_LINUX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
    except OSError:
        return None
    drops: int = struct.unpack_from("I", raw, 4 * _SK_MEMINFO_DROPS)[0]
    return drops


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of ``ordered`` (nanoseconds) in microseconds; NaN if empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] / 1000


# -- the load loop -----------------------------------------------------------------------------


def run_load(
    host: str,
    port: int,
    *,
    window: int = 64,
    duration: float = 2.0,
    size: int = 64,
    payload: str = "binary",
    warmup: float = 0.0,
    timeout: float = 0.5,
    max_datagrams: int = 10_000_000,
    watch_pid: int | None = None,
    portable: bool = False,
    gso: bool = True,
) -> dict[str, Any]:
    """Keep ``window`` datagrams in flight to ``host:port`` and measure the echoes.

    The run has three phases: ``warmup`` seconds whose results are discarded, ``duration``
    seconds measured, then up to ``timeout`` seconds of waiting for the last echoes (nothing is
    sent then). Sending also stops once ``max_datagrams`` were sent, so the run is bounded both
    in time and in count.

    Args:
        host: The echo server's address (a numeric address; no name resolution is done).
        port: Its port.
        window: Datagrams kept unanswered at all times; 1 is ping-pong.
        duration: Seconds measured.
        size: Bytes per datagram (at least the payload format's ``min_size``).
        payload: A key of :data:`PAYLOAD_FORMATS`: ``"binary"`` (16-byte header, then zeros)
            or ``"json"`` (a JSON array of two strings, for servers that decode JSON).
        warmup: Seconds run before measuring; their datagrams are not measured.
        timeout: Seconds after which an unanswered datagram is given up on (and replaced).
        max_datagrams: The most datagrams sent in all.
        watch_pid: Also report the CPU time process ``pid`` (the server) used while measured.
        portable: Use the one-datagram-per-call path even where ``sendmmsg`` exists.
        gso: On the batched path, send each batch as one UDP GSO packet (Linux) rather than
            with ``sendmmsg``; it falls back by itself where the kernel refuses.

    Returns:
        A JSON-ready dict. ``rate`` is echoes received per second while measured; ``sent``,
        ``received``, ``late`` and ``lost`` count the datagrams sent while measured (``sent ==
        received + late + lost``); ``warmup_lost`` those of the warm-up; latencies are in
        microseconds; ``loadgen_cpu_percent`` is this thread's CPU time over the measured
        wall time; ``server_*`` keys appear with ``watch_pid``.

    Raises:
        ValueError: An argument is out of range.
        OSError: The socket could not be set up.
    """
    fmt = PAYLOAD_FORMATS.get(payload)
    if fmt is None:
        raise ValueError(f"payload must be one of {sorted(PAYLOAD_FORMATS)}, got {payload!r}")
    if not fmt.min_size <= size <= 65507:
        raise ValueError(f"size must be between {fmt.min_size} and 65507 for {payload} payloads")
    if window < 1:
        raise ValueError("window must be at least 1")
    if duration <= 0 or warmup < 0 or timeout <= 0 or max_datagrams < 1:
        raise ValueError("duration and timeout must be > 0, warmup >= 0, max_datagrams >= 1")

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _RECV_BUFFER)
        except OSError:
            pass
        sock.connect((host, port))
        batch = min(window, _MAX_BATCH)
        transport: _Transport
        if mmsg_available() and not portable:
            transport = _MMsgTransport(sock, size, batch, gso=gso)
        else:
            transport = _PortableTransport(sock, size, batch)
        template = fmt.template(size)
        for i in range(batch):
            transport.send_buffer[i * size : (i + 1) * size] = template
        result = _LoadLoop(transport, fmt, size, window, timeout).run(
            warmup, duration, max_datagrams, watch_pid
        )
        drops = _socket_drops(sock)
        result.update(
            host=host,
            port=port,
            window=window,
            size=size,
            payload=payload,
            method=transport.method,
            errors=getattr(transport, "errors", 0),
            loadgen_socket_drops=drops,
        )
        return result


class _LoadLoop:
    """The bookkeeping of one run: what is in flight, what came back, what was given up on."""

    def __init__(
        self, transport: _Transport, fmt: PayloadFormat, size: int, window: int, timeout: float
    ) -> None:
        self.transport = transport
        self.fmt = fmt
        self.size = size
        self.window = window
        self.timeout_ns = int(timeout * 1e9)
        self.next_seq = 0
        #: seq -> send time (ns) of every datagram sent and not yet answered or given up on.
        self.in_flight: dict[int, int] = {}
        #: seqs given up on (unanswered past the timeout) and not answered since.
        self.given_up: set[int] = set()
        #: the first seq sent while measuring; earlier ones belong to the warm-up.
        self.first_measured = -1
        self.echoes = 0
        self.recv_calls = 0
        self.send_calls = 0
        self.unexpected = 0
        self.corrupt = 0
        self.latencies: list[int] = []

    def send_more(self, now: int, limit: int) -> None:
        """Top the window up (never past ``limit`` datagrams sent in all)."""
        room = min(self.window - len(self.in_flight), limit - self.next_seq)
        transport, size = self.transport, self.size
        batch_max = len(transport.send_buffer) // size
        while room > 0:
            count = min(room, batch_max)
            seq = self.next_seq
            self.fmt.pack_batch(transport.send_buffer, size, count, seq, now)
            sent = transport.send(count)
            self.send_calls += 1
            if sent:
                self.in_flight.update(zip(range(seq, seq + sent), repeat(now)))
                self.next_seq = seq + sent
            if sent < count:  # the send buffer is full: wait for echoes first
                return
            room -= count

    def receive(self) -> int:
        """Take the echoes that are there (waiting a little for the first); return how many."""
        transport = self.transport
        got = transport.recv()
        self.recv_calls += 1
        if not got:
            return 0
        now = time.perf_counter_ns()
        seqs, echoed, malformed = self.fmt.unpack_batch(
            transport.recv_buffer, transport.stride, transport.lengths(got), self.size
        )
        self.corrupt += malformed
        # The common case in a few C-level calls: every echo answers a datagram in flight,
        # carries the send time we stored, and belongs to the measured phase.
        sent = list(map(self.in_flight.pop, seqs, repeat(None)))
        first_measured = self.first_measured
        if sent == list(echoed):  # so the echoed send times are the ones we stored
            self.echoes += len(sent)
            if first_measured < 0:  # warming up
                return got
            if seqs and min(seqs) >= first_measured:
                self.latencies.extend(map(sub, repeat(now), echoed))
                return got
            for seq, sent_at in zip(seqs, echoed, strict=True):
                if seq >= first_measured:
                    self.latencies.append(now - sent_at)
            return got
        # Some echo is late, unknown or altered: sort them out one by one.
        for seq, stored, echoed_at in zip(seqs, sent, echoed, strict=True):
            if stored is None:
                if seq in self.given_up:
                    self.given_up.discard(seq)  # late: counted when the run ends
                else:
                    self.unexpected += 1
                continue
            self.echoes += 1
            if stored != echoed_at:
                self.corrupt += 1
            if seq >= first_measured >= 0:
                self.latencies.append(now - stored)
        return got

    def expire(self, now: int) -> None:
        """Give up on datagrams unanswered for longer than the timeout (the oldest come first)."""
        deadline = now - self.timeout_ns
        expired = []
        for seq, sent in self.in_flight.items():
            if sent > deadline:
                break
            expired.append(seq)
        for seq in expired:
            del self.in_flight[seq]
        self.given_up.update(expired)

    def mark(self, now: int, watch_pid: int | None) -> _Mark:
        return _Mark(
            wall_ns=now,
            echoes=self.echoes,
            recv_calls=self.recv_calls,
            send_calls=self.send_calls,
            cpu=_thread_cpu_seconds(),
            busy=cpu_busy_ticks(),
            watched_cpu=process_cpu_seconds(watch_pid) if watch_pid else None,
        )

    def run(
        self, warmup: float, duration: float, max_datagrams: int, watch_pid: int | None
    ) -> dict[str, Any]:
        clock = time.perf_counter_ns
        now = clock()
        measure_at = now + int(warmup * 1e9)
        stop_at = measure_at + int(duration * 1e9)
        next_expiry = now + _EXPIRY_CHECK_NS
        start: _Mark | None = None
        # Warm-up and measurement: keep the window full until the deadline or the count.
        while now < stop_at and self.next_seq < max_datagrams:
            if start is None and now >= measure_at:
                self.first_measured = self.next_seq
                start = self.mark(now, watch_pid)
            self.send_more(now, max_datagrams)
            self.receive()
            now = clock()
            if now >= next_expiry:
                self.expire(now)
                next_expiry = now + _EXPIRY_CHECK_NS
        if start is None:  # max_datagrams was reached during the warm-up
            self.first_measured = self.next_seq
            start = self.mark(now, watch_pid)
        end = self.mark(now, watch_pid)
        # Then wait for the echoes still due, sending nothing.
        drain_until = now + self.timeout_ns
        while self.in_flight and now < drain_until:
            self.receive()
            now = clock()
        return self.report(start, end)

    def report(self, start: _Mark, end: _Mark) -> dict[str, Any]:
        # Unanswered now, or given up on earlier and never answered: lost.
        unanswered = [*self.in_flight, *self.given_up]
        lost = sum(seq >= self.first_measured for seq in unanswered)
        sent = self.next_seq - self.first_measured
        received = len(self.latencies)
        self.latencies.sort()
        wall = (end.wall_ns - start.wall_ns) / 1e9
        echoes = end.echoes - start.echoes
        user, system = end.cpu[0] - start.cpu[0], end.cpu[1] - start.cpu[1]
        result: dict[str, Any] = {
            "rate": echoes / wall if wall > 0 else math.nan,
            "sent": sent,
            "received": received,
            "late": sent - received - lost,
            "lost": lost,
            "warmup_lost": len(unanswered) - lost,
            "unexpected": self.unexpected,
            "corrupt": self.corrupt,
            "wall_s": wall,
            "echoes_measured": echoes,
            "recv_calls": end.recv_calls - start.recv_calls,
            "send_calls": end.send_calls - start.send_calls,
            "latency_p50_us": _percentile(self.latencies, 0.50),
            "latency_p90_us": _percentile(self.latencies, 0.90),
            "latency_p99_us": _percentile(self.latencies, 0.99),
            "latency_max_us": self.latencies[-1] / 1000 if self.latencies else math.nan,
            "loadgen_user_s": user,
            "loadgen_system_s": system,
            "loadgen_cpu_percent": (user + system) / wall * 100 if wall > 0 else math.nan,
            "cpu_busy_percent": _busy_percent(start.busy, end.busy),
        }
        if start.watched_cpu is not None and end.watched_cpu is not None:
            server_user = end.watched_cpu[0] - start.watched_cpu[0]
            server_system = end.watched_cpu[1] - start.watched_cpu[1]
            server_cpu = server_user + server_system
            result.update(
                server_user_s=server_user,
                server_system_s=server_system,
                server_cpu_percent=server_cpu / wall * 100 if wall > 0 else math.nan,
                server_cpu_us_per_datagram=server_cpu / echoes * 1e6 if echoes else math.nan,
            )
        return result


@dataclass(frozen=True)
class _Mark:
    """Counters and clocks at the start or the end of the measured phase."""

    wall_ns: int
    echoes: int
    recv_calls: int
    send_calls: int
    cpu: tuple[float, float]
    busy: list[tuple[int, int]] | None
    watched_cpu: tuple[float, float] | None


# -- command line ------------------------------------------------------------------------------


def _pin_to_cpu(cpu: int) -> bool:
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host", help="the echo server's numeric address, e.g. 127.0.0.1")
    parser.add_argument("port", type=int)
    parser.add_argument("--window", type=int, default=64, help="datagrams in flight (1: ping-pong)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--size", type=int, default=64, help="bytes per datagram")
    parser.add_argument("--payload", choices=sorted(PAYLOAD_FORMATS), default="binary")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds until a loss")
    parser.add_argument("--max-datagrams", type=int, default=10_000_000)
    parser.add_argument("--watch-pid", type=int, help="also report this process's CPU use")
    parser.add_argument("--cpu", type=int, help="pin the load generator to this CPU")
    parser.add_argument("--portable", action="store_true", help="no sendmmsg/recvmmsg")
    parser.add_argument("--no-gso", action="store_true", help="sendmmsg, not UDP GSO")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    pinned = _pin_to_cpu(args.cpu) if args.cpu is not None else None
    try:
        result = run_load(
            args.host,
            args.port,
            window=args.window,
            duration=args.duration,
            size=args.size,
            payload=args.payload,
            warmup=args.warmup,
            timeout=args.timeout,
            max_datagrams=args.max_datagrams,
            watch_pid=args.watch_pid,
            portable=args.portable,
            gso=not args.no_gso,
        )
    except ValueError as exc:
        parser.error(str(exc))
    result["pinned_cpu"] = args.cpu if pinned else None
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:24} {value:.2f}" if isinstance(value, float) else f"{key:24} {value}")


if __name__ == "__main__":
    main()
