"""The argument parser: every subcommand, its options, and the checks on their values.

Values are checked here, as they are parsed, so a bad one ends the program with one line that
names the option, before any socket is opened.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from .._version import __version__
from ._observe import metrics_address
from ._runner import BACKENDS, CLIError

__all__ = (
    "BENCH_MIN_SIZE",
    "MODES",
    "PING_MIN_SIZE",
    "PROTOCOLS",
    "build_parser",
    "family_of",
    "loopback_hosts",
)

MAX_PAYLOAD = 65507
#: ``serve --mode`` and ``serve --protocol`` choices.
MODES = ("echo", "upper", "discard", "print")
PROTOCOLS = ("bytes", "str", "json", "msgpack", "cbor")
#: ping sends its sequence number as 8 ASCII digits, bench as 12: the smallest datagrams.
PING_MIN_SIZE = 8
BENCH_MIN_SIZE = 12


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (a :class:`CLIError`), not usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")

    def _parse_optional(self, arg_string: str) -> Any:
        # argparse takes "-1" for an option when a parser has options that look like negative
        # numbers (-4, -6): "ping HOST -1" would then report a missing PORT. A negative number
        # that is not one of those options is a value, for the value's own check to refuse.
        if _NEGATIVE_NUMBER.fullmatch(arg_string) and arg_string not in self._option_string_actions:
            return None
        return super()._parse_optional(arg_string)


_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def _number(
    low: float, *, inclusive: bool = True, high: float | None = None
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = value < low if inclusive else value <= low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            if high is not None and inclusive:
                bounds = f"between {low:g} and {high:g}"
            elif high is not None:
                bounds = f"more than {low:g} and at most {high:g}"
            else:
                bounds = f"{'at least' if inclusive else 'more than'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _host(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the host must not be empty")
    return text


_port = _integer(0, 65535)
_remote_port = _integer(1, 65535)


def loopback_hosts() -> list[str]:
    """``127.0.0.1``, and ``::1`` where IPv6 is available: where servers listen by default."""
    hosts = ["127.0.0.1"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            pass  # IPv6 disabled: IPv4 loopback alone
        else:
            hosts.append("::1")
    return hosts


def family_of(namespace: argparse.Namespace) -> int:
    """The address family the ``-4``/``-6`` flags ask for."""
    ipv4: bool = namespace.ipv4
    ipv6: bool = namespace.ipv6
    return socket.AF_INET if ipv4 else socket.AF_INET6 if ipv6 else socket.AF_UNSPEC


def _add_family(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-4", dest="ipv4", action="store_true", help="use IPv4 only")
    group.add_argument("-6", dest="ipv6", action="store_true", help="use IPv6 only")


def _add_server_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "host",
        nargs="?",
        type=_host,
        metavar="HOST",
        help="address to bind (default: 127.0.0.1 and ::1, the loopback only)",
    )
    parser.add_argument("port", type=_port, metavar="PORT", help="port to bind (0: any free)")


def _add_protocol(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="bytes",
        help=f"how datagrams are {what} (default: bytes)",
    )


def _add_remote_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", type=_host, metavar="HOST", help="host name or address")
    parser.add_argument("port", type=_remote_port, metavar="PORT", help="UDP port")


def build_parser() -> argparse.ArgumentParser:
    """The ``anydgram`` parser with its subcommands (``args.command`` names the one given)."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--backend",
        choices=BACKENDS,
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )
    parser = _Parser(
        prog="anydgram",
        description="Async datagram servers and clients for asyncio, uvloop and trio.",
        epilog="Try 'anydgram demo': a lossy server and a pinger, in one process.",
    )
    parser.add_argument("--version", action="version", version=f"anydgram {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = commands.add_parser("serve", parents=[common], help="run a UDP server")
    _add_server_address(serve)
    serve.add_argument(
        "--mode",
        choices=MODES,
        default="echo",
        help="what to do with each datagram (default: echo)",
    )
    serve.add_argument(
        "--loss",
        type=_number(0, high=1),
        default=0.0,
        metavar="P",
        help="ignore each request with probability P (0 to 1)",
    )
    serve.add_argument(
        "--delay",
        type=_number(0),
        default=0.0,
        metavar="MS",
        help="wait MS milliseconds before answering",
    )
    serve.add_argument("--seed", type=int, default=None, help="seed for --loss (repeatable runs)")
    serve.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="bytes",
        help="how datagrams are decoded (default: bytes)",
    )
    serve.add_argument(
        "--workers",
        type=_integer(1, 1024),
        default=1,
        metavar="N",
        help="worker processes sharing the port (default: 1)",
    )
    serve.add_argument(
        "--max-concurrent",
        type=_integer(1),
        default=256,
        metavar="N",
        help="handlers running at once (default: 256)",
    )
    serve.add_argument(
        "--metrics",
        type=metrics_address,
        default=None,
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST: 127.0.0.1 unless "
        "written out, as localhost or an IP address)",
    )
    serve.add_argument(
        "--stats-interval",
        type=_number(0.1, high=86400.0),
        default=None,
        metavar="SECONDS",
        help="print one statistics line every SECONDS",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log each datagram")

    ping = commands.add_parser("ping", parents=[common], help="measure round trips to a server")
    _add_remote_address(ping)
    ping.add_argument(
        "-c",
        "--count",
        type=_integer(1, 10**8),
        metavar="COUNT",
        help="stop after COUNT datagrams (default: until Ctrl-C)",
    )
    ping.add_argument(
        "-i",
        "--interval",
        type=_number(0),
        default=1.0,
        metavar="INTERVAL",
        help="seconds between datagrams (default: 1)",
    )
    ping.add_argument(
        "-W",
        "--timeout",
        type=_number(0, inclusive=False),
        default=1.0,
        metavar="TIMEOUT",
        help="seconds to wait for each reply (default: 1)",
    )
    ping.add_argument(
        "-s",
        "--size",
        type=_integer(PING_MIN_SIZE, MAX_PAYLOAD),
        default=56,
        metavar="SIZE",
        help="datagram size in bytes (default: 56)",
    )
    _add_protocol(ping, "encoded: the sequence number as a string packet")
    _add_family(ping)

    send = commands.add_parser("send", parents=[common], help="send datagrams")
    _add_remote_address(send)
    send.add_argument(
        "message",
        nargs="?",
        metavar="MESSAGE",
        help="the datagram to send; '-' or nothing reads standard input",
    )
    send.add_argument(
        "--raw",
        action="store_true",
        help="send all of standard input as one datagram, not one per line",
    )
    send.add_argument("--wait-reply", action="store_true", help="print the reply to each datagram")
    _add_protocol(send, "encoded: MESSAGE is JSON text for json, msgpack and cbor")
    send.add_argument(
        "-W",
        "--timeout",
        type=_number(0, inclusive=False),
        default=1.0,
        metavar="TIMEOUT",
        help="seconds to wait for a reply (default: 1)",
    )
    _add_family(send)

    listen = commands.add_parser("listen", parents=[common], help="print incoming datagrams")
    _add_server_address(listen)
    listen.add_argument("--echo", action="store_true", help="send each datagram back")
    _add_protocol(listen, "decoded for display")
    listen.add_argument(
        "-c", "--count", type=_integer(1), metavar="COUNT", help="stop after COUNT datagrams"
    )

    bench = commands.add_parser("bench", parents=[common], help="load-test an echo server")
    _add_remote_address(bench)
    bench.add_argument(
        "-d",
        "--duration",
        type=_number(0, inclusive=False, high=86400),
        default=5.0,
        metavar="SECONDS",
        help="how long to send (default: 5)",
    )
    bench.add_argument(
        "-w",
        "--window",
        type=_integer(1, 65536),
        default=64,
        metavar="N",
        help="datagrams in flight (default: 64)",
    )
    bench.add_argument(
        "-s",
        "--size",
        type=_integer(BENCH_MIN_SIZE, MAX_PAYLOAD),
        default=64,
        metavar="SIZE",
        help="datagram size in bytes (default: 64)",
    )
    bench.add_argument(
        "-W",
        "--timeout",
        type=_number(0, inclusive=False),
        default=1.0,
        metavar="TIMEOUT",
        help="seconds before a datagram counts as lost",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress while running")
    _add_family(bench)

    demo = commands.add_parser("demo", parents=[common], help="ping a lossy server, in one process")
    for subparser in (serve, ping, send, listen, bench, demo):
        # Errors found after parsing (arguments left over) point to the subcommand's help.
        subparser.set_defaults(parser=subparser)
    return parser
