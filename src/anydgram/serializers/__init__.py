"""Serializers: how packets become the bytes of a datagram and back.

A :class:`Serializer` is anything with ``serialize(packet) -> bytes`` and
``deserialize(data) -> packet``; ``deserialize`` raises :class:`DeserializeError`, and only
that, for bytes it cannot decode. Give one to :class:`anydgram.DatagramProtocol`.

Formats: :class:`BytesSerializer` (raw bytes, the default), :class:`StringSerializer`,
:class:`JSONSerializer`, :class:`MessagePackSerializer`, :class:`CBORSerializer` and
:class:`MsgspecSerializer` (typed; optional extras), :class:`StructSerializer` and
:class:`PickleSerializer`. Wrappers that transform
another serializer's bytes: :class:`ZlibSerializer`, :class:`Base64Serializer` and
:class:`HMACSerializer`.

Nothing here performs I/O, so every serializer can be tested with plain function calls.
"""

from __future__ import annotations

from .._errors import DeserializeError as DeserializeError
from ._abc import Serializer as Serializer
from ._binary import CBORSerializer as CBORSerializer
from ._binary import MessagePackSerializer as MessagePackSerializer
from ._hmac import HMACSerializer as HMACSerializer
from ._json import JSONSerializer as JSONSerializer
from ._msgspec import MsgspecSerializer as MsgspecSerializer
from ._pickle import PickleSerializer as PickleSerializer
from ._raw import BytesSerializer as BytesSerializer
from ._raw import StringSerializer as StringSerializer
from ._struct import StructSerializer as StructSerializer
from ._wrappers import Base64Serializer as Base64Serializer
from ._wrappers import ZlibSerializer as ZlibSerializer

__all__ = (
    "Base64Serializer",
    "BytesSerializer",
    "CBORSerializer",
    "DeserializeError",
    "HMACSerializer",
    "JSONSerializer",
    "MessagePackSerializer",
    "MsgspecSerializer",
    "PickleSerializer",
    "Serializer",
    "StringSerializer",
    "StructSerializer",
    "ZlibSerializer",
)


def _publish() -> None:
    # Report the public namespace, not the private module, in reprs, tracebacks and docs.
    # DeserializeError belongs to the top-level namespace and is left alone.
    for name in __all__:
        obj = globals()[name]
        if obj.__module__.startswith(__name__ + "._"):
            obj.__module__ = __name__


_publish()
