"""Serializers for the binary object formats MessagePack and CBOR (optional dependencies)."""

from __future__ import annotations

import io
from typing import Any

from .._errors import DeserializeError
from ._abc import Serializer, import_optional

__all__ = ("CBORSerializer", "MessagePackSerializer")


class MessagePackSerializer(Serializer[Any, Any]):
    """Sends `MessagePack <https://msgpack.org/>`_ values, using the msgpack library.

    Needs the ``msgpack`` extra (``pip install 'anydgram[msgpack]'``).

    The library's defaults apply, which matter for what comes back:

    * strings are UTF-8 ``str`` and :class:`bytes` stay bytes (invalid UTF-8 in a string is
      a :class:`~anydgram.DeserializeError`);
    * tuples are sent as arrays and come back as lists;
    * map keys in received data must be ``str`` or :class:`bytes`, so ``{1: "a"}``
      serializes but does not deserialize. This guards against maps of integer keys crafted
      to collide in a dict;
    * container and string lengths are bounded by the size of the datagram, so a forged
      length header cannot make the decoder allocate more than the datagram justifies.

    Raises:
        ImportError: msgpack is not installed.
    """

    __slots__ = ("_packb", "_unpackb")

    def __init__(self) -> None:
        msgpack = import_optional("msgpack", owner=type(self).__name__, extra="msgpack")
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def serialize(self, packet: Any) -> bytes:
        """Encode ``packet`` as one MessagePack object.

        Args:
            packet: A value of a type MessagePack can represent.

        Returns:
            The encoded packet.

        Raises:
            TypeError: ``packet`` holds a value MessagePack cannot represent.
            OverflowError: ``packet`` holds an integer outside ``-2**63`` to ``2**64 - 1``.
            ValueError: ``packet`` is nested too deeply or holds an object too large.
        """
        data: bytes = self._packb(packet)
        return data

    def deserialize(self, data: bytes) -> Any:
        """Decode a MessagePack datagram.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The decoded value.

        Raises:
            DeserializeError: ``data`` is not exactly one valid MessagePack object.
        """
        try:
            return self._unpackb(data, raw=False)
        # msgpack reports bad input with a handful of classes (ExtraData, FormatError,
        # StackError, ValueError, UnicodeDecodeError, ...) that share no useful base.
        except Exception as exc:
            raise DeserializeError(f"invalid MessagePack: {exc!r}") from exc


class CBORSerializer(Serializer[Any, Any]):
    """Sends `CBOR <https://cbor.io/>`_ values (RFC 8949), using the cbor2 library.

    Needs the ``cbor`` extra (``pip install 'anydgram[cbor]'``).

    cbor2's defaults apply: besides the JSON-like types it round-trips :class:`bytes`,
    integers of any size, sets, :class:`~decimal.Decimal`, dates, timezone-aware datetimes,
    UUIDs, IP addresses and other semantic tags; tuples come back as lists. Nesting is
    limited to cbor2's default depth, and trailing bytes after the first data item are a
    :class:`~anydgram.DeserializeError`.

    Warning:
        Received data may use those semantic tags too, so check what you receive before
        trusting its shape. In particular CBOR's shared references (tags 28 and 29) let a
        peer send a list that contains itself, or a few hundred bytes that decode, quickly,
        into a structure whose nodes are shared so often that walking it (``repr()``,
        logging, re-encoding as JSON) never finishes. Bound any walk over a packet from an
        untrusted peer (by depth and node count), or use :class:`JSONSerializer` or
        :class:`MessagePackSerializer`, which have no references.

    Raises:
        ImportError: cbor2 is not installed.
    """

    __slots__ = ("_decoder_class", "_dumps")

    def __init__(self) -> None:
        cbor2 = import_optional("cbor2", owner=type(self).__name__, extra="cbor")
        self._dumps = cbor2.dumps
        self._decoder_class = cbor2.CBORDecoder

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def serialize(self, packet: Any) -> bytes:
        """Encode ``packet`` as one CBOR data item.

        Args:
            packet: A value of a type cbor2 can encode.

        Returns:
            The encoded packet.

        Raises:
            Exception: cbor2's ``CBOREncodeError`` for a value it cannot encode, such as an
                unsupported type or a :class:`~datetime.datetime` without a time zone.
        """
        data: bytes = self._dumps(packet)
        return data

    def deserialize(self, data: bytes) -> Any:
        """Decode a CBOR datagram.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The decoded value.

        Raises:
            DeserializeError: ``data`` is not exactly one valid CBOR data item.
        """
        # cbor2.loads() ignores bytes after the first item; decoding from a stream lets us
        # see how much was consumed.
        stream = io.BytesIO(data)
        try:
            packet = self._decoder_class(stream).decode()
        # Semantic tags run arbitrary constructors (Decimal, datetime, re, ...), so the
        # failures have no common base; the library's own errors derive from CBORError.
        except Exception as exc:
            raise DeserializeError(f"invalid CBOR: {exc!r}") from exc
        if stream.tell() != len(data):
            raise DeserializeError(
                f"invalid CBOR: {len(data) - stream.tell()} bytes after the first data item"
            )
        return packet
