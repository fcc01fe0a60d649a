"""Bulk telemetry: a sender that batches fixed-size samples, and a collector that counts them.

Shows :meth:`~anydgram.DatagramClient.send_packets` and
:meth:`~anydgram.DatagramEndpoint.recv_packets`: the sender hands the library a batch of
samples at a time, and on Linux they leave with UDP GSO (one system call for a run of equal-size
datagrams) or ``sendmmsg``; the collector takes every waiting datagram in one call, with
``UDP_GRO`` where the kernel offers it. Each sample is one datagram of ``--size`` bytes: a
sequence number, a timestamp and a sensor id, padded (telemetry records are often this
regular, which is what GSO wants)::

    python examples/bulk_telemetry.py receive --port 9999 &
    python examples/bulk_telemetry.py send --to 127.0.0.1:9999 --count 200000

The collector prints one JSON line when the samples stop for ``--idle`` seconds: how many it
got, how many sequence numbers it never saw (lost, or still to come) and the endpoint's
counters, including ``kernel_drops`` (datagrams its receive buffer had no room for) and whether
the socket had ``UDP_GRO``. The sender prints its own line: samples sent, seconds, and the rate.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import anyio

import anydgram
from anydgram.serializers import BytesSerializer

BACKENDS = ("asyncio", "uvloop", "trio")

#: A sample's header: sequence number, send time (seconds since the epoch), sensor id.
HEADER: Final = struct.Struct("!QdI")
#: Samples per send_packets call.
BATCH: Final = 64
SOL_UDP: Final = 17
UDP_GRO: Final = 104


def make_sample(sequence: int, sensor: int, size: int) -> bytes:
    """One sample of ``size`` bytes (the header, then zero padding)."""
    return HEADER.pack(sequence, time.time(), sensor).ljust(size, b"\0")


def read_sample(data: bytes) -> tuple[int, float, int]:
    """``(sequence, timestamp, sensor)`` of a sample.

    Raises:
        ValueError: The datagram is shorter than a header.
    """
    if len(data) < HEADER.size:
        raise ValueError(f"a sample has at least {HEADER.size} bytes, got {len(data)}")
    sequence, timestamp, sensor = HEADER.unpack_from(data)
    return sequence, timestamp, sensor


async def send(host: str, port: int, count: int, size: int, sensor: int) -> dict[str, Any]:
    """Send ``count`` samples in batches; what was sent and how fast."""
    protocol = anydgram.DatagramProtocol(BytesSerializer(), max_datagram_size=max(size, 1))
    async with await anydgram.connect_udp(host, port, protocol=protocol) as client:
        started = time.monotonic()
        for first in range(0, count, BATCH):
            batch = [make_sample(n, sensor, size) for n in range(first, min(first + BATCH, count))]
            await client.send_packets(batch)
        elapsed = time.monotonic() - started
        stats = client.statistics()
    return {
        "sent": stats.datagrams_sent,
        "bytes": stats.bytes_sent,
        "send_errors": stats.send_errors,
        "seconds": round(elapsed, 3),
        "per_second": round(stats.datagrams_sent / elapsed) if elapsed > 0 else None,
    }


async def receive(
    host: str, port: int, idle: float, limit: int | None, *, announce: bool = True
) -> dict[str, Any]:
    """Collect samples until none came for ``idle`` seconds (or ``limit`` arrived)."""
    async with await anydgram.open_udp_endpoint(host, port, recv_buffer_size=1 << 22) as endpoint:
        if announce:
            address = endpoint.local_address
            assert isinstance(address, tuple)
            print(f"listening on {address[0]}:{address[1]}", flush=True)
        seen: set[int] = set()
        received = malformed = 0
        highest = -1
        while limit is None or received < limit:
            batch: list[tuple[bytes, Any]] = []
            with anyio.move_on_after(idle if received or malformed else None):
                batch = await endpoint.recv_packets()
            if not batch:
                break
            for data, _ in batch:
                try:
                    sequence, _, _ = read_sample(data)
                except ValueError:
                    malformed += 1
                    continue
                received += 1
                seen.add(sequence)
                highest = max(highest, sequence)
        stats = endpoint.statistics()
        gro = (
            bool(endpoint.socket.getsockopt(SOL_UDP, UDP_GRO)) if sys.platform == "linux" else False
        )
    return {
        "received": received,
        "distinct": len(seen),
        "missing": highest + 1 - len(seen),
        "malformed": malformed,
        "datagrams_received": stats.datagrams_received,
        "kernel_drops": stats.kernel_drops,
        "gro": gro,
    }


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Send or collect bulk telemetry samples.")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    commands = parser.add_subparsers(dest="command", required=True)
    sender = commands.add_parser("send", help="send samples in batches")
    sender.add_argument("--to", type=parse_address, required=True, metavar="HOST:PORT")
    sender.add_argument("--count", type=int, default=100_000)
    sender.add_argument("--size", type=int, default=1200, help="bytes per sample (>= 20)")
    sender.add_argument("--sensor", type=int, default=1)
    collector = commands.add_parser("receive", help="collect samples and report")
    collector.add_argument("--host", default="127.0.0.1")
    collector.add_argument("--port", type=int, default=9999)
    collector.add_argument("--idle", type=float, default=1.0, help="stop after this quiet time")
    collector.add_argument("--count", type=int, default=None, help="stop after this many")
    args = parser.parse_args(argv)
    if args.command == "send" and not HEADER.size <= args.size <= anydgram.MAX_UDP_PAYLOAD:
        parser.error(f"--size must be between {HEADER.size} and {anydgram.MAX_UDP_PAYLOAD}")

    async def run() -> dict[str, Any]:
        if args.command == "send":
            host, port = args.to
            return await send(host, port, args.count, args.size, args.sensor)
        return await receive(args.host, args.port, args.idle, args.count)

    if args.backend == "uvloop":
        result = anyio.run(run, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        result = anyio.run(run, backend=args.backend)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
