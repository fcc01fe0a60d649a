"""A UDP echo server: a :class:`~anydgram.DatagramServer` that sends every datagram back.

Shows the smallest useful server: an ``async def handler(request)`` that replies with
``await request.respond(...)``, served with ``await tg.start(server.serve_forever)`` (which
hands back the bound addresses) and stopped gracefully on SIGINT or SIGTERM with
``await server.shutdown(...)``. The same code runs on asyncio, uvloop or trio (``--backend``).

``--workers N`` serves from N processes sharing the port with ``SO_REUSEPORT``
(``server.run(workers=N)``); ``--tag-pid`` prefixes each reply with the answering process's
id, so a client can see which process (or which server behind a load balancer) answered.

Run it, then talk to it with any UDP client::

    python examples/echo_server.py --port 9999
    socat - UDP:127.0.0.1:9999
    python examples/echo_client_asyncio.py --port 9999 hello
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from anydgram import DatagramRequest, DatagramServer

BACKENDS = ("asyncio", "uvloop", "trio")


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Handler = Callable[[DatagramRequest[bytes, bytes]], Awaitable[None]]


def make_handler(*, tag_pid: bool) -> Handler:
    """The request handler: echo the datagram, optionally prefixed with ``"<pid> "``."""

    async def echo(request: DatagramRequest[bytes, bytes]) -> None:
        await request.respond(request.packet)

    async def echo_with_pid(request: DatagramRequest[bytes, bytes]) -> None:
        # Read at call time: with --workers each forked process has its own id.
        await request.respond(b"%d %s" % (os.getpid(), request.packet))

    return echo_with_pid if tag_pid else echo


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    # Listen for the signals before binding, so one sent as soon as the address is printed
    # is not missed.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", file=sys.stderr)
                # Handlers already running get a second to finish; then serve_forever returns.
                await server.shutdown(grace_period=1.0)
                break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description="A UDP echo server built on DatagramServer.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=9999, help="port to bind; 0 picks a free one (9999)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve from this many processes sharing the port (SO_REUSEPORT)",
    )
    parser.add_argument(
        "--tag-pid", action="store_true", help="prefix every reply with the server's process id"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.port == 0:
        # run() would pick the port, but tells nobody which: a client could not find it.
        parser.error("--workers > 1 needs an explicit --port")
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s: %(message)s")

    server = DatagramServer(args.host, args.port, make_handler(tag_pid=args.tag_pid))
    if args.workers > 1:
        # Blocking: a supervisor of N worker processes until SIGINT or SIGTERM. The server
        # logs (to stderr) "N worker processes (pids ...) serving on ..." once all are bound.
        server.run(backend=args.backend, workers=args.workers)
        return
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(serve, server, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
