"""Bulk transfer: 1,200-byte datagrams from one sender to one receiver over loopback.

What ``send_packets`` and ``recv_packets`` buy against the loops a user writes by hand. Each
measurement is two fresh processes, the sender pinned to one CPU and the receiver to the
other; the sender sends for ``--seconds``, the receiver drains until the datagrams stop.

Send rows (sender CPU per datagram; the metric is datagrams per second of sender CPU):

- ``raw sendto``: ``sock.sendto`` in a loop, the baseline every ratio is against;
- ``stdlib GSO``: ``sock.sendmsg`` with a ``UDP_SEGMENT`` control message, 54 datagrams per
  call, the best a bare stdlib loop does (the ceiling for ours);
- ``ctypes sendmmsg``: one ``sendmmsg`` of 64 prebuilt messages per call, no Python work per
  datagram, the ceiling for a sender batching without GSO;
- ``send_packets`` (anydgram, per backend, batches of 64): GSO on, and GSO off (``sendmmsg``
  only).

Each against two receivers: one with ``UDP_GRO`` (the kernel hands it the GSO buffer whole)
and one without (on loopback the kernel then cuts the buffer up again, and charges that work
to the sender). Receive rows (receiver CPU per datagram) take a ``stdlib GSO`` sender: a
``recvfrom`` loop (the baseline), and ``recv_packets`` with ``UDP_GRO`` and without it
(``recvmmsg`` only).

    $ python benchmarks/bulk.py --rounds 3 --seconds 1

Rounds are interleaved; the tables give medians of the per-round ratios with their ranges.
Every process started here is ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    CLIENT_CPU,
    LOOPBACK,
    SERVER_CPU,
    Summary,
    cpu_times,
    markdown_table,
    paired_ratios,
    pin_to_cpu,
    run_interleaved,
    write_json,
)

SIZE = 1200
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: Datagrams per stdlib GSO call: as many 1,200-byte segments as 65,507 bytes hold.
GSO_RUN = 65507 // SIZE
#: Packets per send_packets call.
BATCH = 64
BACKENDS = ("asyncio", "uvloop", "trio")
#: The receiver stops once no datagram came for this long (after the first).
IDLE_S = 0.3


@dataclass(frozen=True)
class Row:
    """One measurement: who sends, who receives, and which of them is measured."""

    sender: str
    receiver: str
    measured: str  # "send" or "recv"

    @property
    def label(self) -> str:
        return f"{self.sender} -> {self.receiver}"


SEND_BASELINES = {
    "gro": Row("raw sendto", "stdlib GRO", "send"),
    "plain": Row("raw sendto", "raw recvfrom", "send"),
}
RECV_BASELINE = Row("stdlib GSO", "raw recvfrom", "recv")


def all_rows(backends: Sequence[str]) -> list[Row]:
    rows = [*SEND_BASELINES.values()]
    rows += [Row("stdlib GSO", "stdlib GRO", "send"), Row("stdlib GSO", "raw recvfrom", "send")]
    rows.append(Row("ctypes sendmmsg", "stdlib GRO", "send"))
    for backend in backends:
        rows.append(Row(f"send_packets {backend}", "stdlib GRO", "send"))
        rows.append(Row(f"send_packets {backend}", "raw recvfrom", "send"))
        rows.append(Row(f"send_packets {backend} no GSO", "stdlib GRO", "send"))
    rows.append(RECV_BASELINE)
    for backend in backends:
        rows.append(Row("stdlib GSO", f"recv_packets {backend}", "recv"))
        rows.append(Row("stdlib GSO", f"recv_packets {backend} no GRO", "recv"))
    return rows


# -- the child processes ------------------------------------------------------------------------


def _report(count: int, start_cpu: Any, started: float) -> None:
    used = cpu_times() - start_cpu
    print(
        json.dumps({"datagrams": count, "cpu_s": used.total, "wall_s": time.monotonic() - started}),
        flush=True,
    )


def send_child(kind: str, port: int, seconds: float) -> None:
    payload = b"x" * SIZE
    address = (LOOPBACK, port)
    if kind.startswith("send_packets"):
        _send_packets(kind, address, seconds)
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    count = 0
    start_cpu = cpu_times()
    started = time.monotonic()
    deadline = started + seconds
    if kind == "raw sendto":
        while time.monotonic() < deadline:
            for _ in range(BATCH):
                sock.sendto(payload, address)
            count += BATCH
    elif kind == "ctypes sendmmsg":
        send_batch = _bare_sendmmsg(sock, payload, address)
        while time.monotonic() < deadline:
            for _ in range(4):
                count += send_batch()
    else:  # stdlib GSO
        run = [payload] * GSO_RUN
        control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", SIZE))]
        while time.monotonic() < deadline:
            for _ in range(4):
                try:
                    sock.sendmsg(run, control, 0, address)
                except BlockingIOError:
                    continue
                count += GSO_RUN
    _report(count, start_cpu, started)


def _bare_sendmmsg(sock: socket.socket, payload: bytes, address: tuple[str, int]) -> Any:
    """A ``sendmmsg`` of ``BATCH`` copies of ``payload``, built once: no Python per datagram.

    The ceiling of any sender that batches with ``sendmmsg`` alone (no GSO): what is left is
    the kernel's work per datagram and one ``ctypes`` call per batch.
    """
    import ctypes
    import ctypes.util

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [
            ("name", ctypes.c_void_p),
            ("namelen", ctypes.c_uint32),
            ("iov", ctypes.c_void_p),
            ("iovlen", ctypes.c_size_t),
            ("control", ctypes.c_void_p),
            ("controllen", ctypes.c_size_t),
            ("flags", ctypes.c_int),
        ]

    class MMsgHdr(ctypes.Structure):
        _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    data = ctypes.create_string_buffer(payload, len(payload))
    name = ctypes.create_string_buffer(
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", address[1])
        + socket.inet_aton(address[0])
        + bytes(8)
    )
    iovec = IoVec(ctypes.addressof(data), len(payload))
    messages = (MMsgHdr * BATCH)()
    for message in messages:
        message.hdr.name = ctypes.addressof(name)
        message.hdr.namelen = 16
        message.hdr.iov = ctypes.addressof(iovec)
        message.hdr.iovlen = 1
    fd = sock.fileno()
    keep = (data, name, iovec, messages)

    def send_batch() -> int:
        sent: int = sendmmsg(fd, keep[3], BATCH, 0)
        return max(sent, 0)

    return send_batch


def _send_packets(kind: str, address: tuple[str, int], seconds: float) -> None:

    import anydgram
    from anydgram import _batches

    backend = kind.split()[1]
    if kind.endswith("no GSO"):
        _batches._probe_gso = lambda core: False  # type: ignore[assignment]

    async def main() -> None:
        async with await anydgram.connect_udp(*address, send_buffer_size=1 << 22) as client:
            batch = [b"x" * SIZE] * BATCH
            count = 0
            start_cpu = cpu_times()
            started = time.monotonic()
            deadline = started + seconds
            while time.monotonic() < deadline:
                for _ in range(4):
                    await client.send_packets(batch)
                count += 4 * BATCH
            assert client.statistics().datagrams_sent == count
            _report(count, start_cpu, started)

    _run(main, backend)


def _run(main: Any, backend: str) -> None:
    import anyio

    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)


def recv_child(kind: str, seconds: float) -> None:
    if kind.startswith("recv_packets"):
        _recv_packets(kind, seconds)
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind((LOOPBACK, 0))
    if kind == "stdlib GRO":
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    print(sock.getsockname()[1], flush=True)
    count = 0
    sock.settimeout(seconds + 5)
    data = sock.recv(65536) if kind != "stdlib GRO" else sock.recvmsg(65536, 64)[0]
    count = 1 if kind != "stdlib GRO" else -(-len(data) // SIZE)
    start_cpu = cpu_times()
    started = time.monotonic()
    sock.settimeout(IDLE_S)
    try:
        if kind == "stdlib GRO":
            while True:
                data, ancillary, _, _ = sock.recvmsg(65536, 64)
                segment = SIZE
                for level, kind_, value in ancillary:
                    if level == SOL_UDP and kind_ == UDP_GRO:
                        segment = int.from_bytes(value[:4], sys.byteorder)
                count += -(-len(data) // segment)
        else:
            while True:
                sock.recv(65536)
                count += 1
    except TimeoutError:
        pass
    _report(count, start_cpu, started)


def _recv_packets(kind: str, seconds: float) -> None:
    import anyio

    import anydgram
    from anydgram import _gro

    backend = kind.split()[1]
    if kind.endswith("no GRO"):
        _gro.enable_gro = lambda core: False  # type: ignore[assignment]

    async def main() -> None:
        async with await anydgram.open_udp_endpoint(
            LOOPBACK, 0, recv_buffer_size=1 << 22
        ) as endpoint:
            print(endpoint.local_address[1], flush=True)  # type: ignore[index]
            with anyio.fail_after(seconds + 5):
                count = len(await endpoint.recv_packets())
            start_cpu = cpu_times()
            started = time.monotonic()
            while True:
                with anyio.move_on_after(IDLE_S):
                    count += len(await endpoint.recv_packets())
                    continue
                break
            assert endpoint.statistics().datagrams_received == count
            _report(count, start_cpu, started)

    _run(main, backend)


# -- the driver ---------------------------------------------------------------------------------


def measure(row: Row, seconds: float) -> dict[str, Any]:
    """Run one sender and one receiver; both reports, ``{"send": ..., "recv": ...}``."""
    me = str(Path(__file__).resolve())
    receiver = subprocess.Popen(
        [sys.executable, me, "--child=recv", f"--kind={row.receiver}", f"--seconds={seconds}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        sender = subprocess.run(
            [
                sys.executable,
                me,
                "--child=send",
                f"--kind={row.sender}",
                f"--port={port}",
                f"--seconds={seconds}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
        out, _ = receiver.communicate(timeout=seconds + 30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return {"send": json.loads(sender.stdout.splitlines()[-1]), "recv": json.loads(out)}


def rate(result: dict[str, Any], side: str) -> float:
    """Datagrams per second of the ``side``'s CPU (received datagrams for both sides' rows)."""
    part = result[side]
    return float(part["datagrams"]) / part["cpu_s"] if part["cpu_s"] > 0 else float("nan")


def report(
    rows: Sequence[Row], results: dict[Row, list[dict[str, Any]]]
) -> tuple[str, dict[str, Any]]:
    out: dict[str, Any] = {"rows": []}
    send_table = []
    recv_table = []
    for row in rows:
        rounds = results[row]
        if row.measured == "send":
            baseline = SEND_BASELINES["gro" if "GRO" in row.receiver else "plain"]
        else:
            baseline = RECV_BASELINE
        side = row.measured
        mine = [rate(r, side) for r in rounds]
        ratios = Summary.of(paired_ratios(mine, [rate(r, side) for r in results[baseline]]))
        cpu_us = Summary.of([1e6 / v for v in mine])
        sent = Summary.of([float(r["send"]["datagrams"]) for r in rounds])
        got = Summary.of([float(r["recv"]["datagrams"]) / r["send"]["datagrams"] for r in rounds])
        cells = [
            row.sender if side == "send" else row.receiver,
            row.receiver if side == "send" else row.sender,
            cpu_us.format(".2f", " us"),
            ratios.format(".2f", "x"),
            f"{sent.median / 1e3:.0f}k",
            f"{got.median:.0%}",
        ]
        (send_table if side == "send" else recv_table).append(cells)
        out["rows"].append(
            {
                "sender": row.sender,
                "receiver": row.receiver,
                "measured": side,
                "ratio_median": ratios.median,
                "cpu_us_median": cpu_us.median,
                "rounds": rounds,
            }
        )
    headers = ["sender", "receiver", "sender CPU per datagram", "x raw sendto", "sent", "received"]
    text = "### Bulk send, 1,200 B (datagrams per second of sender CPU)\n\n"
    text += markdown_table(headers, send_table)
    headers = [
        "receiver",
        "sender",
        "receiver CPU per datagram",
        "x raw recvfrom",
        "sent",
        "received",
    ]
    text += "\n\n### Bulk receive, 1,200 B (datagrams per second of receiver CPU)\n\n"
    text += markdown_table(headers, recv_table)
    return text, out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=("send", "recv"))
    parser.add_argument("--kind", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="one round, asyncio only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.child == "send":
        pin_to_cpu(CLIENT_CPU)
        send_child(args.kind, args.port, args.seconds)
        return
    if args.child == "recv":
        pin_to_cpu(SERVER_CPU)
        recv_child(args.kind, args.seconds)
        return
    backends = ["asyncio"] if args.quick else args.backends.split(",")
    rounds = 1 if args.quick else args.rounds
    rows = all_rows(backends)
    results = run_interleaved(
        rows, rounds, lambda row: measure(row, args.seconds), label=lambda r: r.label
    )
    text, data = report(rows, results)
    print(text)
    if args.json:
        write_json(args.json, data)


if __name__ == "__main__":
    main()
