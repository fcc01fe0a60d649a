"""How the commands show things: addresses, payloads, statistics, and lines as they happen."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import cast

from .. import ServerStatistics
from .._address import format_address, format_host_port

__all__ = (
    "describe_os_error",
    "describe_payload",
    "format_address",
    "format_host_port",
    "server_statistics_lines",
    "timestamp",
    "write_line",
)

#: The most bytes of one datagram ``describe_payload`` shows; the rest is elided.
MAX_SHOWN = 256

_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def write_line(line: str = "", *, error: bool = False) -> None:
    """Print ``line`` and flush, so output piped to another program arrives as it happens."""
    stream = sys.stderr if error else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def describe_os_error(exc: OSError) -> str:
    """The reason an ``OSError`` gives, without the wrapping anydgram adds for many addresses.

    ``connect_udp`` and ``open_udp_endpoint`` raise one ``OSError`` naming every address
    tried, with the individual errors as an exception group in ``__cause__``; the first of
    those is the reason worth a line.
    """
    cause = exc.__cause__
    if isinstance(cause, ExceptionGroup):
        inner = cast("ExceptionGroup[Exception]", cause).exceptions
        if inner and isinstance(inner[0], OSError):
            return describe_os_error(inner[0])
    return exc.strerror or str(exc)


def timestamp() -> str:
    """The local wall-clock time, to the microsecond: ``HH:MM:SS.ffffff``."""
    return datetime.now().strftime("%H:%M:%S.%f")


def _as_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(char.isprintable() or char in "\n\r\t" for char in text):
        return text.translate(_ESCAPES)
    return None


def describe_payload(packet: object) -> str:
    """``N bytes: text`` for UTF-8 text, ``N bytes (binary): hex`` otherwise.

    Packets of other protocols (JSON, MessagePack) are shown by their ``repr``. At most
    :data:`MAX_SHOWN` bytes are shown; ``...`` marks the cut.
    """
    if isinstance(packet, str):
        data = packet.encode("utf-8", "surrogateescape")
    elif isinstance(packet, bytes | bytearray):
        data = bytes(packet)
    else:
        shown_repr = repr(packet)
        if len(shown_repr) > MAX_SHOWN:
            return f"{shown_repr[:MAX_SHOWN]}..."
        return shown_repr
    size = f"{len(data)} byte" if len(data) == 1 else f"{len(data)} bytes"
    if not data:
        return size
    shown, cut = data[:MAX_SHOWN], "..." if len(data) > MAX_SHOWN else ""
    text = _as_text(shown)
    if text is None and cut:
        # The cut may have split a UTF-8 sequence: drop up to 3 trailing bytes and retry.
        for trim in range(1, 4):
            text = _as_text(shown[:-trim])
            if text is not None:
                break
    if text is not None:
        return f"{size}: {text}{cut}"
    return f"{size} (binary): {shown.hex()}{cut}"


def server_statistics_lines(stats: ServerStatistics) -> list[str]:
    """A server's statistics in a few lines, under an iputils-style heading."""
    return [
        "--- server statistics ---",
        f"{stats.datagrams_received} datagrams received ({stats.bytes_received} bytes), "
        f"{stats.datagrams_sent} sent ({stats.bytes_sent} bytes)",
        f"{stats.parse_errors} parse errors, {stats.oversize} oversize, "
        f"{stats.handler_errors} handler errors, {stats.send_errors} send errors, "
        f"{stats.icmp_errors} ICMP errors, {stats.kernel_drops} kernel drops",
        f"peak concurrent handlers: {stats.handlers_peak}",
    ]
