"""The :class:`Serializer` protocol and the helpers its implementations share."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol, TypeVar

__all__ = (
    "MAX_REASON_LENGTH",
    "RecvT",
    "RecvT_co",
    "SendT",
    "SendT_contra",
    "Serializer",
    "clip",
    "describe",
)

# A serializer only consumes what it sends and only produces what it receives, so the send
# side is contravariant and the receive side covariant: a Serializer[object, bool] can stand
# in wherever a Serializer[str, int] is wanted.
SendT_contra = TypeVar("SendT_contra", contravariant=True)
RecvT_co = TypeVar("RecvT_co", covariant=True)

# The wrappers are ordinary (invariant) generic classes over their inner serializer's types.
SendT = TypeVar("SendT")
RecvT = TypeVar("RecvT")


class Serializer(Protocol[SendT_contra, RecvT_co]):
    """Converts packets to bytes and bytes back to packets.

    This is a structural protocol: any object with these two methods is a serializer, whether
    or not it inherits from this class. The serializers in :mod:`anydgram.serializers` inherit
    from it explicitly.

    A serializer holds no per-datagram state, so one instance may be shared by any number of
    endpoints and tasks.
    """

    def serialize(self, packet: SendT_contra) -> bytes:
        """Turn ``packet`` into bytes.

        Args:
            packet: The object to send.

        Returns:
            The encoded packet.

        Raises:
            Exception: Whatever the format raises for a packet it cannot represent (typically
                :class:`TypeError` or :class:`ValueError`); that is the caller's mistake.
        """
        ...

    def deserialize(self, data: bytes) -> RecvT_co:
        """Turn received bytes back into a packet.

        ``data`` is untrusted: it is whatever a peer sent.

        Args:
            data: The bytes of one datagram.

        Returns:
            The decoded packet.

        Raises:
            DeserializeError: ``data`` is not a valid encoding. Implementations raise this and
                nothing else for bad input, whatever the underlying library raised.
        """
        ...


def import_optional(module: str, *, owner: str, extra: str) -> ModuleType:
    """Import an optional dependency, or explain which extra installs it.

    Args:
        module: The module to import.
        owner: The class that needs it, named in the error message.
        extra: The name of the ``anydgram`` extra that installs it.

    Returns:
        The imported module.

    Raises:
        ImportError: The module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{owner} needs {module}: pip install 'anydgram[{extra}]'") from exc


def require_serializer(inner: Any) -> None:
    """Check that a wrapper was given something that looks like a serializer.

    Raises:
        TypeError: ``inner`` lacks a callable ``serialize`` or ``deserialize``.
    """
    for method in ("serialize", "deserialize"):
        if not callable(getattr(inner, method, None)):
            raise TypeError(
                f"expected a serializer, got {type(inner).__name__} with no {method}() method"
            )


def require_instance(value: object, expected: type | tuple[type, ...], message: str) -> None:
    """Raise :class:`TypeError` with ``message`` unless ``value`` is of an ``expected`` type.

    Arguments are checked at run time even where the annotations already say so, because
    untyped callers exist; taking ``object`` keeps the type checkers from calling it redundant.
    """
    if not isinstance(value, expected):
        raise TypeError(f"{message}, not {type(value).__name__}")


def require_int(value: object, name: str) -> None:
    """Raise :class:`TypeError` unless ``value`` is an :class:`int` (and not a :class:`bool`)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")


#: The longest text a :class:`~anydgram.DeserializeError` quotes from a decoder's exception.
MAX_REASON_LENGTH = 120


def clip(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """Return ``text``, cut to at most ``limit`` characters (ending with ``...`` if cut)."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """A short account of why a decoder refused a datagram: its exception's type and message.

    Decoders put parts of the input into their messages (msgpack the whole decoded object
    before trailing bytes, cbor2 a duplicate key's repr), so the message is clipped to
    :data:`MAX_REASON_LENGTH`: a 60 KB datagram must not become a 60 KB log line. The bytes
    themselves stay on :attr:`anydgram.DatagramProtocolParseError.data`.
    """
    return f"{type(exc).__name__}: {clip(str(exc))}"
