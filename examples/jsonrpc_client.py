"""A JSON-RPC 2.0 client over UDP: ``request()`` with retries, replies matched by ``id``.

Shows :meth:`~anydgram.DatagramClient.request` doing the work of a UDP RPC client: each call
gets a fresh ``id``, is re-sent when no reply comes within the timeout (waiting longer each
time), and accepts only the reply that carries its own ``id``::

    reply = await client.request(message, match=lambda r: r.get("id") == call_id)

(written below with a check that the reply is an object at all, since a peer may send any JSON
value). That
``match`` is also what lets many calls share one socket at once: every reply goes to the
pending call whose ``id`` it carries, whatever order the replies arrive in, and a late
duplicate (the answer to a re-sent request) is dropped and counted instead of being taken for
another call's reply. ``demo`` shows it with many concurrent calls.

::

    python examples/jsonrpc_service.py --port 4000 &
    python examples/jsonrpc_client.py --port 4000 call add "[2, 3]"
    python examples/jsonrpc_client.py --port 4000 call subtract '{"minuend": 5, "subtrahend": 8}'
    python examples/jsonrpc_client.py --port 4000 demo --calls 50

``call`` prints the result as JSON (exit status 0), or the error (exit status 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from typing import Any, cast

import anyio

from anydgram import DatagramClient, DatagramProtocol, connect_udp
from anydgram.serializers import JSONSerializer

BACKENDS = ("asyncio", "uvloop", "trio")


def as_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a peer may send any JSON value)."""
    return cast("dict[str, Any]", value) if isinstance(value, dict) else {}


class RPCError(Exception):
    """The service answered a call with a JSON-RPC error object."""

    def __init__(self, code: Any, message: Any, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class JSONRPCClient:
    """Calls methods of one JSON-RPC service over a connected UDP client."""

    def __init__(
        self, client: DatagramClient[Any, Any], *, timeout: float = 0.5, attempts: int = 4
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._attempts = attempts
        # Start somewhere random: a service that remembers replies by sender and id must not
        # mistake a new client that happens to get the same port for an old one.
        self._ids = itertools.count(random.randrange(1, 2**31))

    async def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """Call ``method`` and return its result.

        Raises:
            RPCError: The service answered with an error.
            TimeoutError: No answer after every attempt.
        """
        call_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": call_id}
        if params is not None:
            message["params"] = params
        reply = await self._client.request(
            message,
            timeout=self._timeout,
            attempts=self._attempts,
            match=lambda r: as_object(r).get("id") == call_id,
        )
        if "error" in reply:
            problem = as_object(reply["error"])
            raise RPCError(problem.get("code"), problem.get("message"), problem.get("data"))
        return reply.get("result")

    async def notify(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> None:
        """Send a notification: no ``id``, no reply, no retry (so it may be lost)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._client.send_packet(message)


async def run_call(rpc: JSONRPCClient, method: str, params: Any) -> int:
    """``call``: print the result as JSON; the exit status."""
    try:
        result = await rpc.call(method, params)
    except RPCError as exc:
        print(f"error {exc}", flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


async def run_demo(rpc: JSONRPCClient, client: DatagramClient[Any, Any], calls: int) -> int:
    """``demo``: ``add(i, i)`` for ``i`` in ``range(calls)``, all at once; the exit status."""
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await rpc.call("add", [i, i])
        except (RPCError, TimeoutError) as exc:
            results[i] = exc  # counted as a wrong answer below

    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
    wrong = [i for i in range(calls) if results.get(i) != 2 * i]
    stats = client.statistics()
    print(
        f"{calls} concurrent calls, {calls - len(wrong)} right answers; "
        f"{stats.datagrams_sent} datagrams sent, {stats.datagrams_received} received, "
        f"{stats.unmatched_replies} unmatched",
        flush=True,
    )
    return 1 if wrong else 0


async def run(args: argparse.Namespace) -> int:
    """Connect and run the command; the exit status."""
    protocol = DatagramProtocol(JSONSerializer())
    async with await connect_udp(args.host, args.port, protocol=protocol) as client:
        rpc = JSONRPCClient(client, timeout=args.timeout, attempts=args.attempts)
        if args.command == "call":
            return await run_call(rpc, args.method, args.params)
        return await run_demo(rpc, client, args.calls)


def json_params(text: str) -> Any:
    """The ``call`` params argument: a JSON array or object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list | dict):
        raise argparse.ArgumentTypeError("params must be a JSON array or object")
    return cast("Any", value)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; the exit status."""
    parser = argparse.ArgumentParser(description="Call a JSON-RPC 2.0 service over UDP.")
    parser.add_argument("--host", default="127.0.0.1", help="the service's address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=4000, help="the service's port (4000)")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--timeout", type=float, default=0.5, help="seconds the first attempt waits (0.5)"
    )
    parser.add_argument("--attempts", type=int, default=4, help="sends per call (4)")
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", help="call one method and print its result")
    call.add_argument("method")
    call.add_argument(
        "params", nargs="?", type=json_params, help='a JSON array or object, e.g. "[2, 3]"'
    )
    demo = commands.add_parser("demo", help="many concurrent calls on one socket")
    demo.add_argument("--calls", type=int, default=20, help="how many calls (20)")
    args = parser.parse_args(argv)

    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    try:
        return anyio.run(run, args, backend=backend, backend_options=options)
    except TimeoutError:
        print(f"no answer after {args.attempts} attempts", flush=True)
    except ConnectionRefusedError:
        print(f"{args.host}:{args.port}: connection refused (is the service running?)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
