"""A syslog receiver: parses RFC 5424 and RFC 3164 (BSD) messages arriving over UDP.

Shows a :class:`~anydgram.DatagramServer` that never replies, only reads, and a careful parser
of untrusted input. Every datagram becomes one record: the priority split into facility and
severity, the timestamp, host name, application, process id, message id, structured data and
the message. Whatever does not parse (no ``<PRI>``, a priority out of range, a malformed RFC
5424 header, broken structured data, ...) is printed as an ``unparsed`` record with the reason
and the raw bytes, escaped; a hostile or buggy sender can never stop the receiver or write
control characters to your terminal.

Records are printed one per line, readable by a person, or with ``--json`` as one JSON object
per line (JSON Lines) for a program. Send it messages with util-linux ``logger`` or Python's
:class:`logging.handlers.SysLogHandler`::

    python examples/syslog_receiver.py --port 5514 --json &
    logger -n 127.0.0.1 -P 5514 -d --rfc5424 --msgid BOOT "hello from logger"
    logger -n 127.0.0.1 -P 5514 -d --rfc3164 "hello, the BSD way"

What is accepted, in short:

- RFC 5424: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]``, each
  header field ``-`` when absent, checked for its characters and maximum length; version 1
  only. The structured data is returned as ``{sd_id: {name: value}}`` (a name repeated within
  an element gives a list of values).
- RFC 3164: ``<PRI>`` followed by an optional ``Mmm dd hh:mm:ss HOSTNAME`` header and content,
  whose leading ``TAG[PID]:`` (when present) gives the application and process id. Senders
  that leave out the header, as Python's ``SysLogHandler`` does, are accepted too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from anydgram import DatagramRequest, DatagramServer

BACKENDS = ("asyncio", "uvloop", "trio")

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "cron", "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)  # fmt: skip
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")  # fmt: skip

#: RFC 5424 header fields: name and maximum length. Their characters are PRINTUSASCII (33-126).
_HEADER_FIELDS = (("hostname", 255), ("app_name", 48), ("procid", 128), ("msgid", 32))
_RFC5424_TIME = re.compile(
    rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})\Z"
)
_RFC3164_TIME = re.compile(rb"([A-Z][a-z]{2}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) ")
#: A 3164 tag: up to 48 printable characters but ``[``, ``:`` and space, then ``[PID]``
#: optionally, then ``:``. Bounded repetitions only, so no input makes the regex backtrack long.
_RFC3164_TAG = re.compile(
    rb"([\x21-\x39\x3b-\x5a\x5c-\x7e]{1,48})(?:\[([\x21-\x5c\x5e-\x7e]{1,128})\])?:"
)
_BOM = b"\xef\xbb\xbf"
_SD_NAME_EXCLUDED = b'= ]"'
_MAX_SD_NAME = 32


class SyslogParseError(ValueError):
    """The datagram is not a syslog message this parser accepts."""


@dataclass
class SyslogRecord:
    """One parsed syslog message; absent fields are ``None``."""

    format: str  # "rfc5424" or "rfc3164"
    priority: int
    facility: str
    severity: str
    timestamp: str | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: dict[str, dict[str, str | list[str]]] = field(
        default_factory=dict[str, dict[str, str | list[str]]]
    )
    message: str = ""


def _text(data: bytes) -> str:
    """Bytes from the wire as text: UTF-8, with undecodable bytes replaced (never an error)."""
    return data.decode("utf-8", errors="replace")


def _parse_priority(data: bytes) -> tuple[int, int]:
    """``<PRI>`` at the start of ``data``: the priority and the index just after ``>``."""
    end = data.find(b">", 0, 5)  # "<" + at most 3 digits + ">"
    digits = data[1:end]
    if not data.startswith(b"<") or end < 0 or not digits.isdigit():
        raise SyslogParseError("no <PRI> at the start")
    if len(digits) > 1 and digits.startswith(b"0"):
        raise SyslogParseError("leading zero in <PRI>")
    priority = int(digits)
    if priority > 191:  # facility 23 (local7), severity 7 (debug)
        raise SyslogParseError(f"priority {priority} out of range")
    return priority, end + 1


def _next_token(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """The bytes from ``pos`` up to the next space, and the index after that space."""
    end = data.find(b" ", pos)
    if end < 0:
        raise SyslogParseError(f"the header ends before {what}")
    return data[pos:end], end + 1


def _parse_sd_value(data: bytes, pos: int) -> tuple[str, int]:
    """A quoted PARAM-VALUE starting after its ``"``: the value and the index after ``"``."""
    value = bytearray()
    while pos < len(data):
        byte = data[pos]
        if byte == 0x5C and pos + 1 < len(data) and data[pos + 1] in b'"\\]':  # \" \\ \]
            value.append(data[pos + 1])
            pos += 2
        elif byte == 0x22:  # the closing quote
            return _text(bytes(value)), pos + 1
        else:
            value.append(byte)  # including a lone backslash, kept as RFC 5424 says
            pos += 1
    raise SyslogParseError("unterminated structured-data value")


def _parse_sd_name(data: bytes, pos: int, what: str) -> tuple[str, int]:
    end = pos
    while end < len(data) and 33 <= data[end] <= 126 and data[end] not in _SD_NAME_EXCLUDED:
        end += 1
    if not pos < end <= pos + _MAX_SD_NAME:
        raise SyslogParseError(f"bad structured-data {what} at offset {pos}")
    return data[pos:end].decode("ascii"), end


def _parse_structured_data(
    data: bytes, pos: int
) -> tuple[dict[str, dict[str, str | list[str]]], int]:
    """STRUCTURED-DATA at ``pos``: ``{sd_id: {name: value}}`` and the index after it."""
    elements: dict[str, dict[str, str | list[str]]] = {}
    if data.startswith(b"-", pos):
        return elements, pos + 1
    if not data.startswith(b"[", pos):
        raise SyslogParseError("no structured data (neither '-' nor '[')")
    while data.startswith(b"[", pos):
        sd_id, pos = _parse_sd_name(data, pos + 1, "SD-ID")
        if sd_id in elements:
            raise SyslogParseError(f"SD-ID {sd_id!r} repeated")
        params: dict[str, str | list[str]] = {}
        while data.startswith(b" ", pos):
            name, pos = _parse_sd_name(data, pos + 1, "PARAM-NAME")
            if not data.startswith(b'="', pos):
                raise SyslogParseError(f"no '=\"' after PARAM-NAME {name!r}")
            value, pos = _parse_sd_value(data, pos + 2)
            previous = params.get(name)
            if previous is None:
                params[name] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                params[name] = [previous, value]
        if not data.startswith(b"]", pos):
            raise SyslogParseError(f"no ']' closing SD element {sd_id!r}")
        elements[sd_id] = params
        pos += 1
    return elements, pos


def _parse_rfc5424(data: bytes, pos: int, priority: int) -> SyslogRecord:
    _, pos = _next_token(data, pos, "the timestamp")  # the version, "1"
    record = SyslogRecord("rfc5424", priority, FACILITIES[priority >> 3], SEVERITIES[priority & 7])
    timestamp, pos = _next_token(data, pos, "the host name")
    if timestamp != b"-":
        if not _RFC5424_TIME.match(timestamp):
            raise SyslogParseError("malformed timestamp")
        try:
            datetime.datetime.fromisoformat(timestamp.decode("ascii"))
        except ValueError:
            raise SyslogParseError("timestamp out of range") from None
        record.timestamp = timestamp.decode("ascii")
    for name, limit in _HEADER_FIELDS:
        value, pos = _next_token(data, pos, "the structured data")
        if not 1 <= len(value) <= limit or not all(33 <= b <= 126 for b in value):
            raise SyslogParseError(f"malformed {name} field")
        if value != b"-":
            setattr(record, name, value.decode("ascii"))
    record.structured_data, pos = _parse_structured_data(data, pos)
    if pos < len(data):
        if data[pos] != 0x20:
            raise SyslogParseError("no space between the structured data and the message")
        message = data[pos + 1 :]
        record.message = _text(message.removeprefix(_BOM))
    return record


def _parse_rfc3164(data: bytes, pos: int, priority: int) -> SyslogRecord:
    record = SyslogRecord("rfc3164", priority, FACILITIES[priority >> 3], SEVERITIES[priority & 7])
    header = _RFC3164_TIME.match(data, pos)
    if header and header[1] in _MONTHS:
        day, hour, minute, second = (int(header[i]) for i in range(2, 6))
        if 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61:
            record.timestamp = header[0][:-1].decode("ascii")
            pos = header.end()
            # The host name comes next, but some senders leave it out: a word that looks
            # like the tag ("su:", "cron[42]:") is the tag.
            word_end = data.find(b" ", pos)
            word = data[pos:] if word_end < 0 else data[pos:word_end]
            tag = _RFC3164_TAG.fullmatch(word)
            if word and not tag and all(33 <= b <= 126 for b in word) and len(word) <= 255:
                record.hostname = word.decode("ascii")
                pos = len(data) if word_end < 0 else word_end + 1
    content = data[pos:]
    tag = _RFC3164_TAG.match(content)
    if tag:
        record.app_name = tag[1].decode("ascii")
        record.procid = None if tag[2] is None else tag[2].decode("ascii")
        content = content[tag.end() :].removeprefix(b" ")
    record.message = _text(content)
    return record


def parse_syslog_untrusted(data: bytes) -> SyslogRecord:
    """Parse one syslog datagram from an untrusted sender.

    An RFC 5424 message (``<PRI>`` then the version, ``1``, and a space) is parsed strictly;
    anything else after a valid ``<PRI>`` is read as RFC 3164, whose format is loose by
    nature. One trailing NUL and line ending are ignored (many senders add them).

    Raises:
        SyslogParseError: The datagram is not a syslog message; the message says why.
    """
    data = data.removesuffix(b"\0").removesuffix(b"\n").removesuffix(b"\r")
    priority, pos = _parse_priority(data)
    if data.startswith(b"1 ", pos):  # VERSION 1, the only one there is
        return _parse_rfc5424(data, pos, priority)
    return _parse_rfc3164(data, pos, priority)


# -- output ------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so nothing a sender wrote acts on a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def format_source(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render(data: bytes, source: str, *, as_json: bool) -> str:
    """The output line for one datagram: a parsed record, or an ``unparsed`` one."""
    try:
        record = parse_syslog_untrusted(data)
    except SyslogParseError as exc:
        raw = data.decode("utf-8", errors="backslashreplace")
        if as_json:
            fields = {"source": source, "format": "unparsed", "error": str(exc), "raw": raw}
            return json.dumps(fields)
        return _printable(f"{source} unparsed ({exc}): {raw!r}")
    if as_json:
        # ensure_ascii: no byte a sender chose reaches the output unescaped.
        return json.dumps({"source": source, **asdict(record)})
    app = record.app_name or "-"
    if record.procid is not None:
        app += f"[{record.procid}]"
    sd = json.dumps(record.structured_data) if record.structured_data else "-"
    return _printable(
        f"{source} {record.format} {record.facility}.{record.severity} "
        f"{record.timestamp or '-'} {record.hostname or '-'} {app} {record.msgid or '-'} "
        f"{sd}: {record.message}"
    )


# -- the server --------------------------------------------------------------------------------


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_source, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and receive syslog messages until interrupted."""
    parser = argparse.ArgumentParser(description="Receive and parse syslog messages over UDP.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5514, help="port to bind; 0 picks a free one (5514)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = parser.parse_args(argv)
    as_json: bool = args.json

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        print(render(request.packet, format_source(request.address), as_json=as_json), flush=True)

    server = DatagramServer(args.host, args.port, handler)
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(serve, server, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
