"""``anydgram demo``: the classic UDP pinger exercise, in one process.

A server on a free loopback port ignores 30% of requests; a pinger sends it 10 datagrams.
The loss is drawn from a seeded random generator, so every run drops the same three requests
and the command always succeeds, in under five seconds.
"""

from __future__ import annotations

from typing import Any

import anyio

from .. import DatagramServer
from ._output import format_address, format_host_port, server_statistics_lines, write_line
from ._ping import PingOptions, PingReport, ping
from ._runner import Backend, run
from ._serve import ModeHandler

__all__ = ("run_demo",)

#: With this seed, the server's first ten draws ignore requests 3, 5 and 8: 30% exactly.
DEMO_SEED = 9
DEMO_LOSS = 0.3
DEMO_COUNT = 10


async def demo(
    backend: Backend,
    handler: ModeHandler,
    servers: list[DatagramServer[Any, Any]],
    report: list[PingReport],
) -> None:
    """Start the lossy server, ping it, stop it."""
    server = DatagramServer("127.0.0.1", 0, handler)
    servers.append(server)
    async with anyio.create_task_group() as tg:
        addresses: Any = await tg.start(server.serve_forever)
        host, port = str(addresses[0][0]), int(addresses[0][1])
        write_line(
            f"anydgram demo: an echo server on {format_address(addresses[0])} ignores "
            f"{DEMO_LOSS:.0%} of requests; ping it {DEMO_COUNT} times ({backend.name})."
        )
        write_line()
        options = PingOptions(host, port, count=DEMO_COUNT, interval=0.2, timeout=0.5)
        report.append(PingReport(format_host_port(host, port)))
        await ping(options, report[0])
        await server.shutdown(grace_period=1.0)


def run_demo(backend: Backend) -> int:
    """Run ``anydgram demo``: 0 when the pinger got replies (it always should), else 1."""
    handler = ModeHandler("echo", loss=DEMO_LOSS, seed=DEMO_SEED)
    servers: list[DatagramServer[Any, Any]] = []
    report: list[PingReport] = []
    run(backend, lambda: demo(backend, handler, servers, report))
    if report and report[0].started is not None:
        for line in report[0].summary_lines():
            write_line(line)
    if servers:
        write_line()
        for line in server_statistics_lines(servers[0].statistics()):
            write_line(line)
        write_line(handler.summary())
    return 0 if report and report[0].received else 1
