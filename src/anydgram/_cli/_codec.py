"""``--protocol`` for the clients (``send``, ``listen``, ``ping``): datagrams to values and back.

The clients keep raw-bytes sockets and use the protocol only at the edges, so a datagram the
protocol cannot parse is still shown (as bytes) rather than lost.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .._errors import DatagramProtocolParseError
from ._output import describe_payload
from ._runner import CLIError
from ._serve import make_protocol

__all__ = ("Codec",)


class Codec:
    """The datagrams of one ``--protocol`` choice (``bytes``: the datagram itself)."""

    def __init__(self, name: str = "bytes") -> None:
        self.name = name
        self.protocol = make_protocol(name)

    def encode_message(self, data: bytes) -> bytes:
        """A message typed by the user as a datagram: text for ``str``, JSON text otherwise.

        Raises:
            CLIError: The message is not valid JSON (for ``json``, ``msgpack`` and ``cbor``).
        """
        protocol = self.protocol
        if protocol is None:
            return data
        text = os.fsdecode(data)
        if self.name == "str":
            return protocol.make_datagram(text)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CLIError(f"--protocol {self.name} takes a JSON message: {exc}") from None
        return protocol.make_datagram(value)

    def encode_text(self, text: str) -> bytes:
        """``text`` as a datagram: its UTF-8 bytes, or a string packet of the protocol."""
        if self.protocol is None:
            return text.encode()
        return self.protocol.make_datagram(text)

    def decode(self, data: bytes) -> tuple[bool, Any]:
        """``(True, packet)`` for a datagram the protocol parses, else ``(False, data)``."""
        if self.protocol is None:
            return True, data
        try:
            return True, self.protocol.build_packet_from_datagram(data)
        except DatagramProtocolParseError:
            return False, data

    def describe(self, data: bytes) -> str:
        """A datagram for people to read, as ``listen`` prints it (cut at 256 bytes)."""
        parsed, packet = self.decode(data)
        if not parsed:
            return f"(not {self.name}) {describe_payload(data)}"
        return describe_payload(packet)

    def reply_text(self, data: bytes) -> str | None:
        """A reply as ``send --wait-reply`` prints it: JSON text for structured protocols.

        ``None`` for raw bytes (the caller prints text or hex as before).
        """
        if self.protocol is None:
            return None
        parsed, packet = self.decode(data)
        if not parsed:
            return f"(not {self.name}) {describe_payload(data)}"
        if isinstance(packet, str):
            return packet
        return json.dumps(packet, ensure_ascii=False, default=repr)
