"""A UDP pinger and the lossy server it pings: round-trip times and loss over an unreliable path.

The classic networking exercise: a server upper-cases what it receives but ignores 30% of the
requests, and a client sends numbered pings, waits a limited time for each reply, and reports
the loss and round-trip statistics as ``ping`` does (min/avg/max/mdev).

Shows:

- ``serve``: a :class:`~anydgram.DatagramServer` whose handler drops a share of the requests
  on purpose (``--loss``), from a seeded random generator so runs can be repeated (``--seed``);
- ``ping``: :meth:`~anydgram.DatagramClient.request` with a timeout per attempt. With
  ``--attempts 1`` (the default) a lost request is a lost ping, as in the exercise; with more,
  ``request()`` re-sends, and the loss seen drops to ``loss ** attempts`` while the round-trip
  times of the pings that needed a retry grow by the time the earlier attempts waited. Each
  ping carries its sequence number and ``match`` checks it, so a late reply to an earlier ping
  is never taken for the current one.

::

    python examples/pinger.py serve --port 12000 --loss 0.3 &
    python examples/pinger.py ping --port 12000 --count 10
    python examples/pinger.py ping --port 12000 --count 10 --attempts 4
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
from typing import Any

import anyio

from anydgram import DatagramClient, DatagramRequest, DatagramServer, connect_udp

BACKENDS = ("asyncio", "uvloop", "trio")


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the lossy server --------------------------------------------------------------------------


class LossyUpperCaser:
    """The handler: answers with the request upper-cased, except a share ``loss`` of them."""

    def __init__(self, loss: float, seed: int | None) -> None:
        self.loss = loss
        self.rng = random.Random(seed)
        self.answered = 0
        self.dropped = 0

    async def __call__(self, request: DatagramRequest[bytes, bytes]) -> None:
        """Handle one request."""
        if self.rng.random() < self.loss:
            self.dropped += 1  # pretend the request was lost on the way
            return
        self.answered += 1
        await request.respond(request.packet.upper())


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


# -- the pinger --------------------------------------------------------------------------------


class RoundTrips:
    """Replies and round-trip times (milliseconds) of one run, summarized as ``ping`` does."""

    def __init__(self) -> None:
        self.sent = 0
        self.rtts: list[float] = []

    def summary(self) -> list[str]:
        """The closing lines: loss, then min/avg/max/mdev (when anything came back)."""
        received = len(self.rtts)
        loss = (self.sent - received) * 100 / self.sent if self.sent else 0.0
        lines = [f"{self.sent} requests sent, {received} replies received, {loss:.1f}% loss"]
        if received:
            avg = sum(self.rtts) / received
            # The population standard deviation, as ping's mdev.
            mdev = math.sqrt(max(0.0, sum(r * r for r in self.rtts) / received - avg * avg))
            lines.append(
                f"rtt min/avg/max/mdev = {min(self.rtts):.3f}/{avg:.3f}/"
                f"{max(self.rtts):.3f}/{mdev:.3f} ms"
            )
        return lines


async def ping_once(
    client: DatagramClient[bytes, bytes], seq: int, *, timeout: float, attempts: int
) -> float | str:
    """One ping: its round-trip time in milliseconds, or why there was no reply."""
    expected = b"PING %d" % seq
    # Not anyio.current_time(): uvloop's clock ticks in whole milliseconds.
    start = time.perf_counter()
    try:
        await client.request(
            b"ping %d" % seq,
            timeout=timeout,
            attempts=attempts,
            match=lambda reply: reply == expected,  # not a late reply to an earlier ping
        )
    except TimeoutError:
        return "request timed out"
    except ConnectionRefusedError:
        return "connection refused (is the server running?)"
    return (time.perf_counter() - start) * 1000


async def ping(
    host: str, port: int, *, count: int, interval: float, timeout: float, attempts: int
) -> RoundTrips:
    """Ping ``count`` times, printing a line per ping; the round trips."""
    trips = RoundTrips()
    async with await connect_udp(host, port) as client:
        target = format_address(client.remote_address)
        for seq in range(count):
            if seq and interval > 0:
                await anyio.sleep(interval)
            trips.sent += 1
            result = await ping_once(client, seq, timeout=timeout, attempts=attempts)
            if isinstance(result, str):
                print(f"seq={seq}: {result}", flush=True)
                continue
            trips.rtts.append(result)
            print(f"reply from {target}: seq={seq} time={result:.3f} ms", flush=True)
        datagrams = client.statistics().datagrams_sent
    print(f"--- {target} ping statistics ({datagrams} datagrams sent) ---", flush=True)
    for line in trips.summary():
        print(line, flush=True)
    return trips


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve or ping; the exit status."""
    parser = argparse.ArgumentParser(description="Ping a UDP server that drops requests.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="the server's address (127.0.0.1)")
    common.add_argument(
        "--port", type=int, default=12000, help="the server's port; 0 (serve) picks a free one"
    )
    common.add_argument("--backend", choices=BACKENDS, default="asyncio")

    serve_cmd = commands.add_parser("serve", parents=[common], help="run the lossy server")
    serve_cmd.add_argument(
        "--loss", type=float, default=0.3, help="share of requests to ignore (0.3)"
    )
    serve_cmd.add_argument("--seed", type=int, default=None, help="seed for --loss")

    ping_cmd = commands.add_parser("ping", parents=[common], help="ping the server")
    ping_cmd.add_argument("--count", type=int, default=10, help="pings to send (10)")
    ping_cmd.add_argument("--interval", type=float, default=0.5, help="seconds between pings (0.5)")
    ping_cmd.add_argument(
        "--timeout", type=float, default=1.0, help="seconds an attempt waits (1.0)"
    )
    ping_cmd.add_argument(
        "--attempts", type=int, default=1, help="sends per ping before giving up (1)"
    )
    args = parser.parse_args(argv)

    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    if args.command == "serve":
        if not 0.0 <= args.loss <= 1.0:
            parser.error("--loss must be between 0 and 1")
        handler = LossyUpperCaser(args.loss, args.seed)
        server = DatagramServer(args.host, args.port, handler)
        anyio.run(serve, server, backend=backend, backend_options=options)
        print(f"answered {handler.answered}, dropped {handler.dropped}", flush=True)
        return 0
    if args.count < 1 or args.attempts < 1 or args.timeout <= 0 or args.interval < 0:
        parser.error("--count and --attempts must be >= 1, --timeout > 0, --interval >= 0")
    trips = anyio.run(
        lambda: ping(
            args.host,
            args.port,
            count=args.count,
            interval=args.interval,
            timeout=args.timeout,
            attempts=args.attempts,
        ),
        backend=backend,
        backend_options=options,
    )
    return 0 if trips.rtts else 1


if __name__ == "__main__":
    sys.exit(main())
