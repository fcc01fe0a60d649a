"""DTLS cost: handshakes per second and encrypted echo, against plain UDP and trio's DTLS.

Each row runs in a fresh child process (pinned to CPU 0) that holds both ends on one event
loop: a server and ``--window`` clients doing ping-pong round trips, so the CPU per round trip
covers one encryption and one decryption at each end. Rows:

- ``anydgram DTLS``: ``DatagramServer(dtls=...)`` and ``connect_dtls`` clients;
- ``anydgram UDP``: the same server and clients without ``dtls=``, the baseline;
- ``trio DTLSEndpoint`` (trio only): ``DTLSEndpoint.serve`` echoing on each channel, and
  ``DTLSEndpoint.connect`` clients.

Handshakes per second are measured the same way: one client connecting, handshaking (cookie
exchange included) and closing, back to back. Rows are interleaved over ``--rounds`` rounds;
the tables show the median with its min-max range, and ratios of paired rounds.

Run from the repository root: ``python benchmarks/dtls_echo.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    CLIENT_CPU,
    LOOPBACK,
    Summary,
    cpu_times,
    environment,
    markdown_table,
    paired_ratios,
    pin_to_cpu,
    run_child,
    run_interleaved,
    write_json,
)

BACKENDS = ("asyncio", "uvloop", "trio")
ECHO_IMPLS = ("anydgram DTLS", "anydgram UDP", "trio DTLSEndpoint")
HANDSHAKE_IMPLS = ("anydgram DTLS", "trio DTLSEndpoint")
#: A round trip slower than this counts as lost (and the client sends again).
_LOST_AFTER = 1.0


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for ``localhost``/127.0.0.1, made now (none committed)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "bench.crt", directory / "bench.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


# -- the measured child ------------------------------------------------------------------------


async def measure_loop(
    step: Callable[[int], Awaitable[None]], window: int, warmup: float, seconds: float
) -> dict[str, float]:
    """Run ``step(i)`` back to back in ``window`` tasks; operations per second and CPU each."""
    import anyio

    counts = [0] * window
    state = {"stop": 0.0}

    async def worker(index: int) -> None:
        while time.perf_counter() < state["stop"]:
            await step(index)
            counts[index] += 1

    state["stop"] = time.perf_counter() + warmup
    async with anyio.create_task_group() as tasks:
        for index in range(window):
            tasks.start_soon(worker, index)
    counts[:] = [0] * window
    started, cpu_before = time.perf_counter(), cpu_times()
    state["stop"] = started + seconds
    async with anyio.create_task_group() as tasks:
        for index in range(window):
            tasks.start_soon(worker, index)
    wall = time.perf_counter() - started
    cpu = (cpu_times() - cpu_before).total
    done = sum(counts)
    return {"per_s": done / wall, "cpu_us": cpu / done * 1e6 if done else float("nan")}


async def anydgram_child(kind: str, impl: str, size: int, window: int, timing: Any) -> Any:
    import anyio

    import anydgram
    from anydgram.dtls import client_context, connect_dtls, server_context

    certfile, keyfile = timing.cert
    dtls = impl == "anydgram DTLS"

    async def echo(request: anydgram.DatagramRequest[bytes, bytes]) -> None:
        await request.respond(request.packet)

    context = server_context(certfile, keyfile) if dtls else None
    server = anydgram.DatagramServer(LOOPBACK, 0, echo, dtls=context)
    async with server.serving(grace_period=0) as addresses:
        port = addresses[0][1]

        async def connect() -> anydgram.DatagramClient[bytes, bytes]:
            if dtls:
                return await connect_dtls(LOOPBACK, port, client_context(cafile=certfile))
            return await anydgram.connect_udp(LOOPBACK, port)

        if kind == "handshake":

            async def handshake(index: int) -> None:
                client = await connect()
                await client.aclose()

            return await measure_loop(handshake, 1, timing.warmup, timing.seconds)
        clients = [await connect() for _ in range(window)]
        payload = b"x" * size

        async def round_trip(index: int) -> None:
            client = clients[index]
            await client.send_packet(payload)
            with anyio.move_on_after(_LOST_AFTER):
                await client.recv_packet()

        try:
            return await measure_loop(round_trip, window, timing.warmup, timing.seconds)
        finally:
            for client in clients:
                await client.aclose()


async def trio_child(kind: str, size: int, window: int, timing: Any) -> Any:
    import trio
    from OpenSSL import SSL

    certfile, keyfile = timing.cert
    server_ctx = SSL.Context(SSL.DTLS_METHOD)
    server_ctx.use_certificate_chain_file(str(certfile))
    server_ctx.use_privatekey_file(str(keyfile))

    def client_ctx() -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_verify(SSL.VERIFY_PEER)
        ctx.load_verify_locations(str(certfile))
        return ctx

    async def echo(channel: trio.DTLSChannel) -> None:
        while True:
            await channel.send(await channel.receive())

    def endpoint() -> trio.DTLSEndpoint:
        return trio.DTLSEndpoint(trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM))

    async with trio.open_nursery() as nursery:
        server = endpoint()
        await server.socket.bind((LOOPBACK, 0))
        address = server.socket.getsockname()
        await nursery.start(server.serve, server_ctx, echo)
        if kind == "handshake":

            async def handshake(index: int) -> None:
                with endpoint() as client_endpoint:
                    channel = client_endpoint.connect(address, client_ctx())
                    await channel.do_handshake()
                    channel.close()

            result = await measure_loop(handshake, 1, timing.warmup, timing.seconds)
        else:
            endpoints = [endpoint() for _ in range(window)]
            channels = [e.connect(address, client_ctx()) for e in endpoints]
            for channel in channels:
                await channel.do_handshake()
            payload = b"x" * size

            async def round_trip(index: int) -> None:
                channel = channels[index]
                await channel.send(payload)
                with trio.move_on_after(_LOST_AFTER):
                    await channel.receive()

            result = await measure_loop(round_trip, window, timing.warmup, timing.seconds)
            for e in endpoints:
                e.close()
        nursery.cancel_scope.cancel()
        server.close()
    return result


def child(args: argparse.Namespace) -> None:
    import anyio

    pin_to_cpu(CLIENT_CPU)
    with tempfile.TemporaryDirectory() as directory:
        args.cert = make_certificate(Path(directory))
        backend = "asyncio" if args.backend == "uvloop" else args.backend
        options = {"use_uvloop": True} if args.backend == "uvloop" else {}
        if args.impl == "trio DTLSEndpoint":
            result = anyio.run(trio_child, args.kind, args.size, args.window, args, backend="trio")
        else:
            result = anyio.run(
                anydgram_child,
                args.kind,
                args.impl,
                args.size,
                args.window,
                args,
                backend=backend,
                backend_options=options,
            )
    print(json.dumps(result))


# -- the driver --------------------------------------------------------------------------------


def rows_for(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    rows: list[tuple[str, str, str, int]] = []
    for backend in BACKENDS:
        for impl in HANDSHAKE_IMPLS:
            if impl.startswith("trio") and backend != "trio":
                continue
            rows.append(("handshake", backend, impl, 0))
    for size in args.sizes:
        for backend in BACKENDS:
            for impl in ECHO_IMPLS:
                if impl.startswith("trio") and backend != "trio":
                    continue
                rows.append(("echo", backend, impl, size))
    return rows


def run_row(args: argparse.Namespace, row: tuple[str, str, str, int]) -> dict[str, float]:
    kind, backend, impl, size = row
    argv = [__file__, "--child", kind, "--backend", backend, "--impl", impl]
    argv += [f"--size={size}", f"--window={args.window}"]
    argv += [f"--seconds={args.seconds}", f"--warmup={args.warmup}"]
    try:
        return run_child(argv, timeout=args.seconds + args.warmup + 60)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return {"per_s": float("nan"), "cpu_us": float("nan")}


def tables(results: dict[tuple[str, str, str, int], list[dict[str, float]]], args: Any) -> str:
    def rates(row: tuple[str, str, str, int]) -> list[float]:
        return [r["per_s"] for r in results.get(row, [])]

    def cpus(row: tuple[str, str, str, int]) -> list[float]:
        return [r["cpu_us"] for r in results.get(row, [])]

    handshake_rows = []
    for row in results:
        kind, backend, impl, _ = row
        if kind == "handshake":
            handshake_rows.append(
                [
                    backend,
                    impl,
                    Summary.of(rates(row)).format(".0f"),
                    Summary.of(cpus(row)).format(".0f"),
                ]
            )
    echo_rows = []
    for row in results:
        kind, backend, impl, size = row
        if kind != "echo":
            continue
        plain = ("echo", backend, "anydgram UDP", size)
        vs_plain = Summary.of(paired_ratios(rates(row), rates(plain))).format(".2f", "x")
        trio_row = ("echo", "trio", "trio DTLSEndpoint", size)
        vs_trio = (
            Summary.of(paired_ratios(rates(row), rates(trio_row))).format(".2f", "x")
            if backend == "trio" and impl == "anydgram DTLS"
            else ""
        )
        echo_rows.append(
            [
                f"{size} B",
                backend,
                impl,
                Summary.of(rates(row)).format(".0f"),
                Summary.of(cpus(row)).format(".1f"),
                vs_plain,
                vs_trio,
            ]
        )
    return "\n".join(
        [
            "### DTLS",
            "",
            f"Both ends in one process pinned to one CPU; {args.rounds} round(s) of "
            f"{args.seconds:g} s, median (min-max). Echo: {args.window} clients, one round trip "
            "in flight each; CPU is the process's per round trip (both ends).",
            "",
            markdown_table(
                ["backend", "implementation", "handshakes/s", "CPU µs each"], handshake_rows
            ),
            "",
            markdown_table(
                [
                    "size",
                    "backend",
                    "implementation",
                    "round trips/s",
                    "CPU µs each",
                    "vs UDP",
                    "vs trio DTLS",
                ],
                echo_rows,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--window", type=int, default=8, help="clients in the echo rows")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 1200]
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--child", choices=("echo", "handshake"), dest="kind", help=argparse.SUPPRESS
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="anydgram DTLS", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind is not None:
        child(args)
        return
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 0.5, 0.2
    rows = rows_for(args)
    results = run_interleaved(
        rows, args.rounds, lambda row: run_row(args, row), label=lambda row: " ".join(map(str, row))
    )
    print(tables(results, args))
    if args.json:
        write_json(
            args.json,
            {
                "environment": environment(),
                "rows": [
                    {"kind": k, "backend": b, "impl": i, "size": s, "rounds": results[(k, b, i, s)]}
                    for (k, b, i, s) in results
                ],
            },
        )


if __name__ == "__main__":
    main()
