"""anydgram: a backend-agnostic async datagram (UDP and Unix datagram) framework.

One code base runs under asyncio, asyncio with uvloop, and trio, through anyio. Packets are
Python objects; a :class:`DatagramProtocol` turns them into datagrams and back.
"""

from __future__ import annotations

from ._endpoint import Address as Address
from ._endpoint import DatagramClient as DatagramClient
from ._endpoint import DatagramEndpoint as DatagramEndpoint
from ._endpoint import IPAddress as IPAddress
from ._errors import DatagramProtocolParseError as DatagramProtocolParseError
from ._errors import DatagramTooLargeError as DatagramTooLargeError
from ._errors import DeserializeError as DeserializeError
from ._logging import LogBudget as LogBudget
from ._metadata import DatagramMetadata as DatagramMetadata
from ._open_endpoint import connect_udp as connect_udp
from ._open_endpoint import open_udp_endpoint as open_udp_endpoint
from ._open_unix import connect_unix_datagram as connect_unix_datagram
from ._open_unix import open_unix_datagram_endpoint as open_unix_datagram_endpoint
from ._protocol import MAX_UDP_PAYLOAD as MAX_UDP_PAYLOAD
from ._protocol import DatagramProtocol as DatagramProtocol
from ._ratelimit import RateLimit as RateLimit
from ._server import DatagramRequest as DatagramRequest
from ._server import DatagramServer as DatagramServer
from ._socket_proxy import SocketProxy as SocketProxy
from ._statistics import EndpointStatistics as EndpointStatistics
from ._statistics import ServerStatistics as ServerStatistics
from ._sync import SyncDatagramClient as SyncDatagramClient
from ._sync_endpoint import SyncDatagramEndpoint as SyncDatagramEndpoint
from ._version import __version__ as __version__

__all__ = (
    "MAX_UDP_PAYLOAD",
    "Address",
    "DatagramClient",
    "DatagramEndpoint",
    "DatagramMetadata",
    "DatagramProtocol",
    "DatagramProtocolParseError",
    "DatagramRequest",
    "DatagramServer",
    "DatagramTooLargeError",
    "DeserializeError",
    "EndpointStatistics",
    "IPAddress",
    "LogBudget",
    "RateLimit",
    "ServerStatistics",
    "SocketProxy",
    "SyncDatagramClient",
    "SyncDatagramEndpoint",
    "__version__",
    "connect_udp",
    "connect_unix_datagram",
    "open_udp_endpoint",
    "open_unix_datagram_endpoint",
)


def _publish() -> None:
    # Report the public namespace, not the private module, in reprs, tracebacks and docs.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("anydgram._"):
            obj.__module__ = __name__


_publish()
