"""anydgram: a backend-agnostic async datagram (UDP and Unix datagram) framework.

One code base runs under asyncio, asyncio with uvloop, and trio, through anyio. Packets are
Python objects; a :class:`DatagramProtocol` turns them into datagrams and back.
"""

from __future__ import annotations

from ._errors import DatagramProtocolParseError as DatagramProtocolParseError
from ._errors import DatagramTooLargeError as DatagramTooLargeError
from ._errors import DeserializeError as DeserializeError
from ._protocol import MAX_UDP_PAYLOAD as MAX_UDP_PAYLOAD
from ._protocol import DatagramProtocol as DatagramProtocol
from ._version import __version__ as __version__

__all__ = (
    "MAX_UDP_PAYLOAD",
    "DatagramProtocol",
    "DatagramProtocolParseError",
    "DatagramTooLargeError",
    "DeserializeError",
    "__version__",
)


def _publish() -> None:
    # Report the public namespace, not the private module, in reprs, tracebacks and docs.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("anydgram._"):
            obj.__module__ = __name__


_publish()
