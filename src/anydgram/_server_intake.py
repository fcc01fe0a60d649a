"""The server's intake: screening a received batch and parsing it into requests."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ._address import format_address
from ._errors import DatagramProtocolParseError
from ._ratelimit import source_key
from ._server_request import DatagramRequest, ParseErrorRequest

if TYPE_CHECKING:
    from ._io_core import Received
    from ._logging import RateLimitedLog
    from ._protocol import DatagramProtocol
    from ._ratelimit import AmplificationLimiter, RateLimiter
    from ._server import DatagramServer
    from ._server_request import Replies
    from ._server_security import ServerSecurity
    from ._socket_io import SocketIO

__all__ = ("Intake",)


class Intake:
    """Turns batches of datagrams into queued requests: rate limit, amplification, parse."""

    def __init__(
        self,
        server: DatagramServer[Any, Any],
        protocol: DatagramProtocol[Any, Any],
        replies: Replies,
        *,
        has_parse_error_handler: bool,
        rate_limiter: RateLimiter | None,
        amplification: AmplificationLimiter | None,
        log: RateLimitedLog,
        security: ServerSecurity | None = None,
    ) -> None:
        self._server = server
        self._parse = protocol.build_packet_from_datagram
        self._replies = replies
        self._raw_limit = replies.raw_limit
        self._hook = has_parse_error_handler
        self._rate_limiter = rate_limiter
        self._amplification = amplification
        self._log = log
        self._security = security
        #: Requests read and not yet taken by a handler, oldest first.
        self.pending: deque[DatagramRequest[Any, Any]] = deque()
        self.parse_errors = 0

    def counters(self) -> dict[str, int]:
        """The intake's part of the server's statistics."""
        limiter, amplification = self._rate_limiter, self._amplification
        return {
            "parse_errors": self.parse_errors,
            "rate_limited": 0 if limiter is None else limiter.limited,
            "amplification_dropped": 0 if amplification is None else amplification.dropped,
        }

    def queue_batch(self, transport: SocketIO, batch: list[Received]) -> None:
        """Screen and parse a batch; queue a request per datagram a handler should see."""
        pending = self.pending
        server = self._server
        replies = self._replies
        if self._rate_limiter is not None or self._amplification is not None:
            batch = self._screen(batch)
        if self._security is not None:  # DTLS: the limits above saw the encrypted datagrams
            batch = self._security.unseal_batch(transport, batch)
        request_class = DatagramRequest
        if self._raw_limit >= 0:
            # The raw-bytes protocol's parse is the identity (the transport has already set
            # oversize datagrams aside): skip two calls per datagram.
            for data, address, local, ancillary in batch:
                pending.append(
                    request_class(data, address, server, transport, local, replies, ancillary)
                )
            return
        parse = self._parse
        hook = self._hook
        for data, address, local, ancillary in batch:
            try:
                packet = parse(data)
            except DatagramProtocolParseError as exc:
                self.parse_errors += 1
                exc.address = address
                self._log.log(
                    "parse",
                    logging.WARNING,
                    "undecodable datagram of %d bytes from %s: %s",
                    len(data),
                    format_address(address),
                    exc,
                    peer=address,
                )
                if hook:
                    pending.append(
                        ParseErrorRequest(
                            exc, address, server, transport, local, replies, ancillary
                        )
                    )
                continue
            pending.append(
                request_class(packet, address, server, transport, local, replies, ancillary)
            )

    def _screen(self, batch: list[Received]) -> list[Received]:
        """Apply the per-source limits to a batch; return the datagrams left to handle.

        The rate limit drops (or, log-only, just counts) datagrams over it; the
        anti-amplification cap counts the bytes of those that remain as received.
        """
        limiter = self._rate_limiter
        amplification = self._amplification
        if limiter is None:
            assert amplification is not None
            for data, address, _, _ in batch:
                amplification.received(source_key(address), len(data))
            return batch
        kept: list[Received] = []
        over_from: Any = None
        now = time.monotonic()  # one clock read per batch, not per datagram
        admit = limiter.admit
        log_only = limiter.log_only
        for item in batch:
            key = source_key(item[1])
            if not admit(key, now):
                if over_from is None:
                    over_from = item[1]
                if not log_only:
                    continue
            kept.append(item)
            if amplification is not None:
                amplification.received(key, len(item[0]))
        if over_from is not None:
            self._log.log(
                "rate",
                logging.WARNING,
                "rate limit exceeded by %s (and perhaps others): %s",
                format_address(over_from),
                "logged only" if log_only else "dropping datagrams",
                peer=over_from,
            )
        return kept
