"""Prometheus metrics for servers, endpoints and clients (the ``prometheus`` extra).

:func:`register` adds an object to a `prometheus_client <https://prometheus.github.io/
client_python/>`_ registry. Nothing is counted per datagram: each scrape calls the object's
``statistics()`` and reports what it returns. Every counter of the statistics becomes a
Prometheus counter ``anydgram_<field>_total``; the levels (``handlers_active``,
``handlers_peak``, ``recv_buffer_size``, ``send_buffer_size``, ``dtls_sessions``) become gauges
``anydgram_<field>``. Each sample has a ``name`` label that tells the registered objects
apart.
"""

from __future__ import annotations

from ._collector import LEVELS as LEVELS
from ._collector import register as register
from ._collector import unregister as unregister

__all__ = ("LEVELS", "register", "unregister")

for _name in ("register", "unregister"):
    globals()[_name].__module__ = __name__
