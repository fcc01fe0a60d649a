"""Messages larger than one datagram: chunks, bounded reassembly, and re-sending what was lost.

Splitting a message into datagrams is the easy half. Each chunk here carries a header, so the
receiver can put the message back together whatever arrives twice, late, out of order or not
at all::

    magic "CK" | kind (1 byte) | message id (8 bytes) | index (2 bytes) | count (2 bytes)

The receiver (:class:`Reassembler`, plain code with no I/O: it takes the time as an argument)
keeps partial messages per sender and message id, ignores duplicate chunks, and bounds
everything a sender can make it hold: 1,024 chunks per message, 256 partial messages, 8 MiB of
chunk data in all (the oldest partial message is evicted first), and ``--timeout`` seconds
without progress, after which a partial message is dropped. Every drop is counted.

Reliability comes from :meth:`~anydgram.DatagramClient.request`: the sender sends every chunk
but the last, then sends the last one with ``request()``. The last chunk doubles as a question
("what is missing?"): the receiver answers ACK when the message is complete, or NACK with the
indices still missing, which the sender sends again before asking again. ``request()`` re-sends
the question itself if it or its answer is lost. ``--loss`` makes the sender skip a share of
its first sends on purpose, to watch the NACK rounds at work::

    python examples/chunking.py receive --port 7000 &
    python examples/chunking.py send --port 7000 --size 200000 --loss 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import random
import secrets
import signal
import struct
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio

from anydgram import DatagramClient, DatagramRequest, DatagramServer, connect_udp

BACKENDS = ("asyncio", "uvloop", "trio")

HEADER: Final = struct.Struct("!2sBQHH")  # magic, kind, message id, index, count
MAGIC: Final = b"CK"
CHUNK, ACK, NACK = 0, 1, 2
#: Payload bytes per chunk: with the headers, a datagram stays under a 1,280-byte MTU (the
#: IPv6 minimum), so no chunk is ever split into IP fragments.
CHUNK_SIZE: Final = 1200
MAX_CHUNKS: Final = 1024
MAX_PARTIAL: Final = 256
MAX_PENDING_BYTES: Final = 8 << 20
MAX_NACKED: Final = 256  # missing indices listed in one NACK


@dataclass
class Partial:
    """A message being reassembled."""

    count: int
    deadline: float
    chunks: dict[int, bytes] = field(default_factory=dict[int, bytes])
    size: int = 0

    def missing(self) -> list[int]:
        """The indices not received yet, at most :data:`MAX_NACKED` of them."""
        return [i for i in range(self.count) if i not in self.chunks][:MAX_NACKED]


class Reassembler:
    """Puts messages back together from untrusted chunks, within fixed bounds."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._partial: OrderedDict[tuple[Any, int], Partial] = OrderedDict()  # oldest first
        self._completed: OrderedDict[tuple[Any, int], float] = OrderedDict()  # key -> expiry
        self._pending_bytes = 0
        self.stats = {"messages": 0, "duplicates": 0, "malformed": 0, "expired": 0, "evicted": 0}

    def receive_untrusted(
        self, data: bytes, sender: Any, now: float
    ) -> tuple[bytes | None, bytes | None]:
        """Take one datagram: ``(a message it completed or None, a reply to send or None)``."""
        self._expire(now)
        if len(data) < HEADER.size or len(data) > HEADER.size + CHUNK_SIZE:
            self.stats["malformed"] += 1
            return None, None
        magic, kind, message_id, index, count = HEADER.unpack_from(data)
        if magic != MAGIC or kind != CHUNK or not 0 <= index < count <= MAX_CHUNKS:
            self.stats["malformed"] += 1
            return None, None
        key = (sender, message_id)
        poll = index == count - 1  # the last chunk asks "what is missing?"
        if key in self._completed:  # a late duplicate of a finished message
            self.stats["duplicates"] += 1
            return None, encode_reply(ACK, message_id, []) if poll else None
        partial = self._partial.get(key)
        if partial is None:
            partial = self._partial[key] = Partial(count, now + self.timeout)
        elif partial.count != count:
            self.stats["malformed"] += 1  # the same id with another count: not our sender
            return None, None
        if index in partial.chunks:
            self.stats["duplicates"] += 1
        else:
            payload = data[HEADER.size :]
            partial.chunks[index] = payload
            partial.size += len(payload)
            self._pending_bytes += len(payload)
            partial.deadline = now + self.timeout  # progress: the clock starts again
            self._partial.move_to_end(key)
            self._evict()
        if len(partial.chunks) == partial.count:
            del self._partial[key]
            self._pending_bytes -= partial.size
            self._completed[key] = now + self.timeout
            while len(self._completed) > MAX_PARTIAL * 4:
                self._completed.popitem(last=False)
            self.stats["messages"] += 1
            message = b"".join(partial.chunks[i] for i in range(partial.count))
            return message, encode_reply(ACK, message_id, [])
        return None, encode_reply(NACK, message_id, partial.missing()) if poll else None

    def _expire(self, now: float) -> None:
        # Both tables are in deadline order: partial messages move to the end on progress.
        while self._partial:
            key, partial = next(iter(self._partial.items()))
            if partial.deadline > now:
                break
            self._drop(key)
            self.stats["expired"] += 1
        while self._completed and next(iter(self._completed.values())) <= now:
            self._completed.popitem(last=False)

    def _evict(self) -> None:
        # The least recently active partial messages go first.
        while len(self._partial) > MAX_PARTIAL or self._pending_bytes > MAX_PENDING_BYTES:
            self._drop(next(iter(self._partial)))
            self.stats["evicted"] += 1

    def _drop(self, key: tuple[Any, int]) -> None:
        self._pending_bytes -= self._partial.pop(key).size


def encode_chunks(message: bytes, message_id: int) -> list[bytes]:
    """``message`` as chunk datagrams (an empty message is one empty chunk)."""
    pieces = [message[i : i + CHUNK_SIZE] for i in range(0, len(message), CHUNK_SIZE)] or [b""]
    if len(pieces) > MAX_CHUNKS:
        raise ValueError(f"message too large: at most {MAX_CHUNKS * CHUNK_SIZE} bytes")
    return [HEADER.pack(MAGIC, CHUNK, message_id, i, len(pieces)) + p for i, p in enumerate(pieces)]


def encode_reply(kind: int, message_id: int, missing: list[int]) -> bytes:
    """An ACK, or a NACK listing missing chunk indices."""
    return HEADER.pack(MAGIC, kind, message_id, 0, len(missing)) + struct.pack(
        f"!{len(missing)}H", *missing
    )


def decode_reply_untrusted(data: bytes) -> tuple[int, int, list[int]] | None:
    """``(kind, message id, missing indices)`` of a reply, or ``None`` if it is not one."""
    if len(data) < HEADER.size:
        return None
    magic, kind, message_id, _, listed = HEADER.unpack_from(data)
    if magic != MAGIC or kind not in (ACK, NACK) or len(data) != HEADER.size + 2 * listed:
        return None
    return kind, message_id, list(struct.unpack_from(f"!{listed}H", data, HEADER.size))


# -- sending -----------------------------------------------------------------------------------


async def send_message(
    client: DatagramClient[bytes, bytes],
    message: bytes,
    *,
    loss: float = 0.0,
    rng: random.Random | None = None,
    timeout: float = 0.2,
    rounds: int = 20,
) -> int:
    """Send ``message`` until the receiver acknowledges it; the number of NACK rounds.

    Raises:
        TimeoutError: The receiver stopped answering, or ``rounds`` were not enough.
    """
    rng = rng or random.Random()
    message_id = secrets.randbits(64)
    chunks = encode_chunks(message, message_id)
    to_send = list(range(len(chunks) - 1))  # all but the last: that one asks for the verdict

    def is_reply(data: bytes) -> bool:
        reply = decode_reply_untrusted(data)
        return reply is not None and reply[1] == message_id

    for round_number in range(rounds):
        for index in to_send:
            if rng.random() >= loss:  # --loss: skip some sends, to see the NACKs at work
                await client.send_packet(chunks[index])
        reply = decode_reply_untrusted(
            await client.request(chunks[-1], timeout=timeout, attempts=5, match=is_reply)
        )
        assert reply is not None  # is_reply() accepted it
        kind, _, missing = reply
        if kind == ACK:
            return round_number
        to_send = [i for i in missing if i < len(chunks) - 1]
    raise TimeoutError(f"message not complete after {rounds} rounds")


# -- command line ------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(message: bytes) -> str:
    """Size and SHA-256 of a message, to compare both ends."""
    return f"{len(message)} bytes sha256={hashlib.sha256(message).hexdigest()}"


async def receive(host: str, port: int, timeout: float) -> None:
    """Reassemble messages until SIGINT or SIGTERM, printing each one's size and hash."""
    reassembler = Reassembler(timeout)

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        message, reply = reassembler.receive_untrusted(
            request.packet, request.address, time.monotonic()
        )
        if message is not None:
            print(f"message from {format_address(request.address)}: {describe(message)}")
            print(f"stats {reassembler.stats}", flush=True)
        if reply is not None:
            await request.respond(reply)

    server = DatagramServer(host, port, handler)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


async def send(args: argparse.Namespace) -> None:
    """Send one message (a file, or ``--size`` seeded random bytes)."""
    rng = random.Random(args.seed)
    message = args.file.read_bytes() if args.file else rng.randbytes(args.size)
    async with await connect_udp(args.host, args.port) as client:
        rounds = await send_message(client, message, loss=args.loss, rng=rng)
        stats = client.statistics()
    print(
        f"sent {describe(message)} in {stats.datagrams_sent} datagrams; "
        f"acknowledged after {rounds} NACK rounds",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and send or receive; the exit status."""
    parser = argparse.ArgumentParser(description="Send messages larger than one datagram.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="receiver's address (127.0.0.1)")
    common.add_argument(
        "--port", type=int, default=7000, help="receiver's port; 0 (receive) picks a free one"
    )
    common.add_argument("--backend", choices=BACKENDS, default="asyncio")
    commands = parser.add_subparsers(dest="command", required=True)
    rx = commands.add_parser("receive", parents=[common], help="reassemble and print messages")
    rx.add_argument(
        "--timeout", type=float, default=10.0, help="seconds a partial message may stall (10)"
    )
    tx = commands.add_parser("send", parents=[common], help="send one message")
    tx.add_argument("--file", type=Path, help="send this file")
    tx.add_argument("--size", type=int, default=100_000, help="else this many random bytes")
    tx.add_argument("--loss", type=float, default=0.0, help="share of first sends to skip")
    tx.add_argument("--seed", type=int, default=None, help="seed for the bytes and --loss")
    args = parser.parse_args(argv)

    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    if args.command == "receive":
        anyio.run(
            receive, args.host, args.port, args.timeout, backend=backend, backend_options=options
        )
        return 0
    if not 0 <= args.size <= MAX_CHUNKS * CHUNK_SIZE or not 0 <= args.loss < 1:
        parser.error(f"--size must be 0..{MAX_CHUNKS * CHUNK_SIZE} and --loss in [0, 1)")
    try:
        anyio.run(send, args, backend=backend, backend_options=options)
    except (TimeoutError, ConnectionRefusedError) as exc:
        print(f"not delivered: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
