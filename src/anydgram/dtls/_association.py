"""One DTLS association over memory BIOs: bytes in, bytes out, no sockets and no waiting.

The async client, the blocking client and each server session drive one of these. OpenSSL
keeps the handshake state and its retransmission timer (RFC 6347: 1 s, doubling, at most
60 s); the caller asks :meth:`Association.timer` how long it may wait, and calls
:meth:`Association.on_timer` when that has passed.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from OpenSSL import SSL, crypto

from ._contexts import DTLSError, error_from_ssl, hostname_matches, prepare_connection
from ._records import (
    APPLICATION_DATA,
    first_epoch0_number,
    pack_records,
    record_types_untrusted,
    shift_epoch0,
)

__all__ = (
    "MAX_RECORD_OVERHEAD",
    "MAX_RECORD_PLAINTEXT",
    "Association",
    "flight_mtu",
    "receive_room",
)

#: The largest plaintext one DTLS record carries (TLS's 2**14).
MAX_RECORD_PLAINTEXT: Final = 1 << 14
#: What a record adds to its plaintext, bounded: a 13-byte header, then an explicit IV or
#: nonce, a tag or MAC and (CBC) padding: under 100 bytes with any DTLS 1.2 suite. Receive
#: buffers get this much room above ``max_datagram_size``, so a packet of the protocol's
#: largest size still arrives.
MAX_RECORD_OVERHEAD: Final = 256
#: OpenSSL cannot fragment a handshake into datagrams smaller than this (it fails the
#: handshake instead), whatever the protocol's ``max_datagram_size``.
MIN_MTU: Final = 256


def flight_mtu(max_datagram_size: int) -> int:
    """The MTU handshake flights are fragmented to: the protocol's limit, within OpenSSL's."""
    return max(max_datagram_size, MIN_MTU)


def receive_room(max_datagram_size: int) -> int:
    """How long a received DTLS datagram may be.

    A full record with its encryption, at least: a peer's handshake datagrams follow *its*
    MTU, not ours, and a packet of our largest size grows by its encryption.
    """
    return max(max_datagram_size, MAX_RECORD_PLAINTEXT) + MAX_RECORD_OVERHEAD


#: What one read of OpenSSL's output buffer takes (any size works; this is a flight's worth).
_READ_SIZE: Final = 1 << 16


class Association:
    """An OpenSSL connection with memory BIOs, and the counters of what it dropped."""

    __slots__ = (
        "_conn",
        "_epoch0_floor",
        "_epoch0_shift",
        "_hostname",
        "_hostname_failed",
        "closed_by_peer",
        "established",
        "mtu",
        "records_dropped",
    )

    def __init__(
        self,
        context: SSL.Context,
        *,
        mtu: int,
        server: bool,
        server_hostname: str | None = None,
    ) -> None:
        """Make the connection (``ValueError`` if ``context`` is not a DTLS one)."""
        conn = self._conn = SSL.Connection(context, None)
        prepare_connection(conn)
        self.mtu: int = mtu
        conn.set_ciphertext_mtu(mtu)
        self._hostname = server_hostname
        self._hostname_failed = False
        #: Server side: the lowest record number its first unencrypted record may carry
        #: (set by :meth:`listen`), then the shift that gives it that number.
        self._epoch0_floor: int | None = None
        self._epoch0_shift = 0
        if server:
            conn.set_accept_state()
        else:
            if server_hostname is not None:
                conn.set_tlsext_host_name(server_hostname.encode("idna"))
                if context.get_verify_mode() & SSL.VERIFY_PEER:
                    conn.set_verify(context.get_verify_mode(), self._verify)
            conn.set_connect_state()
        self.established: bool = False
        self.closed_by_peer: bool = False
        #: Records that did not authenticate or were replays (or datagrams that were not
        #: records at all), dropped here.
        self.records_dropped: int = 0

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, preverified: int
    ) -> bool:
        # OpenSSL has done the chain; the leaf must also name the host we meant to reach.
        if depth != 0 or not preverified or self._hostname is None:
            return bool(preverified)
        if hostname_matches(cert.to_cryptography(), self._hostname):
            return True
        self._hostname_failed = True
        return False

    # -- handshake ---------------------------------------------------------------------------

    def listen(self, client_hello: bytes) -> None:
        """Accept a ClientHello whose cookie has been checked (server side).

        ``DTLSv1_listen`` takes the hello as OpenSSL's own cookie exchange would, so that
        message numbers continue from the HelloVerifyRequest. Record numbers are ours to
        keep apart: the HelloVerifyRequest echoed the record number of the hello it
        answered (RFC 6347 4.2.1), which is 1 or more when the client's first hello was
        lost and sent again, while OpenSSL (4.0) numbers the server's records from 1
        whatever the hello's. A record number the client has seen already is a replay to
        it, dropped in silence, so the flight would be lost until a retransmission timer:
        the server's unencrypted records are numbered from this hello's own record number
        instead, above that of every hello the client sent before it.

        Raises:
            DTLSError: OpenSSL refused the hello.
        """
        self._epoch0_floor = int.from_bytes(client_hello[5:11])
        self._conn.bio_write(client_hello)
        try:
            self._conn.DTLSv1_listen()
        except SSL.Error as exc:
            raise error_from_ssl("DTLS handshake failed", exc) from None

    def handshake(self) -> bool:
        """Advance the handshake with what was fed; whether it has finished.

        Raises:
            DTLSError: The handshake failed (its alert, if any, waits in :meth:`outgoing`).
        """
        if self.established:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            if self._hostname_failed:
                message = f"certificate verify failed: not valid for {self._hostname!r}"
                error = DTLSError(f"DTLS handshake failed: {message}")
                error.__cause__ = exc
                raise error from None
            raise error_from_ssl("DTLS handshake failed", exc) from None
        self.established = True
        return True

    def timer(self) -> float | None:
        """Seconds until OpenSSL wants :meth:`on_timer` called (``None``: no timer runs)."""
        timeout = self._conn.DTLSv1_get_timeout()
        return None if timeout is None else float(timeout)

    def on_timer(self) -> None:
        """Let OpenSSL retransmit its last flight if its timer has expired."""
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            raise error_from_ssl("DTLS handshake failed", exc) from None

    def outgoing(self) -> list[bytes]:
        """What OpenSSL wants sent, as datagrams of at most the MTU (possibly none)."""
        stream = self._drain()
        if not stream:
            return []
        floor = self._epoch0_floor
        if floor is not None:
            first = first_epoch0_number(stream)
            if first is not None:  # the server's first flight: fix the shift for good
                self._epoch0_floor = None
                self._epoch0_shift = max(0, floor - first)
        if self._epoch0_shift:
            stream = shift_epoch0(stream, self._epoch0_shift)
        return pack_records(stream, self.mtu)

    def _drain(self) -> bytes:
        conn = self._conn
        try:
            chunk = conn.bio_read(_READ_SIZE)
        except SSL.WantReadError:
            return b""
        if len(chunk) < _READ_SIZE:
            return chunk  # a memory BIO hands over all it holds: nothing is left
        chunks = [chunk]
        while True:
            try:
                chunks.append(conn.bio_read(_READ_SIZE))
            except SSL.WantReadError:
                return b"".join(chunks)

    # -- data --------------------------------------------------------------------------------

    def feed_untrusted(self, datagram: bytes) -> list[bytes]:
        """Take one received datagram; the application data it carried (possibly none).

        Bad records, replays and garbage are dropped (and counted), never raised. During the
        handshake the datagram advances it; call :meth:`handshake` afterwards.
        """
        types = record_types_untrusted(datagram)
        if types is None:
            self.records_dropped += 1
            return []
        conn = self._conn
        conn.bio_write(datagram)
        if not self.established:
            return []  # the caller's handshake() reads it
        plaintexts: list[bytes] = []
        expected = types.count(APPLICATION_DATA)
        # Only application records: once each has been read there is nothing more to ask
        # for (the usual case, one record, costs one call and no WantReadError).
        bounded = expected == len(types)
        while not bounded or len(plaintexts) < expected:
            try:
                plaintexts.append(conn.recv(MAX_RECORD_PLAINTEXT))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed_by_peer = True
                break
            except SSL.Error:
                # A fatal alert from the peer, or a record OpenSSL refuses: the association
                # is over, as after a close_notify.
                self.closed_by_peer = True
                break
        if expected > len(plaintexts):
            self.records_dropped += expected - len(plaintexts)
        return plaintexts

    def seal(self, plaintext: bytes) -> list[bytes]:
        """Encrypt one packet into one record; the datagrams to send.

        Raises:
            DTLSError: The association is closed or OpenSSL refused the write.
        """
        if self.closed_by_peer:
            raise DTLSError("the peer closed the DTLS association")
        try:
            self._conn.send(plaintext)
        except SSL.Error as exc:
            raise error_from_ssl("DTLS write failed", exc) from None
        # One write is one record (at most 16 KB): a datagram of its own, nothing to pack.
        sealed = self._drain()
        return [sealed] if sealed else []

    def close_notify(self) -> list[bytes]:
        """A close_notify alert to send (nothing if the handshake never finished)."""
        if not self.established or self.closed_by_peer:
            return []
        try:
            self._conn.shutdown()
        except SSL.Error:
            return []
        return self.outgoing()

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's certificate, once verified by the handshake (``None`` if it sent none)."""
        return self._conn.get_peer_certificate(as_cryptography=True)

    @property
    def cleartext_limit(self) -> int:
        """The largest plaintext one record carries."""
        return MAX_RECORD_PLAINTEXT

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite's name."""
        return self._conn.get_cipher_name()
