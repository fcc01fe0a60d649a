"""The optional compiled fast path, chosen at import: ``anydgram._speedups`` or pure Python.

The extension is built from a clone when a C compiler is there (``hatch_build.py``); without
one the install still succeeds and the pure-Python code runs, as it does wherever
``ANYDGRAM_NO_EXTENSIONS`` is set (to anything but ``0``/``false``/``no``/``off``). The Python
code is the reference: the compiled functions return the same objects, change the same state
and raise the same errors (``tests/test_speedups.py`` compares them).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final

__all__ = ("ENV_SWITCH", "speedups")

#: Set to ``1`` to run the pure-Python path even where the extension is built.
ENV_SWITCH: Final = "ANYDGRAM_NO_EXTENSIONS"


def _load() -> ModuleType | None:
    if os.environ.get(ENV_SWITCH, "").strip().lower() not in {"", "0", "false", "no", "off"}:
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups


#: The extension module, or ``None`` where the pure-Python path runs.
speedups: Final[ModuleType | None] = _load()
