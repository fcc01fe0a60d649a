"""Build hook: compile the optional fast path ``src/anydgram/_speedups.c`` when it can.

Runs for wheels and editable installs (``pip install -e .``). With a working C compiler and
the Python headers the extension is built in place, next to the package's modules, so an
editable install (which imports from ``src/``) finds it and a wheel carries it. Without them
(no compiler, ``CC=/bin/false``, no headers, not Linux) it says so on stderr and the install
goes on as pure Python. ``ANYDGRAM_NO_EXTENSIONS=1`` at build time skips the build. Only the
interpreter's own ``sysconfig`` is used: no build dependency beyond hatchling.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_SOURCE = Path("src", "anydgram", "_speedups.c")


def _skip_requested() -> bool:
    value = os.environ.get("ANYDGRAM_NO_EXTENSIONS", "").strip().lower()
    return value not in {"", "0", "false", "no", "off"}


def compile_speedups(root: Path) -> Path | None:
    """Compile the extension in place under ``root``; its path, or ``None`` (and why, on stderr).

    A failed build also removes an extension left by an earlier one, so the source and the
    module that runs never differ.
    """
    source = root / _SOURCE
    target = source.with_name("_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    if _skip_requested() or not sys.platform.startswith("linux"):
        target.unlink(missing_ok=True)
        return None
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch, target.name)
        command = [
            *compiler,
            "-O2",
            "-fPIC",
            "-shared",
            "-fno-strict-aliasing",
            f"-I{include}",
            str(source),
            "-o",
            str(built),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            done = None
            reason = str(exc)
        else:
            reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or [
                f"exit {done.returncode}"
            ]
            reason = reason[0]
        if done is None or done.returncode != 0 or not built.exists():
            target.unlink(missing_ok=True)
            print(
                f"anydgram: the optional C fast path was not built ({reason}); "
                "installing the pure-Python package",
                file=sys.stderr,
            )
            return None
        os.replace(built, target)
    return target


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compile ``anydgram._speedups`` for wheels and editable installs, if possible."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Build the extension; a wheel that carries it is tagged for this interpreter."""
        built = compile_speedups(Path(self.root))
        if built is None:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports it from src/ in place
            build_data["artifacts"].append(built.relative_to(self.root).as_posix())
