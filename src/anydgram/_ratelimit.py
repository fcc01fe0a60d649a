"""Per-source limits for the server: a token-bucket rate limit and an anti-amplification cap.

Both key their state by *source*: the sender's IP address with the port ignored, IPv6
addresses grouped by /64 (one host or site usually holds a whole /64, so a finer key would let
it multiply its budget), IPv4-mapped IPv6 addresses as the IPv4 address they carry. Both keep
that state in a table bounded by ``max_sources`` that forgets the least recently seen source
first (an ordered dict, O(1) per datagram), so a flood from spoofed addresses costs a bounded
amount of memory.

Neither reads a clock: the server passes the time in, once per batch of datagrams.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, cast

__all__ = ("AmplificationLimiter", "RateLimit", "RateLimiter", "source_key")

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sources the anti-amplification table remembers when no rate limit sets ``max_sources``.
DEFAULT_MAX_SOURCES: Final = 4096


def source_key(address: object) -> Any:
    """The key of the source that sent from ``address`` (see the module docstring).

    An IPv4 address as its string, an IPv6 /64 as an int (the top 64 bits), or the address
    itself for anything else.
    """
    if isinstance(address, tuple) and address:
        host: object = cast("Any", address)[0]
        if isinstance(host, str):
            if ":" not in host:
                return host
            try:
                ip = ipaddress.IPv6Address(host.partition("%")[0])
            except ValueError:
                return host
            mapped = ip.ipv4_mapped
            if mapped is not None:
                return str(mapped)
            return int(ip) >> 64
    return cast("Any", address)


def _key_network(key: Any) -> IPNetwork | None:
    if isinstance(key, str):
        try:
            return ipaddress.IPv4Network(key)
        except ValueError:
            return None
    if isinstance(key, int):
        return ipaddress.IPv6Network((key << 64, 64))
    return None


def _check_number(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """A per-source rate limit for :class:`~anydgram.DatagramServer` (``rate_limit=``).

    A token bucket per source: each source may send ``burst`` datagrams at once, then
    ``rate`` per second on average. A source is the sender's IP address, port ignored; IPv6
    addresses are grouped by /64 (so an IPv6 ``allow`` network narrower than /64 exempts the
    whole /64 it lies in), and IPv4-mapped IPv6 addresses count as their IPv4 address.
    Datagrams over the limit are dropped before parsing, never reach the handler, and are
    counted in ``rate_limited``.

    The server remembers at most ``max_sources`` sources and forgets the least recently seen
    one first, so a flood from many (possibly spoofed) addresses takes bounded memory; a
    forgotten source starts again with a full bucket.

    Instances are immutable and may be shared between servers (each keeps its own state).

    Args:
        rate: Datagrams per second a source may send on average (> 0).
        burst: Datagrams a source may send at once (>= 1); also the bucket a new source
            starts with.
        max_sources: How many sources to remember (>= 1).
        log_only: Drop nothing; only count in ``rate_limited`` (and log) what would have been
            dropped. To try a limit out on live traffic.
        allow: IP networks exempt from the limit, as strings (``"10.0.0.0/8"``, ``"::1"``) or
            :mod:`ipaddress` network or address objects. An entry in IPv4-mapped form
            (``"::ffff:10.0.0.0/104"``) is kept as the IPv4 network it maps (``10.0.0.0/8``),
            since such sources are keyed as IPv4; an IPv6 network that contains the whole
            mapped range (``"::/0"``) also allows every IPv4 source.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range, or an ``allow`` entry is not an IP network.
    """

    rate: float
    burst: float
    max_sources: int
    log_only: bool
    allow: tuple[IPNetwork, ...]

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
        log_only: bool = False,
        allow: Iterable[str | IPNetwork | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> None:
        rate = _check_number("rate", rate)
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        burst = _check_number("burst", burst)
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        if not isinstance(max_sources, int) or isinstance(max_sources, bool):
            raise TypeError(f"max_sources must be an int, not {type(max_sources).__name__}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources}")
        if isinstance(allow, str | bytes):
            raise TypeError("allow must be an iterable of networks, not a single string")
        networks: list[IPNetwork] = []
        for item in allow:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                network: IPNetwork = item
            elif isinstance(item, str | ipaddress.IPv4Address | ipaddress.IPv6Address):  # pyright: ignore[reportUnnecessaryIsInstance]
                try:
                    network = ipaddress.ip_network(item)
                except ValueError as exc:
                    raise ValueError(f"allow: not an IP network: {item!r} ({exc})") from None
            else:
                raise TypeError(
                    f"allow entries must be str or ipaddress networks, not {type(item).__name__}"
                )
            networks.extend(_as_source_networks(network))
        set_ = object.__setattr__
        set_(self, "rate", rate)
        set_(self, "burst", burst)
        set_(self, "max_sources", max_sources)
        set_(self, "log_only", bool(log_only))
        set_(self, "allow", tuple(networks))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.rate!r}, {self.burst!r}, "
            f"max_sources={self.max_sources!r}, log_only={self.log_only!r}, "
            f"allow={tuple(str(n) for n in self.allow)!r})"
        )


#: IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``): sources there are keyed as IPv4.
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _as_source_networks(network: IPNetwork) -> list[IPNetwork]:
    """``network`` as :func:`source_key` sees its sources.

    A source in IPv4-mapped form is keyed as the IPv4 address, so an ``allow`` entry written
    that way (``"::ffff:10.0.0.0/104"``) becomes the IPv4 network (``10.0.0.0/8``), and an
    IPv6 network that contains the whole mapped range (``"::/0"``) also allows every IPv4
    source.
    """
    if isinstance(network, ipaddress.IPv4Network) or not network.overlaps(_MAPPED):
        return [network]
    if network.prefixlen >= _MAPPED.prefixlen:
        start = int(network.network_address) & 0xFFFFFFFF
        return [ipaddress.IPv4Network((start, network.prefixlen - _MAPPED.prefixlen))]
    return [network, ipaddress.IPv4Network("0.0.0.0/0")]


def _is_allowed(key: Any, allow: tuple[IPNetwork, ...]) -> bool:
    if not allow:
        return False
    network = _key_network(key)
    if network is None:
        return False
    return any(network.version == a.version and network.overlaps(a) for a in allow)


class RateLimiter:
    """A :class:`RateLimit`'s state: a token bucket per source in a bounded LRU table."""

    __slots__ = ("_allow", "_burst", "_max", "_rate", "_table", "limited", "log_only")

    def __init__(self, config: RateLimit) -> None:
        self._rate = config.rate
        self._burst = config.burst
        self._max = config.max_sources
        self._allow = config.allow
        self.log_only = config.log_only
        #: key -> [tokens, last refill time, exempt]
        self._table: OrderedDict[Any, list[Any]] = OrderedDict()
        #: Datagrams over the limit (dropped, or in log-only mode, let through).
        self.limited = 0

    def __len__(self) -> int:
        return len(self._table)

    def admit(self, key: Any, now: float) -> bool:
        """Take a token from ``key``'s bucket at time ``now``; ``False`` if it had none.

        A refusal is counted in :attr:`limited` (even in log-only mode, where the caller
        delivers the datagram anyway).
        """
        table = self._table
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._max:
                table.popitem(last=False)
            exempt = _is_allowed(key, self._allow)
            table[key] = [self._burst - 1.0, now, exempt]
            return True
        table.move_to_end(key)
        if entry[2]:
            return True
        tokens: float = entry[0] + (now - entry[1]) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        entry[1] = now
        if tokens >= 1.0:
            entry[0] = tokens - 1.0
            return True
        entry[0] = tokens
        self.limited += 1
        return False


class AmplificationLimiter:
    """Payload bytes sent to a source stay <= ``factor`` x bytes received from it.

    Until the source is validated (:meth:`validate`), after which sends to it are not
    limited. The table is bounded like :class:`RateLimiter`'s; a forgotten source starts from
    zero both ways (so the cap still holds for what is remembered) and must be validated
    again.
    """

    __slots__ = ("_factor", "_max", "_table", "dropped")

    def __init__(self, factor: float, max_sources: int = DEFAULT_MAX_SOURCES) -> None:
        self._factor = factor
        self._max = max_sources
        #: key -> [bytes received, bytes sent, validated]
        self._table: OrderedDict[Any, list[Any]] = OrderedDict()
        #: Sends refused.
        self.dropped: int = 0

    def __len__(self) -> int:
        return len(self._table)

    def _entry(self, key: Any) -> list[Any]:
        table = self._table
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._max:
                table.popitem(last=False)
            entry = table[key] = [0, 0, False]
        else:
            table.move_to_end(key)
        return entry

    def received(self, key: Any, size: int) -> None:
        """Count ``size`` payload bytes received from ``key``."""
        self._entry(key)[0] += size

    def validate(self, key: Any) -> None:
        """Lift the cap for ``key`` (while it stays in the table)."""
        self._entry(key)[2] = True

    def may_send(self, key: Any, size: int) -> bool:
        """Count a send of ``size`` bytes to ``key`` if the cap allows it; else count a drop."""
        entry = self._entry(key)
        if entry[2]:
            return True
        sent = entry[1] + size
        if sent <= self._factor * entry[0]:
            entry[1] = sent
            return True
        self.dropped += 1
        return False
