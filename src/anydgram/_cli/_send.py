"""``anydgram send``: send a message, or standard input, as datagrams; optionally await replies.

Standard input is read one line per datagram (the line ending removed), or whole as one datagram
with ``--raw``. Lines are read as they come, so an interactive session sends each line when
Enter is pressed.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread

from .. import DatagramClient, DatagramTooLargeError
from ._codec import Codec
from ._output import format_address, write_line
from ._ping import connect
from ._runner import Backend, CLIError, run

__all__ = ("SendOptions", "run_send")


@dataclass(frozen=True)
class SendOptions:
    """``anydgram send``'s settings; ``message=None`` or ``"-"`` reads standard input."""

    host: str
    port: int
    message: str | None = None
    raw: bool = False
    wait_reply: bool = False
    timeout: float = 1.0
    family: int = socket.AF_UNSPEC
    protocol: str = "bytes"


class _Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.unanswered = 0


def _read_stdin_line() -> bytes:
    return sys.stdin.buffer.readline()


def _read_stdin_all() -> bytes:
    return sys.stdin.buffer.read()


async def _datagrams(options: SendOptions) -> AsyncIterator[bytes]:
    if options.message is not None and options.message != "-":
        # The command line arrives decoded with surrogateescape; this recovers its bytes.
        yield os.fsencode(options.message)
        return
    if options.raw:
        yield await anyio.to_thread.run_sync(_read_stdin_all, abandon_on_cancel=True)
        return
    while True:
        line = await anyio.to_thread.run_sync(_read_stdin_line, abandon_on_cancel=True)
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield line


def _show_reply(reply: bytes) -> None:
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        write_line(reply.hex())
    else:
        write_line(text.removesuffix("\n"))


async def _await_reply(client: DatagramClient[bytes, bytes], timeout: float) -> bytes | None:
    with anyio.move_on_after(timeout):
        return await client.recv_packet()
    return None


async def send(options: SendOptions, tally: _Tally) -> None:
    """Send each datagram and, with ``wait_reply``, print the reply to each (or say none came).

    Raises:
        CLIError: The host does not resolve, or a message is too large for one datagram.
    """
    codec = Codec(options.protocol)
    client = await connect(options.host, options.port, options.family)
    async with client:
        peer = format_address(client.remote_address)
        async for datagram in _datagrams(options):
            try:
                await client.send_packet(codec.encode_message(datagram))
                tally.sent += 1
                reply = await _await_reply(client, options.timeout) if options.wait_reply else b""
            except DatagramTooLargeError as exc:
                raise CLIError(
                    f"a message of {exc.size} bytes does not fit in one datagram "
                    f"(limit {exc.limit})"
                ) from None
            except ConnectionRefusedError:
                tally.unanswered += 1
                write_line(
                    f"anydgram: {peer} refused the datagram (nothing listening?)", error=True
                )
                continue
            if reply is None:
                tally.unanswered += 1
                write_line(
                    f"anydgram: no reply from {peer} within {options.timeout:g} s", error=True
                )
            elif options.wait_reply:
                text = codec.reply_text(reply)
                if text is None:
                    _show_reply(reply)
                else:
                    write_line(text)


def run_send(options: SendOptions, backend: Backend) -> int:
    """Run ``anydgram send``: 0 when everything was sent (and answered, if waited for), else 1."""
    tally = _Tally()
    run(backend, lambda: send(options, tally))
    return 1 if tally.unanswered else 0
