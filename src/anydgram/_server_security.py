"""The hook through which a server encrypts: DTLS (``anydgram.dtls``) plugs in here.

The server knows only this protocol; OpenSSL is imported (by :func:`make_security`) only
for a server built with ``dtls=``, so the core keeps depending on anyio alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._io_core import Received
    from ._logging import RateLimitedLog
    from ._socket_io import SocketIO

__all__ = ("ServerSecurity", "datagram_room", "make_security", "seal_for_send")


class ServerSecurity(Protocol):
    """What a server's encryption layer does for the intake, the replies and the life cycle."""

    #: Bytes a datagram may carry above the protocol's ``max_datagram_size`` (encryption).
    overhead: int

    def unseal_batch(self, transport: SocketIO, batch: list[Received]) -> list[Received]:
        """Handle a received batch; the plaintexts handlers should see."""
        ...

    def seal(self, address: Any, data: bytes) -> bytes | None:
        """``data`` encrypted for ``address``; ``None`` to drop it (no session)."""
        ...

    async def maintain(self) -> None:
        """Run timers (retransmissions, expiry) until cancelled."""
        ...

    def close_all(self) -> None:
        """Close every session (close_notify), before the sockets close."""
        ...

    def counters(self) -> dict[str, int]:
        """The statistics fields this layer reports."""
        ...


def make_security(
    dtls: object, max_datagram_size: int, log: RateLimitedLog
) -> ServerSecurity | None:
    """The layer for a server's ``dtls=`` argument (``None`` for ``None``: plain UDP).

    Raises:
        ImportError: The ``dtls`` extra (pyOpenSSL) is not installed.
        TypeError: ``dtls`` is neither an ``OpenSSL.SSL.Context`` nor a ``DTLSServerConfig``.
    """
    if dtls is None:
        return None
    # Imported here, not at the top: only a server with dtls= may import OpenSSL.
    from .dtls._server_side import server_side

    return server_side(dtls, max_datagram_size, log)


def seal_for_send(security: ServerSecurity | None, address: Any, data: bytes) -> bytes:
    """``data`` as :meth:`DatagramServer.send_packet` sends it to ``address``.

    Raises:
        ValueError: DTLS is on and ``address`` has no established session.
    """
    if security is None:
        return data
    sealed = security.seal(address, data)
    if sealed is None:
        raise ValueError(f"no DTLS session with {address!r}")
    return sealed


def datagram_room(security: ServerSecurity | None, max_datagram_size: int) -> int:
    """The longest datagram a server's sockets take: the protocol's, plus encryption's."""
    return max_datagram_size if security is None else max_datagram_size + security.overhead
