"""``serve --metrics`` and ``serve --stats-interval``: watching a server while it runs."""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import anyio

from .._address import format_host_port
from .._statistics import ServerStatistics
from ._runner import CLIError

__all__ = ("MetricsServer", "metrics_address", "print_statistics", "statistics_line")

#: Where ``--metrics PORT`` (no host) listens.
DEFAULT_METRICS_HOST = "127.0.0.1"


def metrics_address(text: str) -> tuple[str, int]:
    """Parse ``--metrics [HOST:]PORT``: the host defaults to 127.0.0.1.

    HOST must be ``localhost`` or a literal IP address (``[...]`` around IPv6), so a
    non-loopback address is only ever used when it is written out in the option; a name is
    refused, since it could resolve to anything.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_METRICS_HOST, text
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not [HOST:]PORT: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--metrics HOST must be localhost or an IP address, not {host!r}"
            ) from None
    return host, port


class MetricsServer:
    """prometheus_client's HTTP server for ``/metrics``, with ``server`` registered."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise CLIError(
                "--metrics needs prometheus_client: pip install 'anydgram[prometheus]'"
            ) from None
        from ..metrics import register, unregister

        self._registry = prometheus_client.CollectorRegistry()
        try:
            self._httpd, self._thread = prometheus_client.start_http_server(
                port, addr=host, registry=self._registry
            )
        except OSError as exc:
            where = format_host_port(host, port)
            raise CLIError(f"could not serve metrics on {where}: {exc.strerror or exc}") from None
        self._server = server
        self._unregister = unregister
        register(server, name="serve", registry=self._registry)
        self.url = f"http://{format_host_port(host, self._httpd.server_port)}/metrics"

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        self._unregister(self._server)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def statistics_line(before: ServerStatistics, after: ServerStatistics, seconds: float) -> str:
    """One compact line: rates over the interval, and the counts of trouble in it.

    ``drops`` counts the datagrams lost in the interval: dropped by the kernel, by the
    rate limit, or (replies) by the anti-amplification limit.
    """
    seconds = max(seconds, 1e-9)

    def delta(field: str) -> int:
        value: int = getattr(after, field) - getattr(before, field)
        return value

    drops = delta("kernel_drops") + delta("rate_limited") + delta("amplification_dropped")
    return (
        f"{time.strftime('%H:%M:%S')} received {delta('datagrams_received') / seconds:.0f}/s "
        f"sent {delta('datagrams_sent') / seconds:.0f}/s parse errors {delta('parse_errors')} "
        f"drops {drops} handlers active {after.handlers_active}"
    )


async def print_statistics(
    statistics: Callable[[], ServerStatistics],
    interval: float,
    write: Callable[[str], None],
) -> None:
    """Write :func:`statistics_line` every ``interval`` seconds until cancelled."""
    before, started = statistics(), anyio.current_time()
    deadline = started
    while True:
        deadline += interval  # on a fixed schedule: a slow write does not drift the lines
        await anyio.sleep_until(deadline)
        after, now = statistics(), anyio.current_time()
        write(statistics_line(before, after, now - started))
        before, started = after, now
