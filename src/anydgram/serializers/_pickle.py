"""A pickle serializer that only unpickles datagrams signed with a shared key."""

from __future__ import annotations

import pickle
from typing import Any

from .._errors import DeserializeError
from ._abc import Serializer, require_int
from ._hmac import Signer

__all__ = ("PickleSerializer",)


class PickleSerializer(Serializer[Any, Any]):
    """Sends any picklable Python object, authenticated with HMAC-SHA256.

    Unpickling runs code chosen by whoever made the bytes, so this serializer never unpickles
    a datagram it cannot authenticate. Each datagram is a 32-byte HMAC-SHA256 tag of the
    pickle followed by the pickle; a datagram with a missing or wrong tag is a
    :class:`~anydgram.DeserializeError` and is never passed to :func:`pickle.loads`.

    Warning:
        The key must stay secret, and everyone who holds it must be trusted completely:
        anyone with the key can make this serializer run arbitrary code on every receiver.
        Use it only between processes you control. Do not reuse the key elsewhere (in
        particular not with :class:`~anydgram.serializers.HMACSerializer`, whose signed
        bytes would then pass as pickles). Datagrams can still be replayed. Prefer a data
        format such as JSON when peers need not run the same Python code.

    Args:
        key: The shared secret; at least one byte, and ideally 32 random ones
            (``secrets.token_bytes(32)``). Keyword-only and required.
        protocol: The pickle protocol to write. Readers accept every protocol.

    Raises:
        TypeError: ``key`` is missing or not :class:`bytes`, or ``protocol`` is not an int.
        ValueError: ``key`` is empty or ``protocol`` is not a protocol pickle supports.
    """

    __slots__ = ("_protocol", "_signer")

    def __init__(self, *, key: bytes, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        require_int(protocol, "protocol")
        if not 0 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"protocol must be between 0 and {pickle.HIGHEST_PROTOCOL}, got {protocol}"
            )
        self._signer = Signer(key, "sha256")
        self._protocol = protocol

    def __repr__(self) -> str:
        # Never show the key.
        return f"{type(self).__name__}(key=<secret>, protocol={self._protocol})"

    @property
    def protocol(self) -> int:
        """The pickle protocol this serializer writes."""
        return self._protocol

    def serialize(self, packet: Any) -> bytes:
        """Pickle ``packet`` and prepend its tag.

        Args:
            packet: Any picklable object.

        Returns:
            The tag followed by the pickle.

        Raises:
            pickle.PicklingError: ``packet`` cannot be pickled (other errors, such as
                :class:`TypeError` or :class:`AttributeError`, are possible too).
        """
        return self._signer.sign(pickle.dumps(packet, protocol=self._protocol))

    def deserialize(self, data: bytes) -> Any:
        """Check the tag, then unpickle.

        Args:
            data: The bytes of one datagram (untrusted until its tag is checked).

        Returns:
            The unpickled object.

        Raises:
            DeserializeError: The tag is missing or wrong, or the authenticated pickle cannot
                be loaded (a class that does not exist here, say).
        """
        payload = self._signer.verify_untrusted(data)
        try:
            return pickle.loads(payload)
        # Past the tag check the bytes come from a key holder, but loading can still fail
        # in many ways (missing classes, version skew), and every one is a bad datagram.
        except Exception as exc:
            raise DeserializeError(f"cannot unpickle datagram: {exc!r}") from exc
