"""A transmitter and an echoing receiver in two threads, with anydgram's blocking endpoints.

The classic first UDP program: a receive thread echoes whatever it gets, while the main thread
sends lines and prints the echoes. Written with raw sockets it usually polls (a non-blocking
socket, ``try``/``except`` around each ``recvfrom``, a sleep so the loop does not spin) and
stops through a global flag the thread checks now and then. Here:

- the receive thread just blocks in :meth:`~anydgram.SyncDatagramEndpoint.recv_packet`;
- stopping it is :meth:`~anydgram.SyncDatagramEndpoint.close`, from any thread (or a signal
  handler): the blocked receive raises :exc:`anyio.ClosedResourceError` at once and the thread
  returns, with no flag and no polling interval;
- the transmitter uses :meth:`~anydgram.SyncDatagramClient.request`, which waits for the echo
  and re-sends if the datagram was lost, instead of sleeping and hoping.

Both halves run in one process by default; ``--mode rx`` and ``--mode tx`` run one each, so
two processes (or machines) can talk::

    python examples/threaded_transmitter_receiver.py hello "hello world"
    python examples/threaded_transmitter_receiver.py --mode rx --port 8000 &
    python examples/threaded_transmitter_receiver.py --mode tx --port 8000   # type lines

Messages come from the arguments or, without any, from the lines of standard input.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import anyio

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    SyncDatagramClient,
    SyncDatagramEndpoint,
)
from anydgram.serializers import StringSerializer

#: Text in UTF-8 both ways; a datagram that is not UTF-8 is a parse error, not a crash.
PROTOCOL = DatagramProtocol(StringSerializer())


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Receiver:
    """Echoes every datagram back to its sender, from a thread of its own, until stopped."""

    def __init__(self, host: str, port: int) -> None:
        self.endpoint = SyncDatagramEndpoint(host, port, protocol=PROTOCOL)
        self._thread = threading.Thread(target=self._echo_forever, name="receiver")

    def start(self) -> None:
        """Start the receive thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread: closing the endpoint wakes its blocked receive at once.

        Safe to call from a signal handler, from any thread, and more than once.
        """
        self.endpoint.close()

    def join(self) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        self._thread.join()

    def _echo_forever(self) -> None:
        endpoint = self.endpoint
        while True:
            try:
                text, sender = endpoint.recv_packet()  # blocks: no polling, no sleep
                print(f"RX: {text!r} from {format_address(sender)}", flush=True)
                endpoint.send_packet(text, sender)
            except DatagramProtocolParseError as exc:
                print(f"RX: datagram from {format_address(exc.address)} is not UTF-8", flush=True)
            except anyio.ClosedResourceError:
                return  # stop() closed the endpoint


def lines(args: Sequence[str]) -> Iterator[str]:
    """The command-line messages, or else the lines of standard input."""
    if args:
        yield from args
        return
    for line in sys.stdin:
        yield line.rstrip("\n")


def transmit(host: str, port: int, messages: Iterator[str], timeout: float) -> int:
    """Send each message and print its echo; the number of messages that got none."""
    lost = 0
    with SyncDatagramClient(host, port, protocol=PROTOCOL) as client:
        for message in messages:
            print(f"TX: {message!r}", flush=True)
            echo = transmit_one(client, message, timeout)
            print(f"TX: echo {echo!r}" if echo is not None else "TX: no echo", flush=True)
            lost += echo is None
    return lost


def transmit_one(client: SyncDatagramClient[str, str], message: str, timeout: float) -> str | None:
    """Send ``message`` until its echo comes back (3 attempts); the echo, or ``None``."""
    try:
        return client.request(message, timeout=timeout, match=lambda r: r == message)
    except (TimeoutError, ConnectionRefusedError):
        return None


def run_receiver(host: str, port: int) -> None:
    """``--mode rx``: echo until SIGINT or SIGTERM."""
    receiver = Receiver(host, port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        receiver.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    receiver.start()
    print(f"listening on {format_address(receiver.endpoint.local_address)}", flush=True)
    receiver.join()  # returns once a signal handler has closed the endpoint


def run_both(host: str, port: int, messages: Iterator[str], timeout: float) -> int:
    """The default mode: the receive thread and, in this thread, the transmitter."""
    receiver = Receiver(host, port)
    receiver.start()
    try:
        address = receiver.endpoint.local_address
        assert isinstance(address, tuple)  # a UDP endpoint: (host, port)
        print(f"listening on {format_address(address)}", flush=True)
        return transmit(address[0], address[1], messages, timeout)
    finally:
        receiver.stop()  # also on Ctrl-C: the thread ends at once
        receiver.join()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; the exit status (1 if an echo was lost)."""
    parser = argparse.ArgumentParser(
        description="Send lines to an echoing receive thread and print the echoes."
    )
    parser.add_argument("messages", nargs="*", help="messages to send (default: stdin lines)")
    parser.add_argument(
        "--mode",
        choices=("both", "rx", "tx"),
        default="both",
        help="both halves in one process, only the receiver, or only the transmitter",
    )
    parser.add_argument("--host", default="127.0.0.1", help="receiver's address (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="receiver's port; 0 picks a free one (8000)"
    )
    parser.add_argument(
        "--timeout", type=float, default=0.5, help="seconds before re-sending (0.5)"
    )
    args = parser.parse_args(argv)
    try:
        if args.mode == "rx":
            run_receiver(args.host, args.port)
            return 0
        messages = lines(args.messages)
        if args.mode == "tx":
            return 1 if transmit(args.host, args.port, messages, args.timeout) else 0
        return 1 if run_both(args.host, args.port, messages, args.timeout) else 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
