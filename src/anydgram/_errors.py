"""The exceptions the protocol layer raises.

A peer's bad bytes become a :class:`DatagramProtocolParseError` that keeps the evidence; a packet
the caller asks us to send that does not fit is a :class:`DatagramTooLargeError`. Both are
:class:`ValueError`, so code that already guards conversions keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = ("DatagramProtocolParseError", "DatagramTooLargeError", "DeserializeError")


class DeserializeError(ValueError):
    """A serializer could not turn bytes into a packet.

    Serializers raise this (and only this) for any input they cannot decode, whatever the
    underlying library raised; the original error is kept as ``__cause__``.
    """


class DatagramProtocolParseError(ValueError):
    """A received datagram could not be turned into a packet.

    This is the peer's fault, never a crash: the endpoint that raised it stays usable.

    Attributes:
        data: The raw datagram, exactly as received.
        address: The sender's address. ``None`` when raised by the protocol layer itself; the
            I/O layer fills it in before the error reaches the caller.
    """

    data: bytes
    address: Any

    def __init__(self, message: str, data: bytes, address: Any = None) -> None:
        super().__init__(message)
        self.data = data
        self.address = address

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.data, self.address))


class DatagramTooLargeError(ValueError):
    """A packet serializes to more bytes than one datagram may carry.

    Raised before anything is sent.

    Attributes:
        size: The size of the datagram that was refused, in bytes.
        limit: The largest size allowed, in bytes.
    """

    size: int
    limit: int

    def __init__(self, size: int, limit: int, message: str | None = None) -> None:
        if message is None:
            message = f"datagram of {size} bytes exceeds the limit of {limit} bytes"
        super().__init__(message)
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.limit, self.args[0]))
