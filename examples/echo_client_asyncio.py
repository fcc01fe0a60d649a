"""An echo client written as plain asyncio code: anydgram needs no anyio in your program.

Shows :func:`~anydgram.connect_udp` and a :class:`~anydgram.DatagramClient` used from a
program that only knows asyncio: ``asyncio.run()`` (or uvloop's event loop with
``--backend uvloop``), a time limit from ``asyncio.timeout()`` around ``recv_packet()``, and
``asyncio.to_thread()`` to read standard input without blocking the loop. A timed-out receive
loses nothing: an echo that arrives later is simply the next one read.

Each message (the arguments, or else each line of standard input) is sent as one datagram and
its echo printed::

    python examples/echo_server.py --port 9999 &
    python examples/echo_client_asyncio.py --port 9999 hello "hello world"

The exit status is 1 if any echo did not come back in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

from anydgram import connect_udp


async def messages(args: Sequence[str]) -> AsyncIterator[str]:
    """The command-line messages, or the lines of standard input read in a worker thread."""
    if args:
        for message in args:
            yield message
        return
    while line := await asyncio.to_thread(sys.stdin.readline):
        yield line.rstrip("\n")


async def echo(host: str, port: int, args: Sequence[str], timeout: float) -> int:
    """Send each message and print its echo; the number of echoes that did not come back."""
    missing = 0
    async with await connect_udp(host, port) as client:
        async for message in messages(args):
            await client.send_packet(message.encode())
            try:
                async with asyncio.timeout(timeout):
                    reply = await client.recv_packet()
            except TimeoutError:
                print(f"no echo within {timeout} s", flush=True)
                missing += 1
            else:
                print(reply.decode(errors="replace"), flush=True)
    return missing


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the client on asyncio; the exit status."""
    parser = argparse.ArgumentParser(description="Echo messages through a UDP echo server.")
    parser.add_argument("messages", nargs="*", help="messages to send (default: stdin lines)")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="the server's port (9999)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait per echo")
    parser.add_argument("--backend", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)

    try:
        if args.backend == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                missing = runner.run(echo(args.host, args.port, args.messages, args.timeout))
        else:
            missing = asyncio.run(echo(args.host, args.port, args.messages, args.timeout))
    except ConnectionRefusedError:
        # A connected UDP socket learns from ICMP that nothing listens on the port.
        print(f"{args.host}:{args.port}: connection refused (is the server running?)")
        return 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
