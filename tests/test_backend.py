"""Backend names, as run() and the CLI take them (``_backend.py``)."""

from __future__ import annotations

import pytest

from anydgram import (
    DatagramServer,
)
from anydgram._workers import resolve_backend
from server_harness import echo

pytestmark = pytest.mark.anyio


def test_backend_names() -> None:
    assert resolve_backend("asyncio", None) == ("asyncio", {})
    assert resolve_backend("uvloop", {"debug": True}) == (
        "asyncio",
        {"debug": True, "use_uvloop": True},
    )
    assert resolve_backend("trio", None) == ("trio", {})
    with pytest.raises(ValueError, match="'asyncio', 'uvloop', 'trio'"):
        resolve_backend("curio", None)
    server = DatagramServer("127.0.0.1", 0, echo)
    with pytest.raises(ValueError, match="workers"):
        server.run(workers=0)


def test_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "trio", None)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ImportError, match=r"anydgram\[trio\]"):
        resolve_backend("trio", None)
    with pytest.raises(ImportError, match=r"anydgram\[uvloop\]"):
        resolve_backend("uvloop", None)
