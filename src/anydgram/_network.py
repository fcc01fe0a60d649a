"""The seam through which a network other than the host's stands in for the server's sockets.

``anydgram.testing.MemoryNetwork`` implements it; ``DatagramServer(network=...)`` uses it. The
server checks for this protocol, so it never imports ``anydgram.testing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._socket_io import SocketIO

__all__ = ("ServerNetwork",)


@runtime_checkable
class ServerNetwork(Protocol):
    """A network a server can bind on instead of the host's sockets."""

    def open_server_transports(
        self,
        hosts: Sequence[str] | None,
        port: int,
        max_datagram_size: int,
        *,
        receive_metadata: bool = False,
    ) -> Sequence[SocketIO]:
        """Bind one transport per host (every wildcard for ``None``), all on one port.

        With ``receive_metadata`` each transport keeps the metadata its network can give.
        """
        ...
