"""An echo client for threaded programs: one blocking client shared by a pool of threads.

Shows :class:`~anydgram.SyncDatagramClient`, which needs no event loop, and its
:meth:`~anydgram.SyncDatagramClient.request`: send, wait for the reply, re-send after a
timeout, give up after a few attempts. Several threads call ``request()`` on the *same* client
at once; each received datagram goes to the oldest pending call whose ``match`` accepts it, so
every thread gets its own echo back whatever order the echoes arrive in, and a late duplicate
is dropped (and counted in ``statistics().unmatched_replies``) instead of being taken for the
next reply.

::

    python examples/echo_server.py --port 9999 &
    python examples/echo_client_threads.py --port 9999 --threads 4 one two three four five

The exit status is 1 if any message got no echo.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from anydgram import SyncDatagramClient


def echo_one(
    client: SyncDatagramClient[bytes, bytes], message: str, *, timeout: float
) -> tuple[bool, str]:
    """Send ``message`` (re-sending up to twice): ``(True, echo)`` or ``(False, why not)``."""
    data = message.encode()
    try:
        reply = client.request(data, timeout=timeout, attempts=3, match=lambda r: r == data)
    except TimeoutError:
        return False, "no echo after 3 attempts"
    except ConnectionRefusedError:
        return False, "connection refused (is the server running?)"
    return True, reply.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and echo the messages from a pool of threads; the exit status."""
    parser = argparse.ArgumentParser(description="Echo messages from several threads at once.")
    parser.add_argument("messages", nargs="*", help="messages to send (default: message-0..7)")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="the server's port (9999)")
    parser.add_argument("--threads", type=int, default=4, help="threads sharing the client (4)")
    parser.add_argument(
        "--timeout", type=float, default=0.5, help="seconds the first attempt waits (0.5)"
    )
    args = parser.parse_args(argv)
    messages: list[str] = args.messages or [f"message-{i}" for i in range(8)]

    with (
        SyncDatagramClient(args.host, args.port) as client,
        ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool,
    ):
        results = list(pool.map(partial(echo_one, client, timeout=args.timeout), messages))
        for message, (_, result) in zip(messages, results, strict=True):
            print(f"{message} -> {result}", flush=True)
        stats = client.statistics()
    print(
        f"sent {stats.datagrams_sent} datagrams, received {stats.datagrams_received}, "
        f"unmatched {stats.unmatched_replies}",
        flush=True,
    )
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
