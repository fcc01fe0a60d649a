"""A typed UDP service: msgspec decodes and validates every request into a tagged union.

Shows typed handlers end to end. ``DatagramServer[Reply, Request]`` with a
:class:`~anydgram.serializers.MsgspecSerializer` over a tagged union of
:class:`msgspec.Struct` types: the handler's ``request.packet`` is a ``Request`` (the type
checkers know it too), a ``match`` statement picks the message type by its tag, and a datagram
that does not fit the union (an unknown ``"type"``, a missing field, a string where a number
belongs) never reaches the handler: the server counts it in ``parse_errors`` and logs the
field at fault. Needs the ``msgspec`` extra (``pip install 'anydgram[msgspec]'``).

Run it, then talk JSON to it::

    python examples/typed_service.py --port 9999
    echo '{"type":"add","a":2,"b":3}' | socat - UDP:127.0.0.1:9999
    echo '{"type":"echo","text":"hi"}' | socat - UDP:127.0.0.1:9999
    echo '{"type":"add","a":"two","b":3}' | socat - UDP:127.0.0.1:9999   # no reply; logged
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import anyio
import msgspec

from anydgram import DatagramProtocol, DatagramRequest, DatagramServer
from anydgram.serializers import MsgspecSerializer


class Add(msgspec.Struct, tag="add"):
    """Add two integers."""

    a: int
    b: int


class Echo(msgspec.Struct, tag="echo"):
    """Send ``text`` back, ``times`` times."""

    text: str
    times: int = 1


class Sum(msgspec.Struct, tag="sum"):
    """The reply to :class:`Add`."""

    value: int


class Echoed(msgspec.Struct, tag="echoed"):
    """The reply to :class:`Echo`."""

    text: str


# The "type" field of the JSON object says which Struct it is (msgspec's default tag field).
Request = Add | Echo
Reply = Sum | Echoed


def make_server(host: str, port: int) -> DatagramServer[Reply, Request]:
    """The server: requests decode into ``Request``; replies are any Struct msgspec encodes."""
    # A union is not a class, so the variable's annotation gives the type parameter.
    serializer: MsgspecSerializer[Request] = MsgspecSerializer(Request)
    return DatagramServer(host, port, handle, protocol=DatagramProtocol(serializer))


async def handle(request: DatagramRequest[Reply, Request]) -> None:
    """Answer one request; its type is checked already."""
    match request.packet:
        case Add(a=a, b=b):
            await request.respond(Sum(a + b))
        case Echo(text=text, times=times):
            await request.respond(Echoed(text * max(0, min(times, 100))))


async def serve(server: DatagramServer[Reply, Request]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            host, port = addresses[0][:2]
            print(f"listening on {host}:{port}", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", file=sys.stderr)
                await server.shutdown(grace_period=1.0)
                break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description="A typed JSON service built on msgspec.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="port; 0 picks a free one")
    args = parser.parse_args(argv)
    # To stdout, beside the replies one is debugging; a service would log to stderr.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s")
    anyio.run(serve, make_server(args.host, args.port))


if __name__ == "__main__":
    main()
