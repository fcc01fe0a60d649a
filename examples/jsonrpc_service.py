"""A JSON-RPC 2.0 service over UDP: one request (or batch) per datagram, one reply datagram.

Shows a :class:`~anydgram.DatagramServer` with the JSON protocol
(``DatagramProtocol(JSONSerializer())``): the handler gets decoded JSON values and replies with
Python objects. Undecodable datagrams go to a ``parse_error_handler`` that answers with
JSON-RPC's "Parse error" (-32700), as the specification asks, instead of being dropped. The
rest of the specification is here too: batches (at most 32 calls), notifications (no ``id``:
no reply), and the standard errors (-32600 invalid request, -32601 method not found, -32602
invalid params, -32603 internal error).

UDP loses datagrams, so clients re-send (see ``jsonrpc_client.py``, which uses
``request()``). Re-sending is harmless for a method like ``add``, but not for
``counter.increment``: executed twice, it would count twice. The service therefore remembers
its recent replies by sender and ``id`` (at most 1,024, for 30 seconds) and answers a repeated
request from that memory without running the method again.

Methods: ``add(a, b)``, ``subtract(minuend, subtrahend)`` (by position or by name),
``echo(...)`` (returns its params) and ``counter.increment(by=1)`` (returns the new value)::

    python examples/jsonrpc_service.py --port 4000 &
    python examples/jsonrpc_client.py --port 4000 call add "[2, 3]"
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, cast

import anyio

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
    DatagramTooLargeError,
)
from anydgram.serializers import JSONSerializer

BACKENDS = ("asyncio", "uvloop", "trio")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603,
)  # fmt: skip
MAX_BATCH: Final = 32
REPLY_CACHE_SIZE: Final = 1024
REPLY_CACHE_TTL: Final = 30.0


class InvalidParams(Exception):
    """A method's params are not what it takes (-32602)."""


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParams(f"{name} must be a number")
    return value


def as_array(value: Any) -> list[object] | None:
    """``value`` if it is a JSON array, else ``None``."""
    return cast("list[object]", value) if isinstance(value, list) else None


def as_object(value: Any) -> dict[str, Any] | None:
    """``value`` if it is a JSON object, else ``None``."""
    return cast("dict[str, Any]", value) if isinstance(value, dict) else None


def _arguments(params: Any, names: tuple[str, ...]) -> list[Any]:
    """Positional (an array) or named (an object) params, exactly ``names``."""
    if (items := as_array(params)) is not None and len(items) == len(names):
        return items
    if (named := as_object(params)) is not None and sorted(named) == sorted(names):
        return [named[name] for name in names]
    raise InvalidParams(f"expected params {', '.join(names)}, by position or by name")


class Service:
    """The methods, and the bookkeeping around calling them."""

    def __init__(self) -> None:
        self.counter = 0
        self.methods: dict[str, Callable[[Any], Any]] = {
            "add": self.add,
            "subtract": self.subtract,
            "echo": self.echo,
            "counter.increment": self.increment,
        }
        #: (sender, id as JSON) -> (expiry time, reply): repeated requests are answered from
        #: here, so a client's re-send never runs a method twice.
        self._replies: OrderedDict[tuple[Any, str], tuple[float, dict[str, Any]]] = OrderedDict()

    def add(self, params: Any) -> float:
        """``a + b``."""
        a, b = _arguments(params, ("a", "b"))
        return _number(a, "a") + _number(b, "b")

    def subtract(self, params: Any) -> float:
        """``minuend - subtrahend``."""
        minuend, subtrahend = _arguments(params, ("minuend", "subtrahend"))
        return _number(minuend, "minuend") - _number(subtrahend, "subtrahend")

    def echo(self, params: Any) -> Any:
        """The params, unchanged."""
        return params

    def increment(self, params: Any) -> int:
        """Add ``by`` (default 1) to the counter; the new value. Not idempotent."""
        by = _arguments(params, ("by",))[0] if params else 1
        if isinstance(by, bool) or not isinstance(by, int) or not 0 < by <= 1000:
            raise InvalidParams("by must be an integer from 1 to 1000")
        self.counter += by
        return self.counter

    # -- dispatch ------------------------------------------------------------------------------

    def handle_untrusted(self, message: Any, sender: Any) -> Any:
        """The reply to one decoded datagram (a call or a batch); ``None`` for no reply."""
        if (calls := as_array(message)) is not None:
            if not calls:
                return error(None, INVALID_REQUEST, "empty batch")
            if len(calls) > MAX_BATCH:
                return error(None, INVALID_REQUEST, f"batch larger than {MAX_BATCH}")
            replies = [r for r in (self.call(c, sender) for c in calls) if r is not None]
            return replies or None  # a batch of notifications gets no reply at all
        return self.call(message, sender)

    def call(self, message: Any, sender: Any) -> dict[str, Any] | None:
        """The reply to one call object; ``None`` for a notification."""
        call = as_object(message)
        if call is None:
            return error(None, INVALID_REQUEST, "a call must be an object")
        call_id = call.get("id")
        if isinstance(call_id, bool) or not isinstance(call_id, str | int | float | None):
            return error(None, INVALID_REQUEST, "id must be a string, a number or null")
        method = call.get("method")
        params = call.get("params")
        if call.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return error(call_id, INVALID_REQUEST, 'needs "jsonrpc": "2.0" and a "method"')
        if params is not None and not isinstance(params, list | dict):
            return error(call_id, INVALID_PARAMS, "params must be an array or an object")
        notification = "id" not in call
        key = (sender, json.dumps(call_id))
        if not notification and (cached := self._cached_reply(key)) is not None:
            return cached
        function = self.methods.get(method)
        if function is None:
            reply = error(call_id, METHOD_NOT_FOUND, f"no method {method[:64]!r}")
        else:
            try:
                reply = {"jsonrpc": "2.0", "result": function(params), "id": call_id}
            except InvalidParams as exc:
                reply = error(call_id, INVALID_PARAMS, str(exc))
            except Exception as exc:  # a bug in a method: the caller gets -32603, we go on
                reply = error(call_id, INTERNAL_ERROR, type(exc).__name__)
        if notification:
            return None
        self._remember(key, reply)
        return reply

    def _cached_reply(self, key: tuple[Any, str]) -> dict[str, Any] | None:
        entry = self._replies.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def _remember(self, key: tuple[Any, str], reply: dict[str, Any]) -> None:
        now = time.monotonic()
        self._replies[key] = (now + REPLY_CACHE_TTL, reply)
        self._replies.move_to_end(key)
        # Oldest first: drop the expired entries and whatever exceeds the bound.
        while self._replies:
            expiry, _ = next(iter(self._replies.values()))
            if expiry >= now and len(self._replies) <= REPLY_CACHE_SIZE:
                break
            self._replies.popitem(last=False)


def error(call_id: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": call_id}


# -- the server --------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_server(host: str, port: int, service: Service) -> DatagramServer[Any, Any]:
    """The server: JSON in, JSON out; parse errors answered with -32700."""

    async def handler(request: DatagramRequest[Any, Any]) -> None:
        reply = service.handle_untrusted(request.packet, request.address)
        if reply is None:
            return
        try:
            await request.respond(reply)
        except DatagramTooLargeError:
            await request.respond(error(None, INTERNAL_ERROR, "the reply is too large"))

    async def on_parse_error(request: DatagramRequest[Any, DatagramProtocolParseError]) -> None:
        await request.respond(error(None, PARSE_ERROR, "Parse error"))

    return DatagramServer(
        host,
        port,
        handler,
        protocol=DatagramProtocol(JSONSerializer()),
        parse_error_handler=on_parse_error,
    )


async def serve(server: DatagramServer[Any, Any]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(description="A JSON-RPC 2.0 service over UDP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=4000, help="port to bind; 0 picks a free one (4000)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, Service())
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(serve, server, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
