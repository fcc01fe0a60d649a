"""A serializer for fixed-layout binary records, built on :mod:`struct`."""

from __future__ import annotations

import struct
from typing import Any

from .._errors import DeserializeError
from ._abc import Serializer, require_instance

__all__ = ("StructSerializer",)


class StructSerializer(Serializer[tuple[Any, ...], tuple[Any, ...]]):
    """Packs tuples of values into a fixed binary layout described by a :mod:`struct` format.

    Every datagram has exactly :attr:`size` bytes; any other length is a
    :class:`~anydgram.DeserializeError`. Use a byte-order prefix such as ``"!"`` (network
    order) so both ends agree whatever their platform.

    Example:
        ``StructSerializer("!IHd")`` sends ``(sequence, port, reading)`` as 14 bytes.

    Args:
        fmt: A :mod:`struct` format string.

    Raises:
        TypeError: ``fmt`` is not a string.
        ValueError: ``fmt`` is not a valid format.
    """

    __slots__ = ("_item_count", "_struct")

    def __init__(self, fmt: str) -> None:
        require_instance(fmt, str, "fmt must be a str")
        try:
            self._struct = struct.Struct(fmt)
        except struct.error as exc:
            raise ValueError(f"invalid struct format {fmt!r}: {exc}") from exc
        # struct does not say how many values a format holds; unpacking zeros tells us.
        self._item_count = len(self._struct.unpack(bytes(self._struct.size)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._struct.format!r})"

    @property
    def format(self) -> str:
        """The :mod:`struct` format string."""
        return self._struct.format

    @property
    def size(self) -> int:
        """The length of every datagram, in bytes."""
        return self._struct.size

    def serialize(self, packet: tuple[Any, ...]) -> bytes:
        """Pack the values of ``packet``.

        Args:
            packet: A tuple (a named tuple is fine) with one value per format item.

        Returns:
            Exactly :attr:`size` bytes.

        Raises:
            TypeError: ``packet`` is not a tuple.
            ValueError: ``packet`` has the wrong number of values, or a value does not fit its
                format item.
        """
        require_instance(packet, tuple, "expected a tuple")
        if len(packet) != self._item_count:
            raise ValueError(
                f"format {self._struct.format!r} packs {self._item_count} values, got {len(packet)}"
            )
        try:
            return self._struct.pack(*packet)
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"cannot pack {packet!r} as {self._struct.format!r}: {exc}") from exc

    def deserialize(self, data: bytes) -> tuple[Any, ...]:
        """Unpack a received datagram.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The unpacked values.

        Raises:
            DeserializeError: ``data`` is not exactly :attr:`size` bytes long.
        """
        if len(data) != self._struct.size:
            raise DeserializeError(
                f"expected {self._struct.size} bytes for format {self._struct.format!r}, "
                f"got {len(data)}"
            )
        try:
            return self._struct.unpack(data)
        except struct.error as exc:  # pragma: no cover - any bytes of the right length unpack
            raise DeserializeError(f"cannot unpack datagram: {exc}") from exc
