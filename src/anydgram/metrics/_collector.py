"""One prometheus_client collector per registry, reading ``statistics()`` at scrape time."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterator
from typing import Any, Final, Protocol

from .._address import format_address, format_addresses
from .._statistics import EndpointStatistics, ServerStatistics
from ..serializers._abc import import_optional

__all__ = ("LEVELS", "register", "unregister")

#: The statistics fields reported as gauges: levels that go down as well as up, or (the
#: peak) a high-water mark. Every other field is a counter.
LEVELS: Final = frozenset(
    {"handlers_active", "handlers_peak", "recv_buffer_size", "send_buffer_size", "dtls_sessions"}
)


def _field_docs() -> dict[str, str]:
    """Each statistics field's help text: the first sentence of its docstring entry."""
    docs: dict[str, str] = {}
    for cls in (EndpointStatistics, ServerStatistics):
        for match in _ATTRIBUTE.finditer((cls.__doc__ or "").split("Attributes:")[-1]):
            text = " ".join(match.group(2).replace("``", "").split())
            docs.setdefault(match.group(1), text.split(". ")[0].rstrip("."))
    return docs


# An "Attributes:" entry: "        name: text", continued by deeper-indented lines.
_ATTRIBUTE: Final = re.compile(r"^ {8}(\w+): (.*(?:\n {12}.*)*)", re.MULTILINE)
_DOCS: Final = _field_docs()


class _HasStatistics(Protocol):
    def statistics(self) -> EndpointStatistics | ServerStatistics: ...


class _Collector:
    """The objects registered with one registry, and their current labels."""

    def __init__(self) -> None:
        self.objects: dict[int, tuple[Any, str | None]] = {}

    def describe(self) -> list[Any]:
        # Nothing to describe up front: the set of objects changes between scrapes.
        return []

    def collect(self) -> Iterator[Any]:
        core = import_optional(
            "prometheus_client.core", owner="anydgram.metrics", extra="prometheus"
        )
        families: dict[str, Any] = {}
        for obj, name in list(self.objects.values()):
            label = name if name is not None else _default_name(obj)
            for field, value in dataclasses.asdict(obj.statistics()).items():
                family = families.get(field)
                if family is None:
                    kind = core.GaugeMetricFamily if field in LEVELS else core.CounterMetricFamily
                    family = families[field] = kind(
                        f"anydgram_{field}", _DOCS.get(field, field), labels=("name",)
                    )
                family.add_metric((label,), value)
        yield from families.values()


_lock = threading.Lock()
_collectors: dict[int, tuple[Any, _Collector]] = {}  # by id(registry)
_registered: dict[int, Any] = {}  # id(obj) -> registry


def _default_name(obj: Any) -> str:
    """The bound address (or addresses, for a server), or ``"unbound"`` before binding."""
    try:
        addresses = getattr(obj, "addresses", None)
        if addresses is not None:
            return format_addresses(addresses) or "unbound"
        return format_address(obj.local_address)
    except Exception:  # not bound yet, or closed: the label must not break the scrape
        return "unbound"


def register(obj: _HasStatistics, *, name: str | None = None, registry: Any = None) -> None:
    """Report ``obj``'s statistics to Prometheus, read at every scrape.

    Args:
        obj: A :class:`~anydgram.DatagramServer`, an endpoint or client (async or blocking),
            or anything whose ``statistics()`` returns :class:`~anydgram.ServerStatistics`
            or :class:`~anydgram.EndpointStatistics`.
        name: The ``name`` label of its samples; by default its bound address (a server's
            addresses, comma-separated), read at each scrape.
        registry: A ``prometheus_client.CollectorRegistry``; by default
            ``prometheus_client.REGISTRY``, which ``prometheus_client.start_http_server``
            serves.

    Raises:
        ImportError: prometheus_client is not installed.
        TypeError: ``obj`` has no ``statistics()`` returning one of the statistics classes,
            or ``name`` is not a string.
        ValueError: ``obj`` is already registered, or another object has the same ``name``
            in this registry.
    """
    prometheus_client = import_optional(
        "prometheus_client", owner="anydgram.metrics", extra="prometheus"
    )
    method = getattr(obj, "statistics", None)
    stats = method() if callable(method) else None
    if not isinstance(stats, (ServerStatistics, EndpointStatistics)):
        raise TypeError(
            f"cannot register {type(obj).__name__}: it has no statistics() method returning "
            "ServerStatistics or EndpointStatistics"
        )
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _lock:
        if id(obj) in _registered:
            raise ValueError(f"{obj!r} is already registered; unregister() it first")
        entry = _collectors.get(id(registry))
        if entry is None:
            entry = _collectors[id(registry)] = (registry, _Collector())
            registry.register(entry[1])
        collector = entry[1]
        if name is not None and any(n == name for _, n in collector.objects.values()):
            raise ValueError(f"another object is registered with name={name!r}")
        collector.objects[id(obj)] = (obj, name)
        _registered[id(obj)] = registry


def unregister(obj: object) -> None:
    """Stop reporting ``obj``'s statistics.

    Raises:
        KeyError: ``obj`` is not registered.
    """
    with _lock:
        registry = _registered.pop(id(obj), None)
        if registry is None:
            raise KeyError(f"{obj!r} is not registered")
        _, collector = _collectors[id(registry)]
        del collector.objects[id(obj)]
        if not collector.objects:
            # The last one: take the collector out, so an idle registry stays clean.
            registry.unregister(collector)
            del _collectors[id(registry)]
