r"""A DTLS echo server: :class:`~anydgram.DatagramServer` with ``dtls=``, handlers unchanged.

The handler is the plain echo handler: it sees decrypted packets and ``respond()``
encrypts. Peers get a session only after the stateless cookie exchange, sessions are bounded
and expire when idle, and SIGINT or SIGTERM shuts down with a close_notify to every client.
``--cafile`` asks clients for certificates signed by that CA (``--require-client-cert``
refuses those without one). Needs the ``dtls`` extra: ``pip install 'anydgram[dtls]'``.

Make a certificate and run it, then talk to it with OpenSSL or the example client::

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout server.key -out server.crt
    python examples/dtls_echo_server.py --cert server.crt --key server.key --port 4433
    openssl s_client -dtls1_2 -connect 127.0.0.1:4433 -CAfile server.crt
    python examples/dtls_echo_client.py --cafile server.crt --port 4433 hello
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import anyio

from anydgram import DatagramRequest, DatagramServer
from anydgram.dtls import DTLSServerConfig, server_context

BACKENDS = ("asyncio", "uvloop", "trio")


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def echo(request: DatagramRequest[bytes, bytes]) -> None:
    """Send the (decrypted) packet back; the server encrypts it for the peer's session."""
    await request.respond(request.packet)


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down", file=sys.stderr)
                await server.shutdown(grace_period=1.0)  # then close_notify to each session
                break
    stats = server.statistics()
    print(
        f"{stats.dtls_handshakes} handshakes, {stats.dtls_handshake_failures} failed, "
        f"{stats.dtls_records_dropped} records dropped",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description="A DTLS echo server built on DatagramServer.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=4433, help="port to bind; 0 picks one")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--cert", required=True, help="PEM certificate chain of the server")
    parser.add_argument("--key", required=True, help="PEM private key of the server")
    parser.add_argument("--cafile", help="ask clients for certificates signed by this CA")
    parser.add_argument(
        "--require-client-cert", action="store_true", help="refuse clients without one"
    )
    parser.add_argument("--max-sessions", type=int, default=4096, help="session table size")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="seconds (60)")
    args = parser.parse_args(argv)
    if args.require_client_cert and not args.cafile:
        parser.error("--require-client-cert needs --cafile")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    context = server_context(
        args.cert,
        args.key,
        cafile=args.cafile,
        require_client_certificate=args.require_client_cert,
    )
    config = DTLSServerConfig(
        context, max_sessions=args.max_sessions, idle_timeout=args.idle_timeout
    )
    server = DatagramServer(args.host, args.port, echo, dtls=config)
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(serve, server, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
