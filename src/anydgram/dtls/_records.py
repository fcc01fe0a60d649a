"""DTLS record framing and the stateless cookie exchange, sans-io (no sockets, no clock).

OpenSSL's memory BIO is a byte stream: a flight comes out as records glued together, and
:func:`pack_records` packs whole records into datagrams of at most the MTU. Everything that
reads bytes from the network ends in ``_untrusted`` and returns ``None`` (or raises nothing)
on bad input: a peer's bytes never raise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any, Final

__all__ = (
    "APPLICATION_DATA",
    "ClientHello",
    "CookieJar",
    "first_epoch0_number",
    "hello_verify_request",
    "pack_records",
    "parse_client_hello_untrusted",
    "record_types_untrusted",
    "shift_epoch0",
)

HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23
_CLIENT_HELLO: Final = 1
_HELLO_VERIFY_REQUEST: Final = 3
#: type (1), version (2), epoch (2), sequence number (6), length (2).
RECORD_HEADER_SIZE: Final = 13
#: type (1), length (3), message_seq (2), fragment_offset (3), fragment_length (3).
_HANDSHAKE_HEADER_SIZE: Final = 12
#: RFC 6347 4.2.1: HelloVerifyRequest uses DTLS 1.0's version whatever is negotiated later.
_DTLS10: Final = b"\xfe\xff"
_COOKIE_SIZE: Final = 32


def record_types_untrusted(datagram: bytes) -> list[int] | None:
    """The content types of the records in ``datagram``, or ``None`` if it is not records."""
    types: list[int] = []
    offset, end = 0, len(datagram)
    while offset < end:
        if end - offset < RECORD_HEADER_SIZE:
            return None
        length = int.from_bytes(datagram[offset + 11 : offset + 13])
        if datagram[offset + 1] != 0xFE or offset + RECORD_HEADER_SIZE + length > end:
            return None  # not a DTLS version byte, or a record cut short
        types.append(datagram[offset])
        offset += RECORD_HEADER_SIZE + length
    return types or None


def pack_records(stream: bytes, mtu: int) -> list[bytes]:
    """Split OpenSSL's output (trusted) into whole records, packed into datagrams <= ``mtu``.

    A record longer than ``mtu`` (application data the caller chose to send whole) gets a
    datagram of its own.
    """
    datagrams: list[bytes] = []
    start = offset = 0
    end = len(stream)
    while offset < end:
        length = RECORD_HEADER_SIZE + int.from_bytes(stream[offset + 11 : offset + 13])
        if offset > start and offset + length - start > mtu:
            datagrams.append(stream[start:offset])
            start = offset
        offset += length
    if offset > start:
        datagrams.append(stream[start:offset])
    return datagrams


def first_epoch0_number(stream: bytes) -> int | None:
    """The record number of the first unencrypted (epoch 0) record in OpenSSL's output."""
    offset, end = 0, len(stream)
    while offset + RECORD_HEADER_SIZE <= end:
        if stream[offset + 3 : offset + 5] == b"\0\0":
            return int.from_bytes(stream[offset + 5 : offset + 11])
        offset += RECORD_HEADER_SIZE + int.from_bytes(stream[offset + 11 : offset + 13])
    return None


def shift_epoch0(stream: bytes, shift: int) -> bytes:
    """OpenSSL's output with ``shift`` added to each unencrypted (epoch 0) record number.

    Epoch-0 records carry no MAC, so their numbers may be rewritten; encrypted records are
    left alone (their numbers are authenticated, and count from 0 again in epoch 1).
    """
    if not shift:
        return stream
    out = bytearray(stream)
    offset, end = 0, len(stream)
    while offset + RECORD_HEADER_SIZE <= end:
        if stream[offset + 3 : offset + 5] == b"\0\0":
            number = int.from_bytes(stream[offset + 5 : offset + 11]) + shift
            out[offset + 5 : offset + 11] = number.to_bytes(6)
        offset += RECORD_HEADER_SIZE + int.from_bytes(stream[offset + 11 : offset + 13])
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the cookie exchange needs from a ClientHello."""

    #: Epoch and sequence number of its record (8 bytes), echoed in the HelloVerifyRequest.
    record_number: bytes
    cookie: bytes
    #: The message without its cookie: a retry must repeat it (RFC 6347 4.2.1), so the
    #: cookie is bound to it.
    fingerprint: bytes


def parse_client_hello_untrusted(datagram: bytes) -> ClientHello | None:
    """The ClientHello starting ``datagram``, or ``None`` if it is anything else.

    A fragmented ClientHello is refused: reassembling it would need per-peer state before
    the peer has proved its address.
    """
    header = RECORD_HEADER_SIZE
    if len(datagram) < header + _HANDSHAKE_HEADER_SIZE + 35:
        return None
    if datagram[0] != HANDSHAKE or datagram[1] != 0xFE or datagram[3:5] != b"\0\0":
        return None
    record_length = int.from_bytes(datagram[11:13])
    record = datagram[header : header + record_length]
    if len(record) != record_length or record[0] != _CLIENT_HELLO:
        return None
    message_length = int.from_bytes(record[1:4])
    fragment_offset = int.from_bytes(record[6:9])
    fragment_length = int.from_bytes(record[9:12])
    if fragment_offset != 0 or fragment_length != message_length:
        return None
    body = record[_HANDSHAKE_HEADER_SIZE : _HANDSHAKE_HEADER_SIZE + message_length]
    if len(body) != message_length:
        return None
    # client_version (2), random (32), session_id <0..32>, cookie <0..255>, the rest.
    session_end = 35 + body[34]
    if session_end >= len(body):
        return None
    cookie_end = session_end + 1 + body[session_end]
    if cookie_end > len(body):
        return None
    return ClientHello(
        record_number=datagram[3:11],
        cookie=body[session_end + 1 : cookie_end],
        fingerprint=body[:session_end] + body[cookie_end:],
    )


def hello_verify_request(hello: ClientHello, cookie: bytes) -> bytes:
    """The HelloVerifyRequest that answers ``hello`` with ``cookie`` (one record)."""
    body = _DTLS10 + bytes([len(cookie)]) + cookie
    size = len(body).to_bytes(3)
    # message_seq 0 and the ClientHello's record number, as OpenSSL's own server does.
    message = bytes([_HELLO_VERIFY_REQUEST]) + size + b"\0\0" + b"\0\0\0" + size + body
    return bytes([HANDSHAKE]) + _DTLS10 + hello.record_number + len(message).to_bytes(2) + message


class CookieJar:
    """Stateless cookies: an HMAC over the client's address and hello, with a rotating key.

    The key of period *n* is derived from a random secret and *n*; a cookie made in the
    current or the previous period is accepted, so a cookie lives one to two periods and a
    leaked one soon stops working. Nothing is stored per client.
    """

    __slots__ = ("_period", "_secret")

    def __init__(self, period: float = 30.0, secret: bytes | None = None) -> None:
        self._secret = os.urandom(32) if secret is None else secret
        self._period = period

    def _make(self, tick: int, address: Any, hello: ClientHello) -> bytes:
        key = hmac.digest(self._secret, tick.to_bytes(8, signed=True), hashlib.sha256)
        signed = repr(address).encode() + b"\0" + hello.fingerprint
        return hmac.digest(key, signed, hashlib.sha256)[:_COOKIE_SIZE]

    def cookie(self, address: Any, hello: ClientHello, now: float) -> bytes:
        """The cookie for ``hello`` from ``address`` at time ``now``."""
        return self._make(int(now // self._period), address, hello)

    def valid(self, address: Any, hello: ClientHello, now: float) -> bool:
        """Whether ``hello`` carries a cookie this jar made for ``address`` lately."""
        if len(hello.cookie) != _COOKIE_SIZE:
            return False
        tick = int(now // self._period)
        current = hmac.compare_digest(hello.cookie, self._make(tick, address, hello))
        previous = hmac.compare_digest(hello.cookie, self._make(tick - 1, address, hello))
        return current | previous  # both compared: no timing hint of which period matched
