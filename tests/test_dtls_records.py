"""The sans-io half of DTLS: record framing, ClientHello parsing, cookies. Bytes in, bytes out."""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("OpenSSL", reason="the dtls extra (pyOpenSSL) is not installed")

from anydgram.dtls._association import Association
from anydgram.dtls._contexts import client_context
from anydgram.dtls._records import (
    CookieJar,
    first_epoch0_number,
    hello_verify_request,
    pack_records,
    parse_client_hello_untrusted,
    record_types_untrusted,
    shift_epoch0,
)


def record(content_type: int, payload: bytes, number: int = 0) -> bytes:
    return (
        bytes([content_type])
        + b"\xfe\xfd"
        + number.to_bytes(8)
        + len(payload).to_bytes(2)
        + payload
    )


def real_hello() -> bytes:
    association = Association(client_context(verify=False), mtu=1200, server=False)
    assert not association.handshake()
    (hello,) = association.outgoing()
    return hello


def test_records_are_packed_whole_into_datagrams_up_to_the_mtu() -> None:
    records = [record(22, bytes(100), n) for n in range(5)]  # 113 bytes each
    datagrams = pack_records(b"".join(records), 250)
    assert datagrams == [records[0] + records[1], records[2] + records[3], records[4]]
    # A record longer than the MTU still goes out, alone.
    big = record(23, bytes(400))
    assert pack_records(records[0] + big + records[1], 250) == [records[0], big, records[1]]
    assert pack_records(b"", 250) == []


def test_epoch0_record_numbers_shift_and_encrypted_ones_stay() -> None:
    epoch1 = 1 << 48  # epoch 1, record number 0: 8 bytes of epoch and number
    stream = record(22, b"a" * 5, 3) + record(20, b"\x01", 4) + record(22, b"b" * 40, epoch1)
    assert first_epoch0_number(stream) == 3
    assert first_epoch0_number(record(23, b"x", epoch1 + 7)) is None
    assert shift_epoch0(stream, 0) is stream
    shifted = record(22, b"a" * 5, 5) + record(20, b"\x01", 6) + record(22, b"b" * 40, epoch1)
    assert shift_epoch0(stream, 2) == shifted


def test_record_types_of_untrusted_bytes() -> None:
    assert record_types_untrusted(record(22, b"a") + record(23, b"bc")) == [22, 23]
    assert record_types_untrusted(b"") is None
    assert record_types_untrusted(record(23, b"abc")[:-1]) is None  # cut short
    assert record_types_untrusted(b"\x17\x03\x03" + bytes(10)) is None  # a TLS, not DTLS, version


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20)
    hello = real_hello()
    for size in range(200):
        junk = bytes(rng.getrandbits(8) for _ in range(size))
        record_types_untrusted(junk)
        assert parse_client_hello_untrusted(junk) is None or junk[0] == 22
        # Damage a real hello anywhere, or cut it anywhere: a ClientHello or None, no error.
        damaged = bytearray(hello)
        damaged[rng.randrange(len(hello))] ^= 1 << rng.randrange(8)
        parse_client_hello_untrusted(bytes(damaged))
        parse_client_hello_untrusted(hello[: rng.randrange(len(hello))])


def test_client_hello_fields_and_the_hello_verify_request() -> None:
    hello = real_hello()
    parsed = parse_client_hello_untrusted(hello)
    assert parsed is not None
    assert parsed.cookie == b""
    assert parsed.record_number == hello[3:11]
    reply = hello_verify_request(parsed, b"c" * 32)
    assert len(reply) < len(hello)
    assert reply[0] == 22  # handshake
    assert reply[3:11] == parsed.record_number  # echoes the hello's record number
    assert reply[13] == 3  # HelloVerifyRequest
    assert reply.endswith(bytes([32]) + b"c" * 32)
    # The client takes it and answers with the cookie.
    association = Association(client_context(verify=False), mtu=1200, server=False)
    association.handshake()
    first = parse_client_hello_untrusted(association.outgoing()[0])
    assert first is not None
    association.feed_untrusted(hello_verify_request(first, b"k" * 32))
    association.handshake()
    second = parse_client_hello_untrusted(association.outgoing()[0])
    assert second is not None
    assert second.cookie == b"k" * 32
    assert second.fingerprint == first.fingerprint  # the cookie is bound to the rest


def test_fragmented_or_non_hello_records_are_refused() -> None:
    hello = bytearray(real_hello())
    fragment_offset = 13 + 6
    hello[fragment_offset + 2] = 1
    assert parse_client_hello_untrusted(bytes(hello)) is None
    assert parse_client_hello_untrusted(record(23, bytes(80))) is None


def test_cookies_bind_the_address_and_hello_and_rotate() -> None:
    jar = CookieJar(period=30.0, secret=os.urandom(32))
    association = Association(client_context(verify=False), mtu=1200, server=False)
    association.handshake()
    hello = parse_client_hello_untrusted(association.outgoing()[0])
    assert hello is not None
    address = ("127.0.0.1", 5000)
    cookie = jar.cookie(address, hello, now=100.0)
    association.feed_untrusted(hello_verify_request(hello, cookie))
    association.handshake()
    answered = parse_client_hello_untrusted(association.outgoing()[0])
    assert answered is not None
    assert jar.valid(address, answered, now=100.0)
    assert jar.valid(address, answered, now=125.0)  # the next period still accepts it
    assert not jar.valid(address, answered, now=200.0)  # two periods later: expired
    assert not jar.valid(("127.0.0.2", 5000), answered, now=100.0)
    assert not jar.valid(("127.0.0.1", 5001), answered, now=100.0)
    assert not CookieJar(secret=os.urandom(32)).valid(address, answered, now=100.0)
    assert not jar.valid(address, hello, now=100.0)  # no cookie at all
