"""The blocking ``DatagramServer.run()``: signals, and ``workers=N`` processes sharing a port.

Each case runs a small server script in a child process (on one backend each), talks to it over
127.0.0.1 with blocking sockets, and stops it with a signal sent to the PID it started.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

import pytest

BACKENDS = ["asyncio", "uvloop", "trio"]

SCRIPT = """
import logging
import os
import sys

import anyio

from anydgram import DatagramServer


async def handler(request):
    await request.respond(str(os.getpid()).encode())


async def background(worker):
    sys.stdout.write(f"background {worker} in {os.getpid()}\\n")  # one write: no interleaving
    sys.stdout.flush()
    await anyio.sleep_forever()


async def failing(worker):
    if worker == 2:
        raise ValueError("background of worker 2 failed")
    await anyio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    backend, workers, hook = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hooks = {"none": None, "background": background, "failing": failing}
    server = DatagramServer("127.0.0.1", 0, handler)
    server.run(backend=backend, workers=workers, background=hooks[hook])
    print("run returned", flush=True)
"""


class ServerProcess:
    """The server script running in a child process, and what it printed so far."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._pending = b""
        self.seen: list[str] = []

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def read_until(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """Read output lines until one matches ``pattern``; fail after ``timeout``.

        Reads the pipe unbuffered: a buffered reader can hold a line select() no longer sees.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.seen.append(line)
                match = re.search(pattern, line)
                if match:
                    return match
            remaining = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(remaining, 0))[0] if remaining > 0 else []
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                output = "\n".join(self.seen)
                pytest.fail(f"no line matched {pattern!r}; output:\n{output}")
            self._pending += chunk


@contextmanager
def server_process(
    tmp_path: Path, backend: str, workers: int, background: str = "none"
) -> Generator[ServerProcess]:
    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, str(workers), background],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, for the Ctrl-C case
    )
    try:
        yield ServerProcess(proc)
    finally:
        if proc.poll() is None:
            proc.kill()  # its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def ask_pid(port: int) -> int:
    """One request from a fresh source port; the reply is the serving process's PID."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(b"pid?", ("127.0.0.1", port))
        data, _ = sock.recvfrom(100)
    return int(data)


def wait_gone(pids: set[int], timeout: float = 5) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}")}
        time.sleep(0.02)
    return alive


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_serves_until_signalled(tmp_path: Path, backend: str, signum: int) -> None:
    with server_process(tmp_path, backend, 1) as proc:
        port = int(proc.read_until(r"^serving on 127\.0\.0\.1:(\d+)")[1])
        assert ask_pid(port) == proc.pid
        os.kill(proc.pid, signum)
        assert proc.wait(10) == 0
        proc.read_until(r"^stopped serving on")
        proc.read_until(r"^run returned")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_workers_share_the_port(tmp_path: Path, backend: str, stop: str) -> None:
    with server_process(tmp_path, backend, 2) as proc:
        match = proc.read_until(r"2 worker processes \(pids (\d+), (\d+)\) serving on .*:(\d+)")
        workers = {int(match[1]), int(match[2])}
        port = int(match[3])
        assert proc.pid not in workers
        answered = {ask_pid(port) for _ in range(200)}
        # SO_REUSEPORT spreads clients by a hash of their address: 200 source ports reach both.
        assert answered == workers
        # The supervisor holds no socket on the port.
        supervisor_fds = os.listdir(f"/proc/{proc.pid}/fd")
        inodes = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in supervisor_fds}
        assert not any(link.startswith("socket:") for link in inodes)
        if stop == "SIGTERM":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            # A terminal sends SIGINT to the whole process group: one graceful stop each.
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        proc.read_until(r"^run returned")
        assert not any("closing now" in line for line in proc.seen)
        assert sum("shutting down (grace period" in line for line in proc.seen) == 2
    assert wait_gone(workers) == set()


def test_a_dying_worker_stops_the_others(tmp_path: Path) -> None:
    with server_process(tmp_path, "asyncio", 2) as proc:
        match = proc.read_until(r"2 worker processes \(pids (\d+), (\d+)\) serving on")
        first, second = int(match[1]), int(match[2])
        os.kill(first, signal.SIGKILL)
        assert proc.wait(10) == 1
        proc.read_until(rf"RuntimeError: worker process {first} exited with code -9")
    assert wait_gone({first, second}) == set()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_background_runs_beside_each_worker(tmp_path: Path, backend: str) -> None:
    with server_process(tmp_path, backend, 2, "background") as proc:
        match = proc.read_until(r"2 worker processes \(pids (\d+), (\d+)\) serving on")
        pids = {1: int(match[1]), 2: int(match[2])}
        started: dict[int, int] = {}
        # In either order, before or after the supervisor's line.
        while len(started) < 2:
            lines = [
                m for line in proc.seen if (m := re.fullmatch(r"background (\d) in (\d+)", line))
            ]
            started = {int(m[1]): int(m[2]) for m in lines}
            if len(started) < 2:
                proc.read_until(r"^background \d in \d+$")
        assert started == pids
        os.kill(proc.pid, signal.SIGTERM)
        # The background tasks are cancelled when the servers stop, so the workers exit.
        assert proc.wait(10) == 0
        proc.read_until(r"^run returned")


def test_background_in_a_single_process(tmp_path: Path) -> None:
    with server_process(tmp_path, "asyncio", 1, "background") as proc:
        proc.read_until(r"^serving on 127\.0\.0\.1:")
        assert int(proc.read_until(r"^background 1 in (\d+)$")[1]) == proc.pid
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.read_until(r"^run returned")


def test_a_failing_background_stops_the_workers(tmp_path: Path) -> None:
    with server_process(tmp_path, "asyncio", 2, "failing") as proc:
        assert proc.wait(15) == 1
        proc.read_until(r"RuntimeError: worker process \d+ exited with code 1")
    # The worker's own exception is the cause, so the reason is in the traceback.
    assert any("ValueError: background of worker 2 failed" in line for line in proc.seen)


def test_workers_report_a_bind_failure(tmp_path: Path) -> None:
    script = tmp_path / "taken.py"
    script.write_text(
        "import socket, sys\n"
        "from anydgram import DatagramServer\n"
        "async def handler(request): pass\n"
        "taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "taken.bind(('127.0.0.1', 0))\n"
        "server = DatagramServer('127.0.0.1', taken.getsockname()[1], handler)\n"
        "try:\n"
        "    server.run(workers=2)\n"
        "except OSError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "refused: " in result.stdout
    assert "could not bind 127.0.0.1:" in result.stdout
