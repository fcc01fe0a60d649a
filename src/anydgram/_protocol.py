"""The sans-io protocol layer: packets to datagrams and back.

Nothing here touches a socket, an event loop or a clock, so the async endpoints, the server and
the blocking client all share one :class:`DatagramProtocol` and one set of serializers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from ._errors import DatagramProtocolParseError, DatagramTooLargeError, DeserializeError
from .serializers._abc import clip

#: The longest message a :class:`DatagramProtocolParseError` carries; a longer one from a
#: serializer is cut. It ends up in logs, and the datagram is on ``.data`` already.
_MAX_PARSE_ERROR_MESSAGE = 200

if TYPE_CHECKING:
    from .serializers import Serializer

__all__ = (
    "MAX_DATAGRAM_SIZE",
    "MAX_UDP_PAYLOAD",
    "DatagramProtocol",
    "RecvT",
    "SendT",
    "default_protocol",
)

SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")

#: The largest UDP payload over IPv4: 65,535 minus the 8-byte UDP and 20-byte IPv4 headers.
MAX_UDP_PAYLOAD = 65507

#: The highest ``max_datagram_size`` a protocol accepts (16 MiB): IPv6 carries 65,527 bytes
#: of UDP payload and a Unix datagram socket as much as its send buffer holds.
MAX_DATAGRAM_SIZE = 1 << 24


class DatagramProtocol(Generic[SendT, RecvT]):
    """Turns packets into datagrams and datagrams into packets.

    A protocol wraps a :class:`~anydgram.serializers.Serializer` and enforces a size limit on
    what is sent. The same protocol object can be shared by any number of endpoints.

    Args:
        serializer: Converts packets to bytes and back. Sending uses its ``serialize`` for
            packets of type ``SendT``; receiving uses ``deserialize`` to produce ``RecvT``.
        max_datagram_size: The largest datagram :meth:`make_datagram` produces, in bytes.
            Receivers read with a buffer one byte larger, so longer datagrams are detected and
            never parsed. The default, 65,507, is the most IPv4 carries; IPv6 carries up to
            65,527 and a Unix datagram socket as much as its send buffer holds (up to 16 MiB
            here). A datagram longer than its socket's family carries is refused when sent,
            with :exc:`DatagramTooLargeError`.

    Raises:
        ValueError: ``max_datagram_size`` is not between 1 and 16 MiB (16,777,216).
        TypeError: ``max_datagram_size`` is not an int.
    """

    __slots__ = ("_max_datagram_size", "_serializer")

    def __init__(
        self,
        serializer: Serializer[SendT, RecvT],
        *,
        max_datagram_size: int = MAX_UDP_PAYLOAD,
    ) -> None:
        if not isinstance(max_datagram_size, int) or isinstance(max_datagram_size, bool):
            raise TypeError(
                f"max_datagram_size must be an int, not {type(max_datagram_size).__name__}"
            )
        if not 1 <= max_datagram_size <= MAX_DATAGRAM_SIZE:
            raise ValueError(
                f"max_datagram_size must be between 1 and {MAX_DATAGRAM_SIZE}, "
                f"got {max_datagram_size}"
            )
        self._serializer = serializer
        self._max_datagram_size = max_datagram_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._serializer!r}, "
            f"max_datagram_size={self._max_datagram_size})"
        )

    @property
    def serializer(self) -> Serializer[SendT, RecvT]:
        """The serializer this protocol wraps."""
        return self._serializer

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram this protocol sends or accepts, in bytes."""
        return self._max_datagram_size

    def make_datagram(self, packet: SendT) -> bytes:
        """Serialize ``packet`` into the bytes of one datagram.

        Raises:
            DatagramTooLargeError: The serialized packet is longer than
                :attr:`max_datagram_size`.
            Exception: Whatever the serializer raises for a packet it cannot represent (for
                instance :class:`TypeError` from JSON); that is the caller's mistake.
        """
        data = self._serializer.serialize(packet)
        if len(data) > self._max_datagram_size:
            raise DatagramTooLargeError(len(data), self._max_datagram_size)
        return data

    def build_packet_from_datagram(self, data: bytes) -> RecvT:
        """Deserialize one received datagram (untrusted input) into a packet.

        Raises:
            DatagramProtocolParseError: The serializer rejected the bytes, or they are longer
                than :attr:`max_datagram_size`. ``.data`` holds the bytes, ``.__cause__`` the
                serializer's :class:`~anydgram.DeserializeError`. The message is the
                serializer's, cut to 200 characters: it names the problem, never the data.
        """
        if len(data) > self._max_datagram_size:
            raise DatagramProtocolParseError(
                f"datagram of {len(data)} bytes exceeds the limit of "
                f"{self._max_datagram_size} bytes",
                data,
            )
        try:
            return self._serializer.deserialize(data)
        except DeserializeError as exc:
            message = clip(str(exc) or "invalid datagram", _MAX_PARSE_ERROR_MESSAGE)
            raise DatagramProtocolParseError(message, data) from exc


_default_protocol: DatagramProtocol[bytes, bytes] | None = None


def default_protocol() -> DatagramProtocol[bytes, bytes]:
    """The protocol used where none is given: raw :class:`bytes`, up to 65,507 per datagram."""
    global _default_protocol  # one shared instance: protocols are stateless
    if _default_protocol is None:
        from .serializers import BytesSerializer

        _default_protocol = DatagramProtocol(BytesSerializer())
    return _default_protocol
