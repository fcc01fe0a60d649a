"""The recipes of docs/embedding.md, tested: a UDP server inside a web application or a nursery.

Each recipe here is the one the page shows, with port 0 instead of a fixed port so that tests
never collide. FastAPI runs under Starlette's ``TestClient`` (which runs the lifespan) on every
backend; aiohttp runs its own test server on loopback, on asyncio only (aiohttp needs asyncio).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest

from anydgram import DatagramRequest, DatagramServer, connect_udp
from endpoint_harness import port_is_free

fastapi = pytest.importorskip("fastapi")
aiohttp_web = pytest.importorskip("aiohttp.web")

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient as AiohttpTestClient  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402


async def echo(request: DatagramRequest[bytes, bytes]) -> None:
    await request.respond(request.packet)


def udp_exchange(address: Any, data: bytes) -> bytes:
    """One request and its reply over a blocking socket (the test's side, not the app's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(data, address[:2])
        return sock.recv(65536)


# -- FastAPI (and Starlette): the lifespan ---------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[dict[str, Any]]:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with server.serving(grace_period=5.0):
        yield {"udp_server": server}  # request.state.udp_server in the routes


fastapi_app = FastAPI(lifespan=lifespan)


@fastapi_app.get("/udp")
async def udp_status(request: Request) -> dict[str, Any]:
    server: DatagramServer[bytes, bytes] = request.state.udp_server
    stats = server.statistics()
    return {
        "port": server.addresses[0][1],
        "received": stats.datagrams_received,
        "sent": stats.datagrams_sent,
    }


_TESTCLIENT_BACKENDS: list[Any] = [
    pytest.param("asyncio", {"use_uvloop": False}, id="asyncio"),
    pytest.param("asyncio", {"use_uvloop": True}, id="uvloop", marks=[]),
    pytest.param("trio", {}, id="trio"),
]
if sys.platform == "win32":
    del _TESTCLIENT_BACKENDS[1]


@pytest.mark.parametrize(("backend", "options"), _TESTCLIENT_BACKENDS)
def test_fastapi_lifespan_serves_udp_while_the_app_runs(
    backend: Literal["asyncio", "trio"], options: dict[str, Any]
) -> None:
    with TestClient(fastapi_app, backend=backend, backend_options=options) as client:
        status = client.get("/udp").json()
        port = status["port"]
        assert status["received"] == 0
        assert udp_exchange(("127.0.0.1", port), b"hello") == b"hello"
        assert udp_exchange(("127.0.0.1", port), b"again") == b"again"
        assert client.get("/udp").json() == {"port": port, "received": 2, "sent": 2}
    assert port_is_free(port)  # the lifespan ended: the server shut down


def test_fastapi_lifespan_fails_to_start_with_a_plain_oserror() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        @asynccontextmanager
        async def taken_lifespan(app: FastAPI) -> AsyncGenerator[None]:
            async with DatagramServer("127.0.0.1", port, echo).serving():
                yield

        app = FastAPI(lifespan=taken_lifespan)
        with pytest.raises(OSError, match="Address already in use"), TestClient(app):
            pass


# -- aiohttp: cleanup_ctx ----------------------------------------------------------------------

UDP_SERVER = web.AppKey[DatagramServer[bytes, bytes]]("udp_server")


async def udp_server_ctx(app: web.Application) -> AsyncIterator[None]:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with server.serving(grace_period=5.0):
        app[UDP_SERVER] = server
        yield


async def aiohttp_udp_status(request: web.Request) -> web.Response:
    server = request.app[UDP_SERVER]
    stats = server.statistics()
    return web.json_response(
        {
            "port": server.addresses[0][1],
            "received": stats.datagrams_received,
            "sent": stats.datagrams_sent,
        }
    )


def make_aiohttp_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(udp_server_ctx)
    app.router.add_get("/udp", aiohttp_udp_status)
    return app


async def test_aiohttp_cleanup_ctx_serves_udp_while_the_app_runs(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    if anyio_backend[0] != "asyncio":
        pytest.skip("aiohttp runs on asyncio only")
    client = AiohttpTestClient(TestServer(make_aiohttp_app(), host="127.0.0.1"))
    await client.start_server()  # runs the startup half of cleanup_ctx
    try:
        response = await client.get("/udp")
        status = await response.json()
        port = status["port"]
        async with await connect_udp("127.0.0.1", port) as udp:
            with anyio.fail_after(5):
                assert await udp.request(b"hello") == b"hello"
        response = await client.get("/udp")
        assert await response.json() == {"port": port, "received": 1, "sent": 1}
    finally:
        await client.close()  # runs the cleanup half: the server shuts down
    assert port_is_free(port)


# -- trio: a nursery ---------------------------------------------------------------------------


async def trio_recipe() -> list[bytes]:
    import trio

    replies: list[bytes] = []

    async def ask(port: int) -> None:
        async with await connect_udp("127.0.0.1", port) as client:
            for word in (b"one", b"two"):
                with trio.fail_after(5):
                    replies.append(await client.request(word))

    server = DatagramServer("127.0.0.1", 0, echo)
    # The server outside the nursery: it shuts down once every task in the nursery is done.
    async with server.serving() as addresses, trio.open_nursery() as nursery:
        nursery.start_soon(ask, addresses[0][1])
        # ... the rest of the application starts here, next to the server ...
    return replies


async def test_trio_nursery_recipe(anyio_backend: tuple[str, dict[str, Any]]) -> None:
    if anyio_backend[0] != "trio":
        pytest.skip("the recipe is written for trio")
    assert await trio_recipe() == [b"one", b"two"]
