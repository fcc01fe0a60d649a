"""Serializers for packets that already are bytes or text."""

from __future__ import annotations

import codecs

from .._errors import DeserializeError
from ._abc import Serializer, clip, require_instance

__all__ = ("BytesSerializer", "StringSerializer")

#: The longest datagram the "punycode" codec is given: its decoder takes time that grows
#: with the square of the input's length (130 ms for 64 KB).
MAX_PUNYCODE_LENGTH = 1024
#: The longest IDNA label with the ACE prefix ("xn--") that can decode: the codec checks that
#: the decoded label encodes back to the same bytes, and it encodes none longer than 63.
_MAX_ACE_LABEL_LENGTH = 63


def _check_idna(data: bytes) -> None:
    # The codec runs the quadratic punycode decoder on each "xn--" label before it finds
    # out that a long one cannot round-trip; refusing those first changes no outcome.
    for label in data.split(b"."):
        if len(label) > _MAX_ACE_LABEL_LENGTH and label.startswith(b"xn--"):
            raise DeserializeError(f"datagram is not valid idna: a {len(label)}-byte label")


def _check_punycode(data: bytes) -> None:
    if len(data) > MAX_PUNYCODE_LENGTH:
        raise DeserializeError(
            f"datagram of {len(data)} bytes is longer than the {MAX_PUNYCODE_LENGTH} bytes "
            "accepted for punycode"
        )


_CHECKS = {"idna": _check_idna, "punycode": _check_punycode}


class BytesSerializer(Serializer[bytes, bytes]):
    """Passes bytes through unchanged: the packet is the datagram.

    This is what every endpoint uses when no protocol is given. Every datagram is a valid
    packet, so :meth:`deserialize` never fails.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def serialize(self, packet: bytes | bytearray | memoryview) -> bytes:
        """Return ``packet`` as :class:`bytes`.

        Args:
            packet: A :class:`bytes`, :class:`bytearray` or :class:`memoryview`; the last two
                are copied.

        Returns:
            The same bytes.

        Raises:
            TypeError: ``packet`` is not a bytes-like object of those types.
        """
        if type(packet) is bytes:
            return packet
        require_instance(
            packet, (bytes, bytearray, memoryview), "expected bytes, bytearray or memoryview"
        )
        return bytes(packet)

    def deserialize(self, data: bytes) -> bytes:
        """Return the received bytes.

        Args:
            data: The bytes of one datagram.

        Returns:
            ``data`` itself.
        """
        return data if type(data) is bytes else bytes(data)


class StringSerializer(Serializer[str, str]):
    """Sends :class:`str` packets encoded as text.

    Encoding and decoding are strict: a datagram that is not valid in ``encoding`` is a
    :class:`~anydgram.DeserializeError`, never silently repaired.

    The standard library decodes punycode in time that grows with the square of the input,
    so with ``"punycode"`` a datagram over 1,024 bytes is refused, and with ``"idna"`` a
    label that starts with ``xn--`` and is too long to be valid is refused before it is
    decoded.

    Args:
        encoding: Any text encoding the :mod:`codecs` module knows.

    Raises:
        LookupError: ``encoding`` is unknown or is not a text encoding (``"base64"``, say).
        TypeError: ``encoding`` is not a string.
    """

    __slots__ = ("_check", "_encoding")

    def __init__(self, encoding: str = "utf-8") -> None:
        require_instance(encoding, str, "encoding must be a str")
        codecs.lookup(encoding)
        # The lookup above accepts bytes-to-bytes codecs too; str.encode() refuses them.
        "".encode(encoding)
        self._encoding = encoding
        self._check = _CHECKS.get(codecs.lookup(encoding).name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoding={self._encoding!r})"

    @property
    def encoding(self) -> str:
        """The text encoding, as given to the constructor."""
        return self._encoding

    def serialize(self, packet: str) -> bytes:
        """Encode ``packet``.

        Args:
            packet: The text to send.

        Returns:
            The encoded text.

        Raises:
            TypeError: ``packet`` is not a :class:`str`.
            UnicodeEncodeError: ``packet`` has characters ``encoding`` cannot represent.
        """
        require_instance(packet, str, "expected str")
        return packet.encode(self._encoding)

    def deserialize(self, data: bytes) -> str:
        """Decode received bytes.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The decoded text.

        Raises:
            DeserializeError: ``data`` is not valid in ``encoding``.
        """
        if self._check is not None:
            self._check(data)
        try:
            return data.decode(self._encoding)
        # UnicodeDecodeError for most codecs; a few (idna, punycode) raise plain UnicodeError.
        except UnicodeError as exc:
            raise DeserializeError(
                f"datagram is not valid {self._encoding}: {clip(str(exc))}"
            ) from exc
