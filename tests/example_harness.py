"""Running the examples (examples/*.py) as child processes for the example and nginx tests.

Every child is started with ``sys.executable``, has its standard output read line by line by a
thread, and is stopped with a signal sent to its PID (then SIGKILL if it does not exit within a
bounded time). Every wait here has a deadline; every address is on the loopback interface.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Self

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

_LISTENING = re.compile(r"listening on (\d+\.\d+\.\d+\.\d+):(\d+)")


def example_command(script: str, *args: str) -> list[str]:
    """The command line that runs ``examples/<script>`` with this interpreter."""
    return [sys.executable, str(EXAMPLES / script), *args]


def child_env() -> dict[str, str]:
    """The environment for a child: ours, unbuffered, with warnings shown but not fatal."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


def run_example(
    script: str, *args: str, timeout: float = 20.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an example to completion (killed after ``timeout`` seconds) and capture its output."""
    return subprocess.run(
        example_command(script, *args),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def require_tool(name: str, package: str) -> str:
    """The path of the program ``name``; skips the test, naming the package, when absent."""
    import pytest

    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package: {package})")
    return path


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module, to call its parsers directly."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def mutations(seeds: list[bytes], count: int, alphabet: bytes, seed: int) -> list[bytes]:
    """``count`` random mutations of ``seeds``: bytes flipped, cut out, or spliced in."""
    rng = random.Random(seed)
    result: list[bytes] = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 5)):
            choice = rng.random()
            if choice < 0.4 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.7 and data:
                start = rng.randrange(len(data))
                del data[start : start + rng.randint(1, 8)]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        result.append(bytes(data))
    return result


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ExampleProcess:
    """A long-running example (a server) in a child process.

    Use as a context manager: on the way out the child gets SIGTERM and, if it has not exited
    within five seconds, SIGKILL, both sent to its PID.
    """

    def __init__(self, script: str, *args: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            example_command(script, *args),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr_lines: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output

    def _read_stderr(self, stream: IO[str]) -> None:
        # Drained all along, so a chatty child never blocks on a full pipe.
        for line in stream:
            self._stderr_lines.append(line)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The next output line for which ``predicate`` is true (earlier ones are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no expected line within {timeout} s; output so far: {self.lines}\n"
                    f"stderr: {self.stderr()}"
                ) from None
            if line is None:
                self._queue.put(None)  # stay at the end for later calls
                raise AssertionError(
                    f"the example exited ({self.proc.wait(5)}) before the expected line; "
                    f"output: {self.lines}\nstderr: {self.stderr()}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def address(self, timeout: float = 10.0) -> tuple[str, int]:
        """The address from the ``listening on HOST:PORT`` line a server prints first."""
        line = self.wait_for(lambda text: _LISTENING.search(text) is not None, timeout)
        found = _LISTENING.search(line)
        assert found is not None
        return found[1], int(found[2])

    def rest_of_output(self, timeout: float = 10.0) -> list[str]:
        """Every line up to the end of the output (call after stopping the child)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the output did not end within {timeout} s") from None
            if line is None:
                self._queue.put(None)
                return self.lines
            self.lines.append(line)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``signum`` to the child's PID and wait for it to exit; its exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(f"the example did not exit within {timeout} s") from None

    def stderr(self) -> str:
        """What the child wrote to standard error so far."""
        return "".join(self._stderr_lines)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(5)

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after five seconds) and release its pipes."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._kill()
        finally:
            # The child is gone, so both readers reach the end of their pipe.
            for reader in self._readers:
                reader.join(5)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def udp_exchange(
    port: int, payload: bytes, *, timeout: float = 2.0, expect_reply: bool = True
) -> bytes | None:
    """Send ``payload`` to 127.0.0.1:``port`` from a fresh socket; the reply, or ``None``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            if expect_reply:
                raise AssertionError(f"no reply to {payload[:40]!r} within {timeout} s") from None
            return None
        return data


def send_datagrams(port: int, payloads: Sequence[bytes]) -> None:
    """Send each payload to 127.0.0.1:``port`` from one socket, expecting no reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, ("127.0.0.1", port))
