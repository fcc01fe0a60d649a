"""Statistics snapshots: frozen dataclasses, one per ``statistics()`` call."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("EndpointStatistics", "ServerStatistics")


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """What an endpoint or client has done since it was opened.

    Every datagram the endpoint took from the kernel is in exactly one of
    ``datagrams_received`` and ``oversize``. Of the received ones, those it could not deliver
    are also in exactly one of ``parse_errors`` and ``unmatched_replies``. Datagrams the kernel
    dropped before the endpoint read them are in ``kernel_drops``, and those still waiting in
    the receive buffer when the endpoint closed are in ``unread_at_close``.

    Attributes:
        datagrams_received: Datagrams taken from the kernel, ``oversize`` ones excluded.
        datagrams_sent: Datagrams the kernel accepted for sending.
        bytes_received: Payload bytes of ``datagrams_received`` (oversize ones excluded).
        bytes_sent: Payload bytes of ``datagrams_sent``.
        parse_errors: Datagrams the protocol could not parse.
        oversize: Datagrams longer than the protocol's ``max_datagram_size``, skipped unparsed
            (not part of ``datagrams_received``).
        send_errors: Sends the kernel refused for a reason other than an ICMP error.
        icmp_errors: ICMP errors (port or host unreachable, ...) reported for earlier sends.
        unmatched_replies: Datagrams ``request()`` received that no pending call claimed.
        kernel_drops: Datagrams the kernel dropped for this socket (``SO_MEMINFO``, Linux;
            0 elsewhere), read when ``statistics()`` is called.
        unread_at_close: Datagrams still waiting in the receive buffer when the endpoint
            closed, drained (without blocking, at most 65,536) and counted; 0 while open.
        recv_buffer_size: The receive buffer size the kernel granted, in bytes.
        send_buffer_size: The send buffer size the kernel granted, in bytes.
        dtls_handshakes: DTLS handshakes completed (a :class:`~anydgram.dtls.DTLSClient`:
            1); 0 without DTLS. The socket counters above count encrypted datagrams,
            handshake ones included.
        dtls_handshake_failures: DTLS handshakes that failed or timed out.
        dtls_sessions: DTLS associations open now (a client: 1 until it or its peer closes).
        dtls_records_dropped: Received DTLS records dropped: failed to authenticate,
            replays, or datagrams that were not DTLS records at all.
        metadata_truncated: Datagrams whose control messages did not fit the room kept for
            them (``MSG_CTRUNC``; only with ``receive_metadata=True``): delivered anyway, with
            the metadata fields that did arrive.
    """

    datagrams_received: int
    datagrams_sent: int
    bytes_received: int
    bytes_sent: int
    parse_errors: int
    oversize: int
    send_errors: int
    icmp_errors: int
    unmatched_replies: int
    kernel_drops: int
    unread_at_close: int
    recv_buffer_size: int
    send_buffer_size: int
    dtls_handshakes: int = 0
    dtls_handshake_failures: int = 0
    dtls_sessions: int = 0
    dtls_records_dropped: int = 0
    metadata_truncated: int = 0


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """What a :class:`~anydgram.DatagramServer` has done since it started serving.

    The socket counters are summed over the server's sockets. Every datagram the server took
    from the kernel is in exactly one of ``datagrams_received`` and ``oversize``; of the
    received ones, those no handler saw are in exactly one of ``parse_errors`` (unless a
    ``parse_error_handler`` took them), ``rate_limited`` (unless in log-only mode) and
    ``requests_abandoned``. Datagrams the kernel dropped before the server read them are in
    ``kernel_drops``, and those still waiting when the server closed its sockets are in
    ``unread_at_close``, so every datagram sent to the server is in exactly one of
    ``datagrams_received``, ``kernel_drops``, ``oversize`` and ``unread_at_close``. After the
    server stops, the counters keep their last values.

    Attributes:
        datagrams_received: Datagrams taken from the kernel, ``oversize`` ones excluded.
        datagrams_sent: Datagrams the kernel accepted for sending (replies and
            :meth:`~anydgram.DatagramServer.send_packet`).
        bytes_received: Payload bytes of ``datagrams_received``.
        bytes_sent: Payload bytes of ``datagrams_sent``.
        parse_errors: Datagrams the protocol could not parse (dropped, or given to the
            ``parse_error_handler``).
        oversize: Datagrams longer than the protocol's ``max_datagram_size``, skipped unparsed.
        send_errors: Sends the kernel refused for a reason other than an ICMP error.
        icmp_errors: ICMP errors (port or host unreachable, ...) reported for earlier sends.
        unmatched_replies: Always 0 for a server; kept so every statistics class has it.
        kernel_drops: Datagrams the kernel dropped for the server's sockets (``SO_MEMINFO``,
            Linux; 0 elsewhere).
        unread_at_close: Datagrams still waiting in the sockets' receive buffers when the
            server closed them (a handler that never returned, say), drained without blocking
            (at most 65,536 a socket) and counted; 0 while the server runs.
        recv_buffer_size: The receive buffer sizes the kernel granted, summed, in bytes.
        send_buffer_size: The send buffer sizes the kernel granted, summed, in bytes.
        handler_errors: Handler calls (and ``parse_error_handler`` calls) that raised.
        handlers_cancelled: Handler calls (and ``parse_error_handler`` calls) cancelled because
            the server stopped before they finished (the grace period of
            :meth:`~anydgram.DatagramServer.shutdown` ended, or
            :meth:`~anydgram.DatagramServer.aclose` was called).
        requests_abandoned: Datagrams received and parsed, whose handler never started because
            the server stopped first.
        handlers_active: Handlers running when ``statistics()`` was called.
        handlers_peak: The most handlers that ever ran at the same time.
        rate_limited: Datagrams dropped (or, in log-only mode, that would have been dropped)
            by the per-source rate limit.
        amplification_dropped: Replies not sent because they would have exceeded the
            anti-amplification limit (replies, so not among the received datagrams above).
        dtls_handshakes: DTLS handshakes completed (a server with ``dtls=``; 0 otherwise).
            The socket counters above count encrypted datagrams, handshake ones included.
        dtls_handshake_failures: DTLS handshakes that failed, timed out or were evicted
            unfinished.
        dtls_sessions: DTLS sessions in the session table now.
        dtls_records_dropped: Received DTLS records dropped: failed to authenticate,
            replays, garbage, ClientHellos with a bad cookie, and records from peers with no
            session.
        metadata_truncated: Datagrams whose control messages did not fit (``MSG_CTRUNC``;
            only with ``receive_metadata=True``), handed to handlers anyway with the metadata
            fields that did arrive.
    """

    datagrams_received: int
    datagrams_sent: int
    bytes_received: int
    bytes_sent: int
    parse_errors: int
    oversize: int
    send_errors: int
    icmp_errors: int
    unmatched_replies: int
    kernel_drops: int
    unread_at_close: int
    recv_buffer_size: int
    send_buffer_size: int
    handler_errors: int
    handlers_cancelled: int
    requests_abandoned: int
    handlers_active: int
    handlers_peak: int
    rate_limited: int
    amplification_dropped: int
    dtls_handshakes: int = 0
    dtls_handshake_failures: int = 0
    dtls_sessions: int = 0
    dtls_records_dropped: int = 0
    metadata_truncated: int = 0
