"""Instructions per echoed datagram (server) or round trip (client), counted by valgrind.

Timings on a shared two-core machine drift by 15% between runs, more than a refactor that
must cost nothing can be held to. Instruction counts do not: callgrind counts what the process
executes, whatever else the machine is doing. One process runs the bytes-echo server and a
client on the same loop; each round the client writes ``--burst`` datagrams into the server's
socket before the server wakes, then reads every reply, so each round takes the same path.

    $ python benchmarks/instructions.py --backend trio            # one run, timed
    $ python benchmarks/instructions.py --callgrind --trees /work/base .

With ``--callgrind`` the script runs itself under ``valgrind --tool=callgrind`` twice per
tree and backend (``--rounds`` and twice as many) and reports the difference divided by the
extra datagrams: the per-datagram count, free of start-up and shutdown. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
BACKENDS = ("asyncio", "uvloop", "trio")


async def _echo_rounds(rounds: int, burst: int, size: int) -> None:
    import anyio

    import anydgram

    async def handler(request: anydgram.DatagramRequest[Any, Any]) -> None:
        await request.respond(request.packet)

    server = anydgram.DatagramServer(LOOPBACK, 0, handler, recv_buffer_size=1 << 20)
    payload = b"x" * size
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        port = addresses[0][1]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        client.bind((LOOPBACK, 0))
        client.setblocking(False)
        target = (LOOPBACK, port)
        with client, anyio.fail_after(60):
            for _ in range(rounds):
                for _ in range(burst):
                    client.sendto(payload, target)
                for _ in range(burst):
                    while True:
                        try:
                            reply = client.recv(65536)
                        except BlockingIOError:
                            await anyio.wait_readable(client)
                        else:
                            break
                    if reply != payload:
                        raise SystemExit(f"wrong reply: {reply[:32]!r}")
        tg.cancel_scope.cancel()


async def _client_rounds(rounds: int, burst: int, size: int) -> None:
    import anyio

    import anydgram

    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((LOOPBACK, 0))
    peer.setblocking(False)
    payload = b"x" * size

    async def echo() -> None:
        while True:
            await anyio.wait_readable(peer)
            data, sender = peer.recvfrom(65536)
            peer.sendto(data, sender)

    with peer:
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo)
            async with await anydgram.connect_udp(*peer.getsockname()) as client:
                with anyio.fail_after(60):
                    for _ in range(rounds * burst):
                        await client.send_packet(payload)
                        if await client.recv_packet() != payload:
                            raise SystemExit("wrong reply")
            tg.cancel_scope.cancel()


def _run_once(backend: str, side: str, rounds: int, burst: int, size: int) -> None:
    import anyio

    rounds_of = _echo_rounds if side == "server" else _client_rounds
    name, options = ("asyncio", {"use_uvloop": True}) if backend == "uvloop" else (backend, {})
    anyio.run(rounds_of, rounds, burst, size, backend=name, backend_options=options)


def _instructions(tree: Path, backend: str, side: str, rounds: int, burst: int, size: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve() / "src"), PYTHONHASHSEED="0")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--backend",
        backend,
        "--side",
        side,
        "--rounds",
        str(rounds),
        "--burst",
        str(burst),
        "--size",
        str(size),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{tree} {backend}: exit {done.returncode}\n{done.stderr[-2000:]}")
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def _per_datagram(tree: Path, backend: str, side: str, rounds: int, burst: int, size: int) -> float:
    # A first run outside valgrind writes the tree's bytecode caches, which would otherwise be
    # counted in whichever measured run came first.
    env = dict(os.environ, PYTHONPATH=str(tree.resolve() / "src"), PYTHONHASHSEED="0")
    warm = [sys.executable, __file__, "--backend", backend, "--side", side, "--rounds", "1"]
    subprocess.run(warm, env=env, capture_output=True, check=True, timeout=300)
    short = _instructions(tree, backend, side, rounds, burst, size)
    long = _instructions(tree, backend, side, 2 * rounds, burst, size)
    return (long - short) / (rounds * burst)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="with --callgrind")
    parser.add_argument(
        "--side",
        choices=("server", "client"),
        default="server",
        help="server: DatagramServer echoing bursts; client: connect_udp round trips",
    )
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--callgrind", action="store_true", help="count instructions per tree")
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    args = parser.parse_args()
    if not 1 <= args.burst <= 256 or args.rounds < 1:
        parser.error("--burst must be 1..256 and --rounds at least 1")
    if not args.callgrind:
        started = time.perf_counter()
        _run_once(args.backend, args.side, args.rounds, args.burst, args.size)
        seconds = time.perf_counter() - started
        print(f"{args.rounds * args.burst} datagrams echoed in {seconds:.2f} s")
        return
    backends = args.backends.split(",")
    unit = f"datagram, bursts of {args.burst}" if args.side == "server" else "round trip"
    print(f"{args.side}: instructions per {unit} ({args.size} B)")
    print("backend   " + "".join(f"{tree!s:>16}" for tree in args.trees))
    for backend in backends:
        counts = [
            _per_datagram(tree, backend, args.side, args.rounds, args.burst, args.size)
            for tree in args.trees
        ]
        ratios = "".join(f"  x{count / counts[0]:.3f}" for count in counts[1:])
        print(f"{backend:<10}" + "".join(f"{count:>16,.0f}" for count in counts) + ratios)


if __name__ == "__main__":
    main()
