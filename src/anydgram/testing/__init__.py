"""Testing helpers: an in-memory network to run endpoints, clients and servers without ports.

See :doc:`/testing` for a how-to.
"""

from __future__ import annotations

from ._memory_network import MemoryNetwork as MemoryNetwork
from ._memory_network import NetworkStatistics as NetworkStatistics

__all__ = ("MemoryNetwork", "NetworkStatistics")


def _publish() -> None:
    # Report the public namespace, not the private module, in reprs, tracebacks and docs.
    for name in __all__:
        obj = globals()[name]
        if obj.__module__.startswith(__name__ + "._"):
            obj.__module__ = __name__


_publish()
