"""A typed serializer: msgspec decodes JSON or MessagePack straight into a given type."""

from __future__ import annotations

import re
from typing import Any, Final, Generic, Literal, TypeVar, overload

from .._errors import DeserializeError
from ._abc import Serializer, clip, import_optional, require_int

__all__ = ("MsgspecSerializer",)

T = TypeVar("T")

# A JSON string, escapes included; brackets inside one do not nest. Unrolled so that the
# regular expression engine spends one step per run of plain characters, not per character.
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_JSON_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")

# MessagePack container headers: fixmap, fixarray, array16/32, map16/32.
_MSGPACK_CONTAINERS: Final = bytes([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
# Type bytes a map key may start with: strings, bin, integers, nil and booleans.
_MSGPACK_KEY_BYTES: Final = frozenset(
    (
        *range(0x80),  # positive fixint
        *range(0xE0, 0x100),  # negative fixint
        *range(0xCC, 0xD4),  # uint and int 8 to 64
        *range(0xA0, 0xC0),  # fixstr
        *range(0xD9, 0xDC),  # str 8 to 32
        *range(0xC4, 0xC7),  # bin 8 to 32
        0xC0,  # nil
        0xC2,  # false
        0xC3,  # true
    )
)
# Bytes after the type byte, for the scalar types of fixed size.
_MSGPACK_FIXED: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}  # fmt: skip
# Length-prefixed types (str, bin, ext): the width of the length, and the bytes after it.
_MSGPACK_SIZED: Final = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
}  # fmt: skip


def _json_check(data: bytes, max_depth: int) -> str | None:
    """Why ``data`` is refused (nested deeper than ``max_depth``), or ``None``."""
    # Few brackets cannot nest deeply: one C-speed pass settles almost every datagram.
    if len(data) - len(data.translate(None, b"[]{}")) <= max_depth:
        return None
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_JSON_BRACKETS)
    # Each pass removes the innermost pairs, so balanced brackets vanish after `depth` passes.
    for _ in range(max_depth):
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if not shorter:
            return None
        if len(shorter) == len(brackets):
            # Valid JSON always peels away; msgspec would recurse into these before failing.
            return "brackets do not match"
        brackets = shorter
    return f"nested deeper than {max_depth}"


def _msgpack_check(data: bytes, max_depth: int, *, walk: bool) -> str | None:
    """Why ``data`` is refused (too deep, or a map key that can collide), or ``None``.

    Without ``walk``, a datagram holding few bytes that could be container headers passes
    after one C-speed pass; otherwise its structure is walked in Python.
    """
    if not walk and len(data) - len(data.translate(None, _MSGPACK_CONTAINERS)) <= max_depth:
        return None
    pending = [1]  # items still to read at each open level
    maps = [False]  # whether each open level is a map (its even-numbered items are keys)
    position, end = 0, len(data)
    while pending and position < end:
        byte = data[position]
        position += 1
        if maps[-1] and pending[-1] % 2 == 0 and byte not in _MSGPACK_KEY_BYTES:
            # A float, extension, array or map key can be made to collide in a dict.
            return "map keys must be strings, bytes, integers, booleans or nil"
        pending[-1] -= 1
        items = -1  # stays -1 for a scalar
        if byte <= 0x7F or byte >= 0xE0:
            pass
        elif byte <= 0x8F:
            items = (byte & 0x0F) * 2
        elif byte <= 0x9F:
            items = byte & 0x0F
        elif byte <= 0xBF:
            position += byte & 0x1F
        elif byte in _MSGPACK_FIXED:
            position += _MSGPACK_FIXED[byte]
        elif byte in _MSGPACK_SIZED:
            width, extra = _MSGPACK_SIZED[byte]
            size = int.from_bytes(data[position : position + width], "big")
            position += width + extra + size
        elif byte >= 0xDC:
            width = 2 if byte in (0xDC, 0xDE) else 4
            items = int.from_bytes(data[position : position + width], "big")
            items *= 2 if byte >= 0xDE else 1
            position += width
        else:
            return None  # 0xC1 is never used: msgspec refuses it
        if items >= 0:
            # The container's depth is the number of levels open around it, plus one.
            if len(pending) > max_depth:
                return f"nested deeper than {max_depth}"
            if items:
                pending.append(items)
                maps.append(byte <= 0x8F or byte >= 0xDE)
        while pending and pending[-1] == 0:
            pending.pop()
            maps.pop()
    return None


class MsgspecSerializer(Serializer[Any, T], Generic[T]):
    """Typed messages: JSON or MessagePack decoded and validated into ``type`` by msgspec.

    Needs the ``msgspec`` extra (``pip install 'anydgram[msgspec]'``). The handler receives
    an instance of ``type`` (a :class:`msgspec.Struct`, a dataclass, a ``TypedDict``, a
    tagged union of Structs, ...), never a datagram that does not match it: a missing field,
    a wrong type or an unknown tag is a :class:`~anydgram.DeserializeError` whose message
    names the field (``Expected `int`, got `str` - at `$.count```).

    Input nested deeper than ``max_depth`` is refused before msgspec sees it, because its
    decoder recurses in C. The check costs one pass over the datagram in C when it holds
    fewer than ``max_depth`` brackets (JSON) or container headers (MessagePack), the usual
    case; otherwise JSON strings are stripped and bracket pairs peeled, one C pass per level,
    and MessagePack is walked in Python.

    Args:
        type: What datagrams decode into; :data:`typing.Any` (the default) decodes to plain
            dicts, lists, strings and numbers, as :class:`JSONSerializer` does.
        format: ``"json"`` or ``"msgpack"``.
        max_depth: The deepest nesting accepted in a received datagram.

    Raises:
        ImportError: msgspec is not installed.
        TypeError: msgspec does not support ``type``, or an argument has the wrong type.
        ValueError: ``format`` is neither ``"json"`` nor ``"msgpack"``, or ``max_depth`` is
            less than 1.
    """

    __slots__ = ("_decode", "_encode", "_errors", "_format", "_max_depth", "_type", "_walk")

    @overload
    def __init__(
        self,
        type: type[T],
        *,
        format: Literal["json", "msgpack"] = "json",
        max_depth: int = 64,
    ) -> None: ...

    @overload
    def __init__(
        self: MsgspecSerializer[Any],
        type: Any = Any,
        *,
        format: Literal["json", "msgpack"] = "json",
        max_depth: int = 64,
    ) -> None: ...

    def __init__(
        self,
        type: Any = Any,
        *,
        format: Literal["json", "msgpack"] = "json",
        max_depth: int = 64,
    ) -> None:
        msgspec = import_optional("msgspec", owner="MsgspecSerializer", extra="msgspec")
        if format not in ("json", "msgpack"):
            raise ValueError(f"format must be 'json' or 'msgpack', not {format!r}")
        require_int(max_depth, "max_depth")
        if max_depth < 1:
            raise ValueError(f"max_depth must be at least 1, not {max_depth}")
        module = msgspec.json if format == "json" else msgspec.msgpack
        self._encode = module.Encoder().encode
        self._decode = module.Decoder(type).decode
        self._errors: tuple[type[Exception], ...] = (msgspec.DecodeError, RecursionError)
        self._format = format
        self._max_depth = max_depth
        self._type = type
        # Untyped MessagePack decodes any map key (an array becomes a tuple), so every
        # datagram's keys are checked; a type names its key types itself.
        self._walk = format == "msgpack" and type is Any

    def __repr__(self) -> str:
        name = getattr(self._type, "__name__", None) or repr(self._type)
        return f"MsgspecSerializer({name}, format={self._format!r}, max_depth={self._max_depth})"

    def serialize(self, packet: Any) -> bytes:
        """Encode ``packet`` as JSON or MessagePack.

        The type parameter is what datagrams decode into; any value msgspec encodes can be
        sent, so one server may decode requests of one type and send replies of another.

        Args:
            packet: A value msgspec encodes (a Struct, a dataclass, JSON-like values, ...).

        Returns:
            The encoded packet.

        Raises:
            TypeError: ``packet`` holds a value msgspec cannot encode.
        """
        data: bytes = self._encode(packet)
        return data

    def deserialize(self, data: bytes) -> T:
        """Decode and validate one datagram.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The decoded packet, an instance of the serializer's type.

        Raises:
            DeserializeError: ``data`` is not valid, does not match the type (the message
                names the field), or is nested deeper than ``max_depth``.
        """
        # Every level of nesting takes at least one byte, so a datagram no longer than
        # max_depth needs no depth check; untyped MessagePack is walked for its map keys too.
        if len(data) > self._max_depth or self._walk:
            if self._format == "json":
                refusal = _json_check(data, self._max_depth)
            else:
                refusal = _msgpack_check(data, self._max_depth, walk=self._walk)
            if refusal is not None:
                raise DeserializeError(f"invalid {self._label()}: {refusal}")
        try:
            packet: T = self._decode(data)
        # DecodeError includes ValidationError, whose message ends with the field path.
        except self._errors as exc:
            raise DeserializeError(f"invalid {self._label()}: {clip(str(exc))}") from exc
        return packet

    def _label(self) -> str:
        return "JSON" if self._format == "json" else "MessagePack"
