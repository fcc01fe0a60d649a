"""A JSON serializer: the standard library's :mod:`json`, or orjson when it is installed."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from .._errors import DeserializeError
from ._abc import Serializer, clip, import_optional, require_instance

__all__ = ("JSONSerializer",)

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _stdlib_dumps(packet: Any) -> bytes:
    return _ENCODER.encode(packet).encode("utf-8")


def _stdlib_loads(data: bytes) -> Any:
    # Decode first: json.loads(bytes) would also guess UTF-16 and UTF-32, and we promise UTF-8.
    return _DECODER.decode(data.decode("utf-8"))


class JSONSerializer(Serializer[Any, Any]):
    r"""Sends JSON values (dicts, lists, strings, numbers, booleans and ``None``).

    Datagrams are compact UTF-8 JSON with no whitespace between tokens. Decoding is strict:
    invalid UTF-8, a byte-order mark, trailing data, or nesting deeper than the decoder
    allows is a :class:`~anydgram.DeserializeError`. Tuples are sent as arrays and come back
    as lists.

    Two implementations sit behind the same interface: the standard library's :mod:`json`
    and, when it is installed (``pip install 'anydgram[orjson]'``), the much faster
    `orjson <https://github.com/ijl/orjson>`_. For ordinary JSON data the two produce the
    same packets; they differ at the edges:

    * **NaN and infinities.** The standard library writes the non-standard tokens ``NaN``,
      ``Infinity`` and ``-Infinity`` and reads them back; orjson writes ``null`` for them
      and rejects those tokens when decoding. A number too large for a float (``1e400``)
      decodes to ``inf`` with the standard library and is rejected by orjson.
    * **Large integers.** orjson serializes integers from ``-2**63`` to ``2**64 - 1`` only
      (:class:`TypeError` beyond) and decodes larger integer literals as a :class:`float`,
      losing precision. The standard library keeps integers exact, up to Python's limit of
      4,300 digits.
    * **Dict keys.** The standard library turns ``int``, ``float``, ``bool`` and ``None``
      keys into strings; orjson raises :class:`TypeError` for any key that is not a string.
    * **Other types.** orjson also serializes dataclasses, :mod:`datetime` objects, UUIDs
      and enums; the standard library raises :class:`TypeError` for them (enums deriving
      from ``int`` or ``str`` excepted).
    * **Lone surrogates.** Neither serializes a string holding a lone surrogate
      (``"\ud800"``), but the standard library decodes the escape ``"\ud800"`` into such a
      string where orjson rejects it.
    * **Depth.** orjson refuses to serialize containers nested more than 254 deep and to
      decode more than 1,024 deep; the standard library is bounded by the interpreter's
      recursion limit (about 1,000 levels) both ways.
    * **Bytes.** Floats may be written differently (``1e-07`` against ``1e-7``), so the
      datagrams are not byte-for-byte identical, though they decode to equal values.

    Args:
        use_orjson: ``None`` (the default) uses orjson when it can be imported and the
            standard library otherwise; ``True`` requires orjson; ``False`` always uses the
            standard library.

    Raises:
        ImportError: ``use_orjson`` is true and orjson is not installed.
        TypeError: ``use_orjson`` is not a bool or ``None``.
    """

    __slots__ = ("_dumps", "_loads", "_uses_orjson")

    _dumps: Callable[[Any], bytes]
    _loads: Callable[[bytes], Any]

    def __init__(self, *, use_orjson: bool | None = None) -> None:
        require_instance(use_orjson, (bool, type(None)), "use_orjson must be a bool or None")
        orjson = None
        if use_orjson:
            orjson = import_optional("orjson", owner=type(self).__name__, extra="orjson")
        elif use_orjson is None:
            try:
                orjson = importlib.import_module("orjson")
            except ImportError:
                orjson = None
        if orjson is None:
            self._dumps = _stdlib_dumps
            self._loads = _stdlib_loads
        else:
            self._dumps = orjson.dumps
            self._loads = orjson.loads
        self._uses_orjson = orjson is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(use_orjson={self._uses_orjson})"

    @property
    def uses_orjson(self) -> bool:
        """Whether this serializer uses orjson rather than the standard library."""
        return self._uses_orjson

    def serialize(self, packet: Any) -> bytes:
        """Encode ``packet`` as compact UTF-8 JSON.

        Args:
            packet: A JSON-compatible value.

        Returns:
            The encoded packet.

        Raises:
            TypeError: ``packet`` holds a value JSON cannot represent (with orjson, also a
                reference cycle or a string with a lone surrogate).
            ValueError: With the standard library, ``packet`` holds a reference cycle or a
                string with a lone surrogate.
        """
        return self._dumps(packet)

    def deserialize(self, data: bytes) -> Any:
        """Decode a JSON datagram.

        Args:
            data: The bytes of one datagram (untrusted).

        Returns:
            The decoded value.

        Raises:
            DeserializeError: ``data`` is not one valid UTF-8 JSON document, or is nested too
                deeply.
        """
        try:
            return self._loads(data)
        # ValueError covers JSONDecodeError, UnicodeDecodeError and the int-digits limit;
        # RecursionError is how the standard library reports deep nesting.
        except (ValueError, RecursionError) as exc:
            raise DeserializeError(f"invalid JSON: {clip(str(exc))}") from exc
