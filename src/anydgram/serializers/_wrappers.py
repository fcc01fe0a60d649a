"""Wrappers that transform another serializer's bytes: compression and base64."""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any, Generic, Literal

from .._errors import DeserializeError
from ._abc import RecvT, SendT, Serializer, clip, require_int, require_serializer

__all__ = ("Base64Serializer", "ZlibSerializer")


class ZlibSerializer(Serializer[SendT, RecvT], Generic[SendT, RecvT]):
    """Compresses another serializer's output with zlib.

    Decompression is bounded: a datagram that would inflate past ``max_size`` bytes is a
    :class:`~anydgram.DeserializeError`, and no more than about ``max_size`` bytes are ever
    produced while finding that out. A small datagram cannot become a memory spike
    (a "zlib bomb"). A truncated stream or bytes after its end are rejected too.

    Every datagram is inflated before the inner serializer sees it, so with
    :class:`~anydgram.serializers.HMACSerializer` put the HMAC outside:
    ``HMACSerializer(ZlibSerializer(inner), key)`` checks the tag on the datagram itself,
    about 4 us for a forged 1 KB datagram, where ``ZlibSerializer(HMACSerializer(inner,
    key))`` first inflates it (up to ``max_size``) and hashes the result, about 1.8 ms for
    one that inflates to 1 MiB. Decoding costs grow with ``max_size``: keep it near your
    largest packet.

    Args:
        inner: The serializer whose output is compressed.
        max_size: The largest decompressed payload accepted, in bytes.
        level: The compression level, from 0 (none) to 9 (best), or -1 for zlib's default.

    Raises:
        TypeError: ``inner`` is not a serializer, or ``max_size`` or ``level`` not an int.
        ValueError: ``max_size`` is less than 1 or ``level`` out of range.
    """

    __slots__ = ("_inner", "_level", "_max_size")

    def __init__(
        self,
        inner: Serializer[SendT, RecvT],
        *,
        max_size: int = 1 << 20,
        level: int = zlib.Z_DEFAULT_COMPRESSION,
    ) -> None:
        require_serializer(inner)
        require_int(max_size, "max_size")
        require_int(level, "level")
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if not -1 <= level <= 9:
            raise ValueError(f"level must be between -1 and 9, got {level}")
        self._inner = inner
        self._max_size = max_size
        self._level = level

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._inner!r}, max_size={self._max_size}, "
            f"level={self._level})"
        )

    @property
    def inner(self) -> Serializer[SendT, RecvT]:
        """The wrapped serializer."""
        return self._inner

    @property
    def max_size(self) -> int:
        """The largest decompressed payload accepted, in bytes."""
        return self._max_size

    def serialize(self, packet: SendT) -> bytes:
        """Serialize ``packet`` with the inner serializer and compress the result.

        Args:
            packet: A packet the inner serializer accepts.

        Returns:
            A zlib stream.

        Raises:
            ValueError: The uncompressed payload is longer than ``max_size``, so a peer using
                the same limit would refuse it.
            Exception: Whatever the inner serializer raises.
        """
        payload = self._inner.serialize(packet)
        if len(payload) > self._max_size:
            raise ValueError(
                f"payload of {len(payload)} bytes exceeds max_size={self._max_size} bytes"
            )
        return zlib.compress(payload, self._level)

    def deserialize(self, data: bytes) -> RecvT:
        """Decompress, within ``max_size``, and hand the result to the inner serializer.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The inner serializer's packet.

        Raises:
            DeserializeError: ``data`` is not one complete zlib stream, inflates past
                ``max_size``, or the inner serializer rejects the payload.
        """
        decompressor = zlib.decompressobj()
        try:
            # Asking for one byte more than allowed is how we tell "exactly max_size" from
            # "more": decompression stops there, whatever the stream claims.
            payload = decompressor.decompress(data, self._max_size + 1)
        except zlib.error as exc:
            raise DeserializeError(f"invalid zlib stream: {clip(str(exc))}") from exc
        if len(payload) > self._max_size:
            raise DeserializeError(f"zlib stream inflates past max_size={self._max_size} bytes")
        if not decompressor.eof:
            raise DeserializeError("truncated zlib stream")
        if decompressor.unused_data:
            raise DeserializeError(
                f"{len(decompressor.unused_data)} bytes after the end of the zlib stream"
            )
        return self._inner.deserialize(payload)


_ALTCHARS: dict[str, bytes | None] = {"standard": None, "urlsafe": b"-_"}


class Base64Serializer(Serializer[SendT, RecvT], Generic[SendT, RecvT]):
    """Encodes another serializer's output as base64 (RFC 4648), for text-only channels.

    Decoding is strict: characters outside the alphabet, missing or misplaced padding,
    whitespace, and non-canonical encodings (unused bits that are not zero) are all a
    :class:`~anydgram.DeserializeError`, so each payload has exactly one valid datagram.

    Args:
        inner: The serializer whose output is encoded.
        alphabet: ``"standard"`` (``+`` and ``/``) or ``"urlsafe"`` (``-`` and ``_``).

    Raises:
        TypeError: ``inner`` is not a serializer.
        ValueError: ``alphabet`` is neither of the two names.
    """

    __slots__ = ("_alphabet", "_altchars", "_inner")

    def __init__(
        self,
        inner: Serializer[SendT, RecvT],
        *,
        alphabet: Literal["standard", "urlsafe"] = "standard",
    ) -> None:
        require_serializer(inner)
        alphabet_name: Any = alphabet
        if alphabet_name not in _ALTCHARS:
            raise ValueError(f"alphabet must be 'standard' or 'urlsafe', got {alphabet_name!r}")
        self._inner = inner
        self._alphabet = alphabet
        self._altchars = _ALTCHARS[alphabet]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, alphabet={self._alphabet!r})"

    @property
    def inner(self) -> Serializer[SendT, RecvT]:
        """The wrapped serializer."""
        return self._inner

    def serialize(self, packet: SendT) -> bytes:
        """Serialize ``packet`` with the inner serializer and base64-encode the result.

        Args:
            packet: A packet the inner serializer accepts.

        Returns:
            Padded base64 with no line breaks.

        Raises:
            Exception: Whatever the inner serializer raises.
        """
        return base64.b64encode(self._inner.serialize(packet), self._altchars)

    def deserialize(self, data: bytes) -> RecvT:
        """Decode base64 strictly and hand the result to the inner serializer.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The inner serializer's packet.

        Raises:
            DeserializeError: ``data`` is not canonical base64 in this alphabet, or the inner
                serializer rejects the payload.
        """
        try:
            payload = base64.b64decode(data, self._altchars, validate=True)
        except binascii.Error as exc:
            raise DeserializeError(f"invalid base64: {clip(str(exc))}") from exc
        # b64decode maps the alternative characters onto "+/" before validating, so it also
        # accepts "+/" in urlsafe input, and it ignores the unused bits of the last
        # character. Re-encoding catches both.
        if base64.b64encode(payload, self._altchars) != data:
            raise DeserializeError("invalid base64: not the canonical encoding")
        return self._inner.deserialize(payload)
