"""A Prometheus scraper stand-in for ``server_echo.py``: GET ``/metrics`` on a fixed schedule.

It runs as a thread of the driver while a load generator runs, pinned to the load generator's
CPU, so the server's CPU sees only what serving the scrapes costs it. Each scrape must return
200 and an ``anydgram_datagrams_received_total`` sample, or it counts as failed.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from types import TracebackType
from typing import Self

from _common import CLIENT_CPU, pin_to_cpu

#: Seconds between two scrapes (Prometheus' default is 15 s; this is 150 times as often).
SCRAPE_INTERVAL = 0.1
_COUNTER = "anydgram_datagrams_received_total"


class Scraper:
    """``with Scraper(url) as scraper:`` scrapes ``url`` every ``interval`` s inside the block."""

    def __init__(self, url: str, interval: float = SCRAPE_INTERVAL) -> None:
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        #: The last value of the server's received counter a scrape returned.
        self.last_received: float | None = None
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        pin_to_cpu(CLIENT_CPU)  # on Linux, pid 0 is the calling thread: the driver stays free
        started = deadline = time.monotonic()
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline += self.interval  # a fixed schedule: a slow scrape does not drift the next
            self._scrape_once()
        self.seconds = time.monotonic() - started

    def _scrape_once(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=1) as response:
                text = response.read().decode()
        except OSError:
            self.failures += 1
            return
        for line in text.splitlines():
            if line.startswith(_COUNTER):
                self.last_received = float(line.rsplit(" ", 1)[1])
                self.scrapes += 1
                return
        self.failures += 1

    def result(self) -> dict[str, float | int | None]:
        """What happened, for the load's result."""
        return {
            "scrapes": self.scrapes,
            "scrape_failures": self.failures,
            "scrape_seconds": self.seconds,
            "scraped_datagrams_received": self.last_received,
        }
