"""DTLS over anydgram's clients and server (the ``dtls`` extra: pyOpenSSL, cryptography).

:func:`connect_dtls` opens an encrypted :class:`DTLSClient` (the whole
:class:`~anydgram.DatagramClient` API), :class:`SyncDTLSClient` is its blocking twin, and
``DatagramServer(..., dtls=...)`` serves handlers decrypted packets. See the DTLS guide.
"""

from __future__ import annotations

import importlib as _importlib

try:
    _importlib.import_module("OpenSSL.SSL")
except ImportError as _exc:  # say which extra, not just which module, is missing
    raise ImportError(
        "anydgram.dtls needs pyOpenSSL and cryptography: pip install 'anydgram[dtls]'"
    ) from _exc

from ._client import DTLSClient as DTLSClient
from ._client import connect_dtls as connect_dtls
from ._contexts import DTLSError as DTLSError
from ._contexts import client_context as client_context
from ._contexts import server_context as server_context
from ._server_side import DTLSServerConfig as DTLSServerConfig
from ._sync_client import SyncDTLSClient as SyncDTLSClient

__all__ = (
    "DTLSClient",
    "DTLSError",
    "DTLSServerConfig",
    "SyncDTLSClient",
    "client_context",
    "connect_dtls",
    "server_context",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
