"""A latency probe built on receive metadata: where the time of a round trip goes.

A reflector answers each probe with what the kernel said about it (its receive timestamp, TTL
and TOS byte); the prober sends numbered probes and, from the kernel timestamps at both ends,
splits each round trip into

- ``rtt``: the probe's send to the kernel's receipt of its reply (no event loop in it);
- ``wakeup``: the kernel's receipt of the reply to the program seeing it (scheduling, the
  event loop: what a timestamp taken in user space would add);
- ``out`` and ``back``: each direction, from the reflector's kernel timestamp (meaningful when
  both clocks agree: on one host, or with synchronized clocks), and ``hold``, the reflector's
  own time from its kernel's receipt of the probe to its reply;
- what the path did to the probe: the TTL it arrived with and its TOS byte (DSCP and ECN), as
  the reflector saw them (``--tos`` sets the byte the prober sends).

Shows:

- ``reflect``: a :class:`~anydgram.DatagramServer` with ``receive_metadata=True`` reading
  :attr:`~anydgram.DatagramRequest.metadata` in its handler;
- ``probe``: :func:`~anydgram.connect_udp` with ``receive_metadata=True`` and ``tos=``, and
  :meth:`~anydgram.DatagramClient.recv_packet_with_metadata` under a timeout.

::

    python examples/latency_probe.py reflect --port 12001 &
    python examples/latency_probe.py probe --port 12001 --count 10 --tos 0xb8
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import struct
import sys
import time
from typing import Any

import anyio

from anydgram import DatagramClient, DatagramRequest, DatagramServer, connect_udp

BACKENDS = ("asyncio", "uvloop", "trio")

#: A probe: its sequence number and when the prober sent it (``time.time()``).
PROBE = struct.Struct("!Id")
#: A reply: the probe's fields, then the reflector's kernel receive time (NaN if unknown), the
#: TTL and TOS byte the probe arrived with (-1 if unknown), and when the reply left.
REPLY = struct.Struct("!Iddhhd")


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the reflector -----------------------------------------------------------------------------


async def reflect(request: DatagramRequest[bytes, bytes]) -> bytes | None:
    """Answer a probe with what the kernel reported about it (other datagrams are ignored)."""
    if len(request.packet) != PROBE.size:
        return None
    seq, sent = PROBE.unpack(request.packet)
    metadata = request.metadata
    assert metadata is not None  # the server asks for it
    received = math.nan if metadata.timestamp is None else metadata.timestamp
    ttl = -1 if metadata.ttl is None else metadata.ttl
    tos = -1 if metadata.tos is None else metadata.tos
    return REPLY.pack(seq, sent, received, ttl, tos, time.time())


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


# -- the prober --------------------------------------------------------------------------------


def milliseconds(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds * 1000:.3f}"


async def probe_once(
    client: DatagramClient[bytes, bytes], seq: int, timeout: float
) -> dict[str, float] | None:
    """One probe and its reply, as durations in seconds (NaN where a clock was missing)."""
    sent = time.time()
    await client.send_packet(PROBE.pack(seq, sent))
    with anyio.move_on_after(timeout):
        while True:
            reply, metadata = await client.recv_packet_with_metadata()
            seen = time.time()
            if len(reply) != REPLY.size:
                continue
            got_seq, _, reflected, ttl, tos, left = REPLY.unpack(reply)
            if got_seq != seq:
                continue  # a late reply to an earlier probe
            arrived = math.nan if metadata.timestamp is None else metadata.timestamp
            return {
                "rtt": arrived - sent,
                "wakeup": seen - arrived,
                "out": reflected - sent,
                "back": arrived - left,
                "hold": left - reflected,
                "ttl": float(ttl),
                "tos": float(tos),
            }
    return None


async def probe(
    host: str, port: int, *, count: int, interval: float, timeout: float, tos: int
) -> int:
    """Probe ``count`` times, a line per probe and a summary; how many replies came back."""
    results: list[dict[str, float]] = []
    async with await connect_udp(host, port, receive_metadata=True, tos=tos) as client:
        target = format_address(client.remote_address)
        for seq in range(count):
            if seq and interval > 0:
                await anyio.sleep(interval)
            try:
                result = await probe_once(client, seq, timeout)
            except ConnectionRefusedError:
                print(f"seq={seq}: connection refused (is the reflector running?)", flush=True)
                continue
            if result is None:
                print(f"seq={seq}: no reply within {timeout:g} s", flush=True)
                continue
            results.append(result)
            tos_byte = int(result["tos"])
            print(
                f"seq={seq} rtt={milliseconds(result['rtt'])} ms "
                f"wakeup={milliseconds(result['wakeup'])} ms "
                f"out={milliseconds(result['out'])} ms hold={milliseconds(result['hold'])} ms "
                f"back={milliseconds(result['back'])} ms "
                f"ttl={int(result['ttl'])} tos=0x{tos_byte & 0xFF:02x} ecn={tos_byte & 3}",
                flush=True,
            )
    print(f"--- {target}: {count} probes, {len(results)} replies ---", flush=True)
    for name in ("rtt", "wakeup", "out", "hold", "back"):
        values = [r[name] for r in results if not math.isnan(r[name])]
        if values:
            print(
                f"{name} min/median/max = {milliseconds(min(values))}/"
                f"{milliseconds(statistics.median(values))}/{milliseconds(max(values))} ms",
                flush=True,
            )
    return len(results)


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and reflect or probe; the exit status."""
    parser = argparse.ArgumentParser(description="Measure UDP latency with kernel timestamps.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="the reflector's address")
    common.add_argument(
        "--port", type=int, default=12001, help="the reflector's port; 0 (reflect) picks one"
    )
    common.add_argument("--backend", choices=BACKENDS, default="asyncio")
    commands.add_parser("reflect", parents=[common], help="answer probes")
    probe_cmd = commands.add_parser("probe", parents=[common], help="send probes")
    probe_cmd.add_argument("--count", type=int, default=10, help="probes to send (10)")
    probe_cmd.add_argument("--interval", type=float, default=0.2, help="seconds between (0.2)")
    probe_cmd.add_argument("--timeout", type=float, default=1.0, help="seconds per reply (1.0)")
    probe_cmd.add_argument(
        "--tos", type=lambda text: int(text, 0), default=0, help="TOS byte to send (0)"
    )
    args = parser.parse_args(argv)

    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    if args.command == "reflect":
        server = DatagramServer(args.host, args.port, reflect, receive_metadata=True)
        anyio.run(serve, server, backend=backend, backend_options=options)
        return 0
    if args.count < 1 or args.timeout <= 0 or args.interval < 0 or not 0 <= args.tos <= 255:
        parser.error("--count must be >= 1, --timeout > 0, --interval >= 0, --tos a byte")
    replies = anyio.run(
        lambda: probe(
            args.host,
            args.port,
            count=args.count,
            interval=args.interval,
            timeout=args.timeout,
            tos=args.tos,
        ),
        backend=backend,
        backend_options=options,
    )
    return 0 if replies else 1


if __name__ == "__main__":
    sys.exit(main())
