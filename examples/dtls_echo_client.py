"""A DTLS echo client: :func:`anydgram.dtls.connect_dtls`, then the usual ``request()``.

Connects (the handshake is done when ``connect_dtls`` returns, or it raises
:class:`~anydgram.dtls.DTLSError` with OpenSSL's reason), sends each message (or each line
of standard input) and prints the reply. ``--cert``/``--key`` present a client certificate
for servers that ask for one. Needs the ``dtls`` extra: ``pip install 'anydgram[dtls]'``.

Against the example server (see ``dtls_echo_server.py``) or ``openssl s_server -dtls1_2``::

    python examples/dtls_echo_client.py --cafile server.crt --port 4433 hello "hello world"
"""

from __future__ import annotations

import argparse
import sys

import anyio

from anydgram.dtls import DTLSError, client_context, connect_dtls

BACKENDS = ("asyncio", "uvloop", "trio")


async def talk(args: argparse.Namespace, messages: list[str]) -> int:
    """Send every message and print its reply; the exit status."""
    context = client_context(
        cafile=args.cafile, verify=not args.insecure, certfile=args.cert, keyfile=args.key
    )
    try:
        client = await connect_dtls(
            args.host,
            args.port,
            context,
            server_hostname=args.server_hostname,
            handshake_timeout=args.timeout,
        )
    except DTLSError as exc:
        print(f"handshake failed: {exc}", file=sys.stderr)
        return 1
    async with client:
        for message in messages:
            try:
                reply = await client.request(message.encode(), timeout=args.timeout, attempts=2)
            except TimeoutError:
                print(f"no reply to {message!r}", file=sys.stderr)
                return 1
            print(reply.decode(errors="replace"), flush=True)
        cipher = client.cipher
    print(f"cipher: {cipher}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and talk to the server."""
    parser = argparse.ArgumentParser(description="A DTLS echo client built on connect_dtls.")
    parser.add_argument("messages", nargs="*", help="what to send (default: lines of stdin)")
    parser.add_argument("--host", default="127.0.0.1", help="server address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=4433, help="server port (4433)")
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--cafile", help="PEM file of the CA to trust (default: the system's)")
    parser.add_argument("--server-hostname", help="name the certificate must carry (--host)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server")
    parser.add_argument("--cert", help="PEM client certificate, for mutual authentication")
    parser.add_argument("--key", help="its private key")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per wait (5)")
    args = parser.parse_args(argv)
    messages = args.messages or [line.rstrip("\n") for line in sys.stdin]
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    return anyio.run(talk, args, messages, backend=backend, backend_options=options)


if __name__ == "__main__":
    sys.exit(main())
