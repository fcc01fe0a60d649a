"""Tests for :mod:`anydgram.metrics`: a real ``/metrics`` endpoint, parsed by prometheus_client."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import anydgram.metrics
from anydgram import DatagramRequest, DatagramServer, SyncDatagramClient, connect_udp
from anydgram._statistics import EndpointStatistics, ServerStatistics
from anydgram.metrics import LEVELS, register, unregister


async def echo(request: DatagramRequest[bytes, bytes]) -> None:
    await request.respond(request.packet)


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry(auto_describe=True)


@pytest.fixture
def metrics_url(registry: prometheus_client.CollectorRegistry) -> Iterator[str]:
    httpd, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def scrape(url: str) -> dict[tuple[str, str], float]:
    """``{(sample name, name label): value}`` from one real scrape of ``url``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("anydgram_"):
            continue
        kind = "gauge" if family.name.removeprefix("anydgram_") in LEVELS else "counter"
        assert family.type == kind, family.name
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[sample.name, sample.labels["name"]] = sample.value
    return samples


def _scrape_in_thread(url: str) -> Any:
    return anyio.to_thread.run_sync(scrape, url)


async def test_a_scrape_reads_server_and_client_statistics(
    registry: prometheus_client.CollectorRegistry, metrics_url: str
) -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with server.serving() as addresses:
        host, port = addresses[0][:2]
        register(server, registry=registry)
        async with await connect_udp(host, port) as client:
            register(client, name="client", registry=registry)
            for _ in range(3):
                await client.send_packet(b"ping")
                with anyio.fail_after(5):
                    await client.recv_packet()
            samples = await _scrape_in_thread(metrics_url)
            label = f"{host}:{port}"
            assert samples["anydgram_datagrams_received_total", label] == 3
            assert samples["anydgram_datagrams_sent_total", label] == 3
            assert samples["anydgram_bytes_received_total", label] == 12
            assert samples["anydgram_handlers_active", label] == 0
            assert samples["anydgram_handlers_peak", label] >= 1
            assert samples["anydgram_recv_buffer_size", label] > 0
            assert samples["anydgram_datagrams_sent_total", "client"] == 3
            assert samples["anydgram_datagrams_received_total", "client"] == 3
            assert ("anydgram_handlers_active", "client") not in samples
            # Every statistics field is exported, under its documented name.
            for field in ServerStatistics.__dataclass_fields__:
                suffix = "" if field in LEVELS else "_total"
                assert (f"anydgram_{field}{suffix}", label) in samples
            unregister(client)
            unregister(server)
    assert not [key for key in await _scrape_in_thread(metrics_url)]


def test_blocking_client_is_registered_and_default_registry_used(registry: Any) -> None:
    with SyncDatagramClient("127.0.0.1", 9) as client:
        register(client)
        try:
            text = prometheus_client.generate_latest().decode()
            local = client.local_address
            assert isinstance(local, tuple)
            assert f'anydgram_datagrams_sent_total{{name="{local[0]}:{local[1]}"}} 0.0' in text
        finally:
            unregister(client)
    assert "anydgram_" not in prometheus_client.generate_latest().decode()


class _Fake:
    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def statistics(self) -> Any:
        return self.stats


def _endpoint_stats() -> EndpointStatistics:
    return EndpointStatistics(*range(len(EndpointStatistics.__dataclass_fields__)))


def test_bad_registrations_are_refused(registry: prometheus_client.CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="no statistics"):
        register(object(), registry=registry)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no statistics"):
        register(_Fake({"datagrams_sent": 1}), registry=registry)
    one, two = _Fake(_endpoint_stats()), _Fake(_endpoint_stats())
    register(one, name="a", registry=registry)
    with pytest.raises(ValueError, match="already registered"):
        register(one, name="b", registry=registry)
    with pytest.raises(ValueError, match="name='a'"):
        register(two, name="a", registry=registry)
    with pytest.raises(TypeError, match="name must be"):
        register(two, name=1, registry=registry)  # type: ignore[arg-type]
    unregister(one)
    with pytest.raises(KeyError, match="not registered"):
        unregister(one)
    register(two, name="a", registry=registry)  # the name is free again
    text = prometheus_client.generate_latest(registry).decode()
    assert 'anydgram_send_buffer_size{name="a"} 12.0' in text
    assert "# HELP anydgram_parse_errors_total Datagrams the protocol could not parse" in text
    unregister(two)


def test_an_unbound_object_is_labelled_unbound(registry: Any) -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    register(server, registry=registry)
    try:
        assert 'name="unbound"' in prometheus_client.generate_latest(registry).decode()
    finally:
        unregister(server)


def test_namespace() -> None:
    assert anydgram.metrics.register.__module__ == "anydgram.metrics"
    assert set(anydgram.metrics.__all__) == {"LEVELS", "register", "unregister"}
