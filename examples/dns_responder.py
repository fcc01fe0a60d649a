"""A tiny authoritative DNS responder: A and AAAA answers from a text zone file, over UDP.

Shows a :class:`~anydgram.DatagramServer` speaking a binary protocol from the wire format up,
with a parser written for untrusted input: every read is bounds-checked, a name is at most 255
bytes, and compression pointers may only point backwards, to ever earlier offsets, so a
message whose pointers form a loop is rejected instead of looping. What the responder does:

- a query for a name in the zone gets its A or AAAA records (``ANY`` gets both), or an empty
  ``NOERROR`` answer when the name has no record of that type;
- a name that is not in the zone gets ``NXDOMAIN``;
- a malformed query (truncated, a bad name, not exactly one question) gets ``FORMERR``; an
  opcode other than QUERY or a class other than IN gets ``NOTIMP``;
- a datagram too short to hold a DNS header, or one that is itself a response, gets nothing,
  so two responders can never bounce errors at each other;
- answers that would not fit in 512 bytes are cut and marked truncated (TC), as plain DNS over
  UDP requires (this responder does not speak EDNS, and it ignores the OPT record of a query).

The zone file has one record per line, ``NAME [TTL] TYPE ADDRESS`` (see
``examples/zone.txt``). Ask it with ``dig`` or dnspython::

    python examples/dns_responder.py --port 5300 --zone examples/zone.txt &
    dig @127.0.0.1 -p 5300 www.example.test A
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio

from anydgram import DatagramRequest, DatagramServer

BACKENDS = ("asyncio", "uvloop", "trio")

TYPE_A: Final = 1
TYPE_AAAA: Final = 28
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
TYPE_NAMES: Final = {TYPE_A: "A", TYPE_AAAA: "AAAA", TYPE_ANY: "ANY"}

NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4
RCODE_NAMES: Final = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP")

_HEADER: Final = struct.Struct("!HHHHHH")  # id, flags, and the four section counts
_QUESTION_TAIL: Final = struct.Struct("!HH")  # QTYPE, QCLASS
_ANSWER: Final = struct.Struct("!HHHIH")  # name pointer, TYPE, CLASS, TTL, RDLENGTH
_QR, _OPCODE, _AA, _TC, _RD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100
_MAX_UDP_MESSAGE: Final = 512  # RFC 1035 4.2.1, without EDNS
_MAX_NAME: Final = 255  # wire format, root label included
_MAX_LABEL: Final = 63

#: A name as its labels, e.g. ``(b"www", b"example", b"test")``; the root is ``()``.
Name = tuple[bytes, ...]


class DNSFormatError(ValueError):
    """A query this responder answers with FORMERR."""


# -- the zone ----------------------------------------------------------------------------------


def name_key(labels: Iterable[bytes]) -> Name:
    """The zone lookup key of a name: DNS names compare ASCII case-insensitively."""
    return tuple(label.lower() for label in labels)


def parse_zone_name(text: str) -> Name:
    """``"www.example.test."`` as labels; raises :exc:`ValueError` for an invalid name."""
    labels = tuple(text.removesuffix(".").encode("ascii").split(b"."))
    if text in (".", "") or not all(0 < len(label) <= _MAX_LABEL for label in labels):
        raise ValueError(f"invalid name {text!r}")
    if sum(len(label) + 1 for label in labels) + 1 > _MAX_NAME:
        raise ValueError(f"name too long: {text!r}")
    return name_key(labels)


@dataclass
class Zone:
    """The records: name -> type -> ``[(ttl, rdata)]``."""

    records: dict[Name, dict[int, list[tuple[int, bytes]]]]

    @classmethod
    def from_text(cls, text: str) -> Zone:
        """Parse a zone file; raises :exc:`ValueError` naming the line of the first error."""
        records: dict[Name, dict[int, list[tuple[int, bytes]]]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith(("#", ";")):
                continue
            try:
                name, rtype, ttl, rdata = parse_zone_line(fields)
            except ValueError as exc:
                raise ValueError(f"zone line {number}: {exc}") from None
            records.setdefault(name, {}).setdefault(rtype, []).append((ttl, rdata))
        return cls(records)


def parse_zone_line(fields: list[str]) -> tuple[Name, int, int, bytes]:
    """``NAME [TTL] TYPE ADDRESS`` as ``(name, type, ttl, rdata)``; :exc:`ValueError` if bad."""
    if len(fields) == 3:
        name, rtype, value = fields
        ttl = 300
    elif len(fields) == 4:
        name, ttl_text, rtype, value = fields
        ttl = int(ttl_text)
        if not 0 <= ttl < 2**31:
            raise ValueError(f"TTL out of range: {ttl}")
    else:
        raise ValueError("expected NAME [TTL] TYPE ADDRESS")
    if rtype.upper() == "A":
        return parse_zone_name(name), TYPE_A, ttl, ipaddress.IPv4Address(value).packed
    if rtype.upper() == "AAAA":
        return parse_zone_name(name), TYPE_AAAA, ttl, ipaddress.IPv6Address(value).packed
    raise ValueError(f"unsupported type {rtype!r} (A or AAAA)")


# -- the wire format ---------------------------------------------------------------------------


@dataclass
class Question:
    """The question of a query: the name as sent (case preserved), its type and class."""

    name: Name
    qtype: int
    qclass: int


@dataclass
class Query:
    """The parts of a query a response needs."""

    id: int
    flags: int
    #: ``None`` when the opcode is not QUERY: the rest of the message was not read.
    question: Question | None


def read_name_untrusted(message: bytes, offset: int) -> tuple[Name, int]:
    """Read a (possibly compressed) name at ``offset``: its labels and the offset after it.

    Raises:
        DNSFormatError: The name runs past the end of the message, is longer than 255 bytes,
            uses a reserved label type, or has a compression pointer that does not point
            strictly before every offset already read (which rules out loops).
    """
    labels: list[bytes] = []
    length = 1  # the root label
    pos = offset
    end: int | None = None  # where the name ends in the message, once a pointer was taken
    lowest = offset  # pointers must go below this, so every jump makes progress
    while True:
        if pos >= len(message):
            raise DNSFormatError("name runs past the end of the message")
        size = message[pos]
        if size == 0:
            return tuple(labels), (pos + 1 if end is None else end)
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(message):
                raise DNSFormatError("truncated compression pointer")
            target = (size & 0x3F) << 8 | message[pos + 1]
            if target >= lowest:
                raise DNSFormatError("compression pointer does not point backwards")
            if end is None:
                end = pos + 2
            lowest = pos = target
            continue
        if size > _MAX_LABEL:
            raise DNSFormatError("reserved label type")
        label = message[pos + 1 : pos + 1 + size]
        if len(label) < size:
            raise DNSFormatError("label runs past the end of the message")
        length += size + 1
        if length > _MAX_NAME:
            raise DNSFormatError("name longer than 255 bytes")
        labels.append(label)
        pos += size + 1


def parse_query_untrusted(message: bytes) -> Query | None:
    """Parse a query from an untrusted sender; ``None`` when it deserves no answer at all.

    Raises:
        DNSFormatError: The message is malformed; :attr:`DNSFormatError.args` says how. The
            header was readable, so the sender can be told (FORMERR).
    """
    if len(message) < _HEADER.size:
        return None  # not even an id to answer with
    query_id, flags, qdcount, _, _, _ = _HEADER.unpack_from(message)
    if flags & _QR:
        return None  # a response: answering it could start a loop between two servers
    if (flags >> 11) & 0xF != 0:
        return Query(query_id, flags, None)  # not a standard QUERY: NOTIMP, unread
    if qdcount != 1:
        raise DNSFormatError(f"{qdcount} questions (exactly 1 is supported)")
    name, pos = read_name_untrusted(message, _HEADER.size)
    if pos + _QUESTION_TAIL.size > len(message):
        raise DNSFormatError("question truncated")
    qtype, qclass = _QUESTION_TAIL.unpack_from(message, pos)
    # Anything after the question (an EDNS OPT record, say) is ignored.
    return Query(query_id, flags, Question(name, qtype, qclass))


def encode_name(labels: Name) -> bytes:
    """A name in wire format, uncompressed."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def build_response(query: Query, zone: Zone) -> tuple[bytes, int, int]:
    """The response to a parsed query: its bytes, its rcode and the number of answers."""
    echoed = query.flags & (_OPCODE | _RD)  # copied from the query
    question = query.question
    if question is None:
        return _HEADER.pack(query.id, _QR | echoed | NOTIMP, 0, 0, 0, 0), NOTIMP, 0
    answers: list[bytes] = []
    if question.qclass != CLASS_IN:
        rcode = NOTIMP
    elif (by_type := zone.records.get(name_key(question.name))) is None:
        rcode = NXDOMAIN
    else:
        rcode = NOERROR
        types = (TYPE_A, TYPE_AAAA) if question.qtype == TYPE_ANY else (question.qtype,)
        for rtype in types:
            for ttl, rdata in by_type.get(rtype, ()):
                # 0xC00C: a pointer to the question's name, right after the 12-byte header.
                answers.append(_ANSWER.pack(0xC00C, rtype, CLASS_IN, ttl, len(rdata)) + rdata)
    encoded = encode_name(question.name) + _QUESTION_TAIL.pack(question.qtype, question.qclass)
    flags = _QR | echoed | rcode
    if rcode != NOTIMP:
        flags |= _AA  # the zone is ours: the answer, or its absence, is authoritative
    size = _HEADER.size + len(encoded)
    kept = 0
    for answer in answers:
        if size + len(answer) > _MAX_UDP_MESSAGE:
            flags |= _TC  # the client may retry over TCP; this responder has no TCP
            break
        size += len(answer)
        kept += 1
    header = _HEADER.pack(query.id, flags, 1, kept, 0, 0)
    return header + encoded + b"".join(answers[:kept]), rcode, kept


def formerr(message: bytes) -> bytes:
    """A FORMERR response to a malformed query whose header could be read."""
    query_id, flags, *_ = _HEADER.unpack_from(message)
    return _HEADER.pack(query_id, _QR | (flags & (_OPCODE | _RD)) | FORMERR, 0, 0, 0, 0)


def answer_untrusted(message: bytes, zone: Zone) -> tuple[bytes | None, str]:
    """The response to one datagram (``None``: send nothing) and a line describing it."""
    try:
        query = parse_query_untrusted(message)
    except DNSFormatError as exc:
        return formerr(message), f"FORMERR ({exc})"
    if query is None:
        return None, f"ignored a {len(message)}-byte datagram (too short, or a response)"
    response, rcode, answers = build_response(query, zone)
    if query.question is None:
        return response, f"opcode {(query.flags >> 11) & 0xF} {RCODE_NAMES[rcode]}"
    qtype = TYPE_NAMES.get(query.question.qtype, f"TYPE{query.question.qtype}")
    name = presentation(query.question.name)
    return response, f"{qtype} {name} {RCODE_NAMES[rcode]} {answers} answers"


def response_untrusted(message: bytes, zone: Zone) -> bytes | None:
    """:func:`answer_untrusted` without the line that describes it (what ``--quiet`` serves)."""
    try:
        query = parse_query_untrusted(message)
    except DNSFormatError:
        return formerr(message)
    if query is None:
        return None
    return build_response(query, zone)[0]


def presentation(labels: Name) -> str:
    r"""A name for printing: bytes outside printable ASCII (and ``.``, ``\``) as ``\DDD``."""
    if not labels:
        return "."
    parts = (
        "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b".\\" else f"\\{b:03d}" for b in label)
        for label in labels
    )
    return ".".join(parts) + "."


# -- the server --------------------------------------------------------------------------------


def format_address(address: Any) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(server: DatagramServer[bytes, bytes]) -> None:
    """Serve until SIGINT or SIGTERM, printing the bound address first."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            print("listening on", ", ".join(map(format_address, addresses)), flush=True)
            async for _ in signals:
                await server.shutdown(grace_period=1.0)
                break


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, load the zone and answer queries until interrupted."""
    parser = argparse.ArgumentParser(description="Answer A/AAAA DNS queries from a zone file.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=5300, help="port to bind; 0 picks a free one (5300)"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument(
        "--zone",
        type=Path,
        default=Path(__file__).with_name("zone.txt"),
        help="the zone file (examples/zone.txt)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print a line per query")
    args = parser.parse_args(argv)
    try:
        zone = Zone.from_text(args.zone.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"{args.zone}: {exc}")

    async def handler(request: DatagramRequest[bytes, bytes]) -> None:
        response, description = answer_untrusted(request.packet, zone)
        print(f"{format_address(request.address)} {description}", flush=True)
        if response is not None:
            await request.respond(response)

    async def quiet_handler(request: DatagramRequest[bytes, bytes]) -> bytes | None:
        return response_untrusted(request.packet, zone)  # the reply, or None: no reply

    server = DatagramServer(args.host, args.port, quiet_handler if args.quiet else handler)
    backend = "asyncio" if args.backend == "uvloop" else args.backend
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    anyio.run(serve, server, backend=backend, backend_options=options)


if __name__ == "__main__":
    main()
