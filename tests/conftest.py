"""Shared fixtures: every async test runs on asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from endpoint_harness import LOOPBACK_FAMILIES

_BACKENDS: list[Any] = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]
if sys.platform != "win32":
    _BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
_BACKENDS.append(pytest.param(("trio", dict[str, Any]()), id="trio"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The anyio backend (and options) a test runs on; the id names it."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture(params=LOOPBACK_FAMILIES)
def family_host(request: pytest.FixtureRequest) -> tuple[int, str]:
    """``(family, loopback host)``: IPv4, and IPv6 where this machine has ``::1``."""
    value: tuple[int, str] = request.param
    return value
