"""DatagramServer's argument checks (``_server_args.py``)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Any

import pytest

from anydgram import (
    DatagramServer,
)
from server_harness import BytesRequest, echo, peers, request_reply, serving

pytestmark = pytest.mark.anyio


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        DatagramServer(1, 0, echo)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty"):
        DatagramServer([], 0, echo)
    with pytest.raises(ValueError, match="port"):
        DatagramServer("127.0.0.1", 70000, echo)
    with pytest.raises(TypeError, match="handler"):
        DatagramServer("127.0.0.1", 0, None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_concurrent_handlers"):
        DatagramServer("127.0.0.1", 0, echo, max_concurrent_handlers=0)
    with pytest.raises(TypeError, match="max_concurrent_handlers"):
        DatagramServer("127.0.0.1", 0, echo, max_concurrent_handlers=1.5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="recv_buffer_size"):
        DatagramServer("127.0.0.1", 0, echo, recv_buffer_size=0)
    with pytest.raises(TypeError, match="logger"):
        DatagramServer("127.0.0.1", 0, echo, logger="x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="log_budget"):
        DatagramServer("127.0.0.1", 0, echo, log_budget=5)  # type: ignore[call-overload]


def test_a_handler_that_is_not_async_is_refused() -> None:
    def plain(request: BytesRequest) -> None:
        del request

    def returns_a_coroutine(request: BytesRequest) -> Awaitable[None]:
        return echo(request)

    not_async: list[Any] = [plain, functools.partial(plain), object, returns_a_coroutine]
    for handler in not_async:
        with pytest.raises(TypeError, match="handler must be an async function"):
            DatagramServer("127.0.0.1", 0, handler)
        with pytest.raises(TypeError, match="parse_error_handler must be an async function"):
            DatagramServer("127.0.0.1", 0, echo, parse_error_handler=handler)


class _AsyncCallable:
    async def __call__(self, request: BytesRequest) -> None:
        await request.respond(b"object:" + request.packet)


async def _tagged(tag: bytes, request: BytesRequest) -> None:
    await request.respond(tag + request.packet)


@pytest.mark.parametrize(
    ("handler", "tag"),
    [
        (_AsyncCallable(), b"object:"),
        (functools.partial(_tagged, b"partial:"), b"partial:"),
        (functools.partial(functools.partial(_AsyncCallable())), b"object:"),
    ],
    ids=["async-call", "partial", "partial-of-async-call"],
)
async def test_async_callables_are_accepted_as_handlers(handler: Any, tag: bytes) -> None:
    server = DatagramServer("127.0.0.1", 0, handler)
    async with serving(server) as addresses, peers() as (peer,):
        assert await request_reply(peer, b"x", addresses[0]) == tag + b"x"


async def test_grace_period_is_checked() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    with pytest.raises(ValueError, match="grace_period"):
        await server.shutdown(-1)
    with pytest.raises(ValueError, match="grace_period"):
        await server.shutdown(float("nan"))
