"""An echo client written as plain trio code: anydgram needs no anyio in your program.

Shows :func:`~anydgram.connect_udp` and a :class:`~anydgram.DatagramClient` used from a trio
program: ``trio.run()``, a time limit from ``trio.move_on_after()`` around ``recv_packet()``
(anydgram's waits are ordinary trio checkpoints, so trio's cancel scopes just work), and
``trio.to_thread.run_sync()`` to read standard input. A cancelled receive loses nothing: an
echo that arrives later is simply the next one read.

Each message (the arguments, or else each line of standard input) is sent as one datagram and
its echo printed::

    python examples/echo_server.py --port 9999 --backend trio &
    python examples/echo_client_trio.py --port 9999 hello "hello world"

The exit status is 1 if any echo did not come back in time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from anydgram import connect_udp


async def messages(args: Sequence[str]) -> AsyncIterator[str]:
    """The command-line messages, or the lines of standard input read in a worker thread."""
    if args:
        for message in args:
            yield message
        return
    while line := await trio.to_thread.run_sync(sys.stdin.readline):
        yield line.rstrip("\n")


async def echo(host: str, port: int, args: Sequence[str], timeout: float) -> int:
    """Send each message and print its echo; the number of echoes that did not come back."""
    missing = 0
    async with await connect_udp(host, port) as client:
        async for message in messages(args):
            await client.send_packet(message.encode())
            reply = None
            with trio.move_on_after(timeout):
                reply = await client.recv_packet()
            if reply is None:
                print(f"no echo within {timeout} s", flush=True)
                missing += 1
            else:
                print(reply.decode(errors="replace"), flush=True)
    return missing


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the client on trio; the exit status."""
    parser = argparse.ArgumentParser(description="Echo messages through a UDP echo server.")
    parser.add_argument("messages", nargs="*", help="messages to send (default: stdin lines)")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="the server's port (9999)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait per echo")
    args = parser.parse_args(argv)
    try:
        missing = trio.run(echo, args.host, args.port, args.messages, args.timeout)
    except ConnectionRefusedError:
        # A connected UDP socket learns from ICMP that nothing listens on the port.
        print(f"{args.host}:{args.port}: connection refused (is the server running?)")
        return 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
