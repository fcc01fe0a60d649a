"""Tests for :class:`anydgram.DatagramProtocol`: plain function calls, bytes in, objects out."""

from __future__ import annotations

from typing import Any, assert_type

import pytest

from anydgram._errors import DatagramProtocolParseError, DatagramTooLargeError, DeserializeError
from anydgram._protocol import MAX_UDP_PAYLOAD, DatagramProtocol
from anydgram.serializers import BytesSerializer, JSONSerializer, StringSerializer


def test_round_trip_bytes() -> None:
    protocol = DatagramProtocol(BytesSerializer())
    assert_type(protocol, DatagramProtocol[bytes, bytes])
    datagram = protocol.make_datagram(b"ping")
    assert datagram == b"ping"
    assert protocol.build_packet_from_datagram(datagram) == b"ping"


def test_round_trip_json() -> None:
    protocol: DatagramProtocol[Any, Any] = DatagramProtocol(JSONSerializer())
    packet = {"op": "ping", "seq": 1, "args": [1.5, None]}
    assert protocol.build_packet_from_datagram(protocol.make_datagram(packet)) == packet


def test_types_follow_the_serializer() -> None:
    protocol = DatagramProtocol(StringSerializer())
    assert_type(protocol.build_packet_from_datagram(b"x"), str)
    assert protocol.build_packet_from_datagram(protocol.make_datagram("héllo")) == "héllo"


def test_defaults_and_properties() -> None:
    serializer = BytesSerializer()
    protocol = DatagramProtocol(serializer)
    assert MAX_UDP_PAYLOAD == 65507
    assert protocol.max_datagram_size == MAX_UDP_PAYLOAD
    assert protocol.serializer is serializer
    assert repr(protocol) == "DatagramProtocol(BytesSerializer(), max_datagram_size=65507)"


def test_too_large_packet_is_refused_with_size_and_limit() -> None:
    protocol = DatagramProtocol(BytesSerializer(), max_datagram_size=100)
    assert protocol.make_datagram(bytes(100)) == bytes(100)
    with pytest.raises(DatagramTooLargeError) as info:
        protocol.make_datagram(bytes(101))
    assert info.value.size == 101
    assert info.value.limit == 100
    assert isinstance(info.value, ValueError)
    assert "101" in str(info.value)
    assert "100" in str(info.value)


def test_limit_applies_to_the_serialized_size() -> None:
    protocol: DatagramProtocol[Any, Any] = DatagramProtocol(JSONSerializer(), max_datagram_size=10)
    assert protocol.make_datagram("a" * 8) == b'"aaaaaaaa"'
    with pytest.raises(DatagramTooLargeError) as info:
        protocol.make_datagram("a" * 9)  # 11 bytes once quoted
    assert (info.value.size, info.value.limit) == (11, 10)


def test_parse_error_keeps_the_evidence() -> None:
    protocol: DatagramProtocol[Any, Any] = DatagramProtocol(JSONSerializer())
    data = b'{"op": "ping"'
    with pytest.raises(DatagramProtocolParseError) as info:
        protocol.build_packet_from_datagram(data)
    error = info.value
    assert error.data == data
    assert error.address is None
    assert isinstance(error.__cause__, DeserializeError)
    assert str(error) == str(error.__cause__)
    assert isinstance(error, ValueError)


def test_protocol_stays_usable_after_a_parse_error() -> None:
    protocol = DatagramProtocol(StringSerializer())
    with pytest.raises(DatagramProtocolParseError):
        protocol.build_packet_from_datagram(b"\xff")
    assert protocol.build_packet_from_datagram(b"ok") == "ok"


def test_oversize_received_datagram_is_never_parsed() -> None:
    class Spy(BytesSerializer):
        __slots__ = ()

        def deserialize(self, data: bytes) -> bytes:
            raise AssertionError("an oversize datagram reached the serializer")

    protocol = DatagramProtocol(Spy(), max_datagram_size=4)
    with pytest.raises(DatagramProtocolParseError, match="exceeds the limit") as info:
        protocol.build_packet_from_datagram(b"12345")
    assert info.value.data == b"12345"
    assert info.value.address is None
    assert info.value.__cause__ is None


def test_serializer_errors_on_send_are_the_callers() -> None:
    protocol: DatagramProtocol[Any, Any] = DatagramProtocol(JSONSerializer())
    with pytest.raises(TypeError):
        protocol.make_datagram({"not json": object()})


def test_an_empty_message_still_explains_itself() -> None:
    class Terse(BytesSerializer):
        __slots__ = ()

        def deserialize(self, data: bytes) -> bytes:
            raise DeserializeError

    with pytest.raises(DatagramProtocolParseError, match="invalid datagram"):
        DatagramProtocol(Terse()).build_packet_from_datagram(b"x")


@pytest.mark.parametrize("size", [1, 1200, MAX_UDP_PAYLOAD, 65527, 1 << 20, 1 << 24])
def test_valid_max_datagram_sizes(size: int) -> None:
    assert DatagramProtocol(BytesSerializer(), max_datagram_size=size).max_datagram_size == size


@pytest.mark.parametrize("size", [0, -1, (1 << 24) + 1])
def test_out_of_range_max_datagram_size_is_a_value_error(size: int) -> None:
    with pytest.raises(ValueError, match="max_datagram_size"):
        DatagramProtocol(BytesSerializer(), max_datagram_size=size)


@pytest.mark.parametrize("size", ["1200", 1200.0, True, None])
def test_non_int_max_datagram_size_is_a_type_error(size: Any) -> None:
    with pytest.raises(TypeError, match="max_datagram_size"):
        DatagramProtocol(BytesSerializer(), max_datagram_size=size)
