"""How addresses are written for people: ``host:port``, IPv6 literals in brackets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

__all__ = ("format_address", "format_addresses", "format_host_port")


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:9999``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_address(address: object) -> str:
    """An address as the socket module gives it (an IP tuple, a Unix path, ...), for people."""
    items = cast("tuple[object, ...]", address) if isinstance(address, tuple) else ()
    if len(items) >= 2 and isinstance(items[1], int):
        return format_host_port(str(items[0]), items[1])
    return f"{address!r}"


def format_addresses(addresses: Iterable[object]) -> str:
    """Several addresses, comma-separated."""
    return ", ".join(format_address(address) for address in addresses)
