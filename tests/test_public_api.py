"""Public namespaces: ``__all__`` agrees with the exports; nothing leaks a private module."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

import anydgram

PUBLIC_NAMESPACES = [
    "anydgram",
    "anydgram.dtls",
    "anydgram.metrics",
    "anydgram.serializers",
    "anydgram.testing",
]


def _public_names(module: ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and name not in {"annotations", "TYPE_CHECKING"}
    }


@pytest.mark.parametrize("module_name", PUBLIC_NAMESPACES)
def test_all_matches_exports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported: tuple[str, ...] = module.__all__
    assert isinstance(exported, tuple)
    assert len(set(exported)) == len(exported), "duplicates in __all__"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name}"
    assert _public_names(module) - {"__version__"} <= set(exported)


@pytest.mark.parametrize("module_name", PUBLIC_NAMESPACES)
def test_public_objects_report_a_public_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        owner = getattr(obj, "__module__", None)
        if owner is None or not (isinstance(obj, type) or callable(obj)):
            continue
        if not owner.startswith("anydgram"):
            continue  # re-exported from elsewhere on purpose (typing.Any behind Address)
        assert owner in PUBLIC_NAMESPACES, f"{module_name}.{name} reports {owner}"
        assert not any(part.startswith("_") for part in owner.split("."))


def test_errors_are_value_errors() -> None:
    for cls in (
        anydgram.DeserializeError,
        anydgram.DatagramProtocolParseError,
        anydgram.DatagramTooLargeError,
    ):
        assert issubclass(cls, ValueError)


def test_command_line_entry_points() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anydgram", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"anydgram {anydgram.__version__}"


def test_import_does_not_load_multiprocessing() -> None:
    # Only run(workers=N) needs multiprocessing; it is imported when that runs.
    code = (
        "import sys, anydgram, anydgram.serializers, anydgram.testing; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'multiprocessing'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_datagram_metadata_is_the_frozen_dataclass_design_md_names() -> None:
    import dataclasses

    metadata = anydgram.DatagramMetadata()
    assert dataclasses.is_dataclass(metadata)
    assert [field.name for field in dataclasses.fields(metadata)] == [
        "timestamp",
        "ttl",
        "tos",
        "ecn",
        "local_address",
    ]
    assert dataclasses.astuple(metadata) == (None,) * 5  # a field the platform cannot give
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.ttl = 1  # type: ignore[misc]
    assert anydgram.DatagramMetadata.__module__ == "anydgram"
