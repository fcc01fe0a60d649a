"""Serializers for the binary object formats MessagePack and CBOR (optional dependencies)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType, ModuleType
from typing import Any

from .._errors import DeserializeError
from ._abc import Serializer, describe, import_optional

__all__ = ("CBORSerializer", "MessagePackSerializer")

# --- CBOR semantic tags -------------------------------------------------------------------
# The tags cbor2 (6.x) decodes with its own decoders that we keep: each builds a bounded,
# inert value (its cost and size follow from the bytes that encode it).
_CBOR_KEPT_TAGS = frozenset(
    {
        0,  # date and time, RFC 3339 string -> datetime
        1,  # date and time, seconds since the epoch -> datetime (UTC)
        2,  # positive bignum -> int
        3,  # negative bignum -> int
        30,  # rational number -> fractions.Fraction
        37,  # UUID -> uuid.UUID
        52,  # IPv4 address or network (RFC 9164) -> ipaddress
        54,  # IPv6 address or network (RFC 9164) -> ipaddress
        100,  # date, days since the epoch -> date
        258,  # set -> set or frozenset
        260,  # IP address (legacy) -> ipaddress
        261,  # IP network or interface (legacy) -> ipaddress
        1004,  # date, RFC 3339 full-date string -> date
        43000,  # complex number -> complex
        55799,  # self-described CBOR marker -> the enclosed value
    }
)

# The tags refused on receipt, with the reason shown in the DeserializeError.
_CBOR_REFUSED_TAGS: Mapping[int, str] = MappingProxyType(
    {
        4: "decimal fractions may carry exponents up to about 10**18 in a few bytes, so "
        "int() or format(value, 'f') on the decoded Decimal never finishes",
        5: "bigfloats may carry exponents up to about 10**18 in a few bytes, so int() or "
        "format(value, 'f') on the decoded Decimal never finishes",
        25: "string references repeat a long string for 3 bytes each, so re-encoding the "
        "packet can be thousands of times larger than the datagram",
        28: "shared values let a few hundred bytes build a structure of 2**59 nodes or a "
        "list that contains itself",
        29: "shared references let a few hundred bytes build a structure of 2**59 nodes or "
        "a list that contains itself",
        35: "regular expressions would be compiled from the peer's pattern, ready for "
        "catastrophic backtracking",
        36: "MIME messages would run the email parser on the peer's text",
        256: "string references repeat a long string for 3 bytes each, so re-encoding the "
        "packet can be thousands of times larger than the datagram",
    }
)

_TagDecoder = Callable[[Any, bool], Any]


class _CBORTagPolicy(Mapping[int, _TagDecoder]):
    """The ``semantic_decoders`` mapping that decides what cbor2 does with each tag.

    cbor2 looks every tag it reads up here first, and calls the decoder found with the
    tag's decoded content. A :class:`KeyError` (for :data:`_CBOR_KEPT_TAGS`) hands the tag
    to cbor2's own decoder. A refused tag gets a decoder that raises, and any other tag one
    that returns it as a plain ``cbor2.CBORTag``: a tag that a later cbor2 learns to decode
    stays raw until it is reviewed and added to the kept tags.

    So every tag outside the kept ones has a decoder, which makes the mapping infinite. It
    iterates over the refused tags only: cbor2 only looks keys up, and were it ever to copy
    the mapping instead, the copy would still refuse them.
    """

    __slots__ = ("_decode_error", "_refusals", "_tag_class")

    def __init__(self, cbor2: ModuleType) -> None:
        self._tag_class: Callable[[int, Any], Any] = cbor2.CBORTag
        self._decode_error: type[Exception] = cbor2.CBORDecodeError
        self._refusals: dict[int, _TagDecoder] = {
            tag: self._refuser(tag, reason) for tag, reason in _CBOR_REFUSED_TAGS.items()
        }

    def __getitem__(self, tag: int) -> _TagDecoder:
        if tag in _CBOR_KEPT_TAGS:
            raise KeyError(tag)
        refusal = self._refusals.get(tag)
        if refusal is not None:
            return refusal
        return self._raw(tag)

    def __iter__(self) -> Iterator[int]:
        return iter(self._refusals)

    def __len__(self) -> int:
        return len(self._refusals)

    def _refuser(self, tag: int, reason: str) -> _TagDecoder:
        error = self._decode_error

        def refuse(value: Any, immutable: bool) -> Any:
            raise error(f"tag {tag} is refused: {reason}")

        return refuse

    def _raw(self, tag: int) -> _TagDecoder:
        tag_class = self._tag_class

        def raw(value: Any, immutable: bool) -> Any:
            return tag_class(tag, value)

        return raw


class MessagePackSerializer(Serializer[Any, Any]):
    """Sends `MessagePack <https://msgpack.org/>`_ values, using the msgpack library.

    Needs the ``msgpack`` extra (``pip install 'anydgram[msgpack]'``).

    The library's defaults apply, which matter for what comes back:

    * strings are UTF-8 ``str`` and :class:`bytes` stay bytes (invalid UTF-8 in a string is
      a :class:`~anydgram.DeserializeError`);
    * tuples are sent as arrays and come back as lists;
    * map keys in received data must be ``str`` or :class:`bytes`, so ``{1: "a"}``
      serializes but does not deserialize. This guards against maps of keys crafted to
      collide in a dict, whose cost grows with the square of their number; string hashes
      are randomized per process, so no peer can make them collide;
    * container and string lengths are bounded by the size of the datagram, so a forged
      length header cannot make the decoder allocate more than the datagram justifies.

    Raises:
        ImportError: msgpack is not installed.
    """

    __slots__ = ("_extra_data", "_packb", "_unpackb")

    def __init__(self) -> None:
        msgpack = import_optional("msgpack", owner=type(self).__name__, extra="msgpack")
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb
        self._extra_data: type[Exception] = msgpack.ExtraData

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
            return self._unpackb(data, raw=False, strict_map_key=True)
        # msgpack reports bad input with a handful of classes (ExtraData, FormatError,
        # StackError, ValueError, UnicodeDecodeError, ...) that share no useful base.
        except Exception as exc:
            if isinstance(exc, self._extra_data):
                # Its message is the repr of the whole object decoded before the extra bytes.
                extra: bytes = getattr(exc, "extra", b"")
                reason = f"{len(extra)} bytes after the first object"
            else:
                reason = describe(exc)
            raise DeserializeError(f"invalid MessagePack: {reason}") from exc


class CBORSerializer(Serializer[Any, Any]):
    """Sends `CBOR <https://cbor.io/>`_ values (RFC 8949), using the cbor2 library.

    Needs the ``cbor`` extra (``pip install 'anydgram[cbor]'``), which installs cbor2 6.2 or
    later.

    Besides the JSON-like types, received data may hold :class:`bytes`, integers of any size
    (semantic tags 2 and 3), dates and timezone-aware datetimes (0, 1, 100, 1004),
    :class:`~fractions.Fraction` (30), UUIDs (37), IP addresses and networks (52, 54, 260,
    261), sets (258) and complex numbers (43000); the self-described CBOR marker (55799) is
    skipped. Tuples come back as lists. Any other tag comes back as a ``cbor2.CBORTag``
    holding its decoded content. Nesting is limited to cbor2's default depth, and trailing
    bytes after the first data item are a :class:`~anydgram.DeserializeError`.

    Map keys and set members in received data must be text or byte strings (cbor2's
    ``strict_hashable_types``), so ``{1: "a"}`` serializes but does not deserialize, as with
    :class:`MessagePackSerializer`. Any other key type lets a peer build keys with one hash
    value, and a dict or set of them costs time that grows with the square of their number:
    bignums ``k * (2**61 - 1)`` all hash to 0, and so do pairs of ordinary integers chosen
    for it, or UUIDs, fractions and complex numbers. One such 64 KB datagram took 150 ms of
    CPU to decode where an ordinary one takes 3 ms. String hashes are randomized per process,
    so no peer can make them collide.

    These tags are refused with a :class:`~anydgram.DeserializeError`, so that what a peer
    sends decodes to a plain tree no larger than its datagram describes:

    * 28 and 29 (shared values and references): a few hundred bytes can build a structure
      of 2**59 shared nodes, or a list that contains itself;
    * 25 and 256 (string references): each 3-byte reference repeats a whole string, so
      re-encoding the packet can take thousands of times the datagram's size;
    * 4 and 5 (decimal fractions and bigfloats): a few bytes give a
      :class:`~decimal.Decimal` exponent of up to about 10**18, so ``int()`` or
      ``format(value, "f")`` on it never finishes;
    * 35 (regular expressions): a pattern the peer chose, compiled and ready for
      catastrophic backtracking;
    * 36 (MIME messages): the email parser run on the peer's text.

    :meth:`serialize` still encodes :class:`~decimal.Decimal`, compiled patterns and MIME
    messages (as tags 4, 35 and 36), but another CBORSerializer refuses them: send them as
    strings instead.

    Raises:
        ImportError: cbor2 is not installed.
    """

    __slots__ = ("_decoder_class", "_dumps", "_tag_policy")

    def __init__(self) -> None:
        cbor2 = import_optional("cbor2", owner=type(self).__name__, extra="cbor")
        self._dumps = cbor2.dumps
        self._decoder_class = cbor2.CBORDecoder
        self._tag_policy = _CBORTagPolicy(cbor2)

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
            DeserializeError: ``data`` is not exactly one valid CBOR data item, uses a
                refused semantic tag, or has a map key or set member that is not a string.
        """
        # cbor2.loads() ignores bytes after the first item; decoding from a stream lets us
        # see how much was consumed.
        stream = io.BytesIO(data)
        try:
            decoder = self._decoder_class(
                stream, semantic_decoders=self._tag_policy, strict_hashable_types=True
            )
            packet = decoder.decode()
        # cbor2 6 wraps what the tag decoders raise in CBORDecodeError, but a broad catch
        # keeps the contract (DeserializeError and nothing else) whatever a version raises.
        except Exception as exc:
            raise DeserializeError(f"invalid CBOR: {describe(exc)}") from exc
        if stream.tell() != len(data):
            raise DeserializeError(
                f"invalid CBOR: {len(data) - stream.tell()} bytes after the first data item"
            )
        return packet
