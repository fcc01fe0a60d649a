"""Building ``OpenSSL.SSL.Context`` objects for DTLS, and the one translation of its errors."""

from __future__ import annotations

import ipaddress
import os
from typing import Final, cast

from cryptography import x509
from OpenSSL import SSL

__all__ = (
    "DTLSError",
    "check_context",
    "client_context",
    "error_from_ssl",
    "hostname_matches",
    "prepare_connection",
    "server_context",
)

#: DTLS 1.2's wire version (OpenSSL's ``DTLS1_2_VERSION``; pyOpenSSL does not export it).
DTLS1_2_VERSION: Final = 0xFEFD

#: Options every context gets: no compression (CRIME), no renegotiation (a new handshake is
#: simpler and no weaker), and no MTU queries (a memory BIO has no MTU: the MTU is ours).
_OPTIONS: Final = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_QUERY_MTU


class DTLSError(OSError):
    """A DTLS handshake or record failed; the message carries OpenSSL's reason.

    Raised by :func:`~anydgram.dtls.connect_dtls` (bad certificate, wrong host name, no shared
    cipher, handshake timeout) and by clients whose peer closed the association.
    """


def error_from_ssl(what: str, exc: SSL.Error) -> DTLSError:
    """``exc`` (pyOpenSSL's list of ``(library, function, reason)``) as a :class:`DTLSError`."""
    details: object = exc.args[0] if exc.args else None
    items = cast("list[object]", details) if isinstance(details, list) else []
    reasons = [
        str(cast("tuple[object, ...]", item)[-1])
        for item in items
        if isinstance(item, tuple) and item
    ]
    reason = "; ".join(reasons) or str(exc) or type(exc).__name__
    error = DTLSError(f"{what}: {reason}")
    error.__cause__ = exc
    return error


def _path(value: str | os.PathLike[str], name: str) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, not {type(value).__name__}")
    return os.fspath(value)


def _new_context(method: int) -> SSL.Context:
    context = SSL.Context(method)
    context.set_min_proto_version(DTLS1_2_VERSION)
    context.set_options(_OPTIONS)
    return context


def client_context(
    *,
    cafile: str | os.PathLike[str] | None = None,
    verify: bool = True,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
) -> SSL.Context:
    """A DTLS client context with safe defaults.

    DTLS 1.2 or newer, no compression, no renegotiation, and (unless ``verify`` is false) the
    server's certificate verified against ``cafile`` or the system's trust store; the host
    name is checked by :func:`~anydgram.dtls.connect_dtls`.

    Args:
        cafile: PEM file of the certificate authorities to trust; ``None``: the system's.
        verify: Verify the server's certificate (turn off only for tests).
        certfile: PEM certificate chain to present for mutual authentication.
        keyfile: Its private key (``None``: in ``certfile``).

    Raises:
        TypeError: A path has the wrong type.
        OpenSSL.SSL.Error: A file cannot be read or the key does not match the certificate.
    """
    context = _new_context(SSL.DTLS_CLIENT_METHOD)
    if verify:
        context.set_verify(SSL.VERIFY_PEER)
        if cafile is None:
            context.set_default_verify_paths()
        else:
            context.load_verify_locations(_path(cafile, "cafile"))
    else:
        context.set_verify(SSL.VERIFY_NONE)
    if certfile is not None:
        _load_identity(context, certfile, keyfile)
    elif keyfile is not None:
        raise ValueError("keyfile needs a certfile")
    return context


def server_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    cafile: str | os.PathLike[str] | None = None,
    require_client_certificate: bool = False,
) -> SSL.Context:
    """A DTLS server context with safe defaults.

    DTLS 1.2 or newer, no compression, no renegotiation. With ``cafile``, client certificates
    are asked for and verified against it; with ``require_client_certificate`` a client
    without one is refused.

    Args:
        certfile: PEM certificate chain of the server.
        keyfile: Its private key (``None``: in ``certfile``).
        cafile: PEM file of the authorities whose client certificates are accepted.
        require_client_certificate: Refuse clients that present no (valid) certificate.

    Raises:
        TypeError: A path has the wrong type.
        ValueError: ``require_client_certificate`` without ``cafile``.
        OpenSSL.SSL.Error: A file cannot be read or the key does not match the certificate.
    """
    context = _new_context(SSL.DTLS_SERVER_METHOD)
    _load_identity(context, certfile, keyfile)
    if require_client_certificate and cafile is None:
        raise ValueError("require_client_certificate needs a cafile to verify clients with")
    if cafile is not None:
        context.load_verify_locations(_path(cafile, "cafile"))
        mode = SSL.VERIFY_PEER
        if require_client_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    return context


def _load_identity(
    context: SSL.Context,
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None,
) -> None:
    cert = _path(certfile, "certfile")
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(cert if keyfile is None else _path(keyfile, "keyfile"))
    context.check_privatekey()


def check_context(context: object) -> SSL.Context:
    """``context`` if it is a pyOpenSSL context, else ``TypeError``."""
    if not isinstance(context, SSL.Context):
        raise TypeError(f"expected an OpenSSL.SSL.Context, got {type(context).__name__}")
    return context


def prepare_connection(conn: SSL.Connection) -> None:
    """Check ``conn`` speaks DTLS and set what a memory-BIO DTLS connection needs.

    Per connection, not per context: pyOpenSSL freezes a context once a connection was made
    from it, and a caller's context may be used for many.

    Raises:
        ValueError: The context is a TLS one: it would put TLS records on UDP.
    """
    if not conn.get_protocol_version_name().startswith("DTLS"):
        raise ValueError("the context is not a DTLS one (make it with SSL.DTLS_METHOD)")
    conn.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)


def hostname_matches(certificate: x509.Certificate, hostname: str) -> bool:
    """Whether ``certificate``'s subjectAltName covers ``hostname`` (a name or an IP literal).

    DNS names match case-insensitively, with a ``*`` allowed as the whole leftmost label
    (RFC 6125); IP literals match iPAddress entries only. No common-name fallback.
    """
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        ip = None
    if ip is not None:
        return ip in names.get_values_for_type(x509.IPAddress)
    wanted = hostname.rstrip(".").lower().split(".")
    for pattern in names.get_values_for_type(x509.DNSName):
        labels = pattern.rstrip(".").lower().split(".")
        if len(labels) != len(wanted):
            continue
        if labels == wanted or (labels[0] == "*" and len(labels) > 2 and labels[1:] == wanted[1:]):
            return True
    return False
