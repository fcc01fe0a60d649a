"""Scaling out behind nginx: its UDP load balancer spreads requests over two anydgram servers.

Two ``examples/echo_server.py --tag-pid`` processes serve on loopback ports; an nginx with the
stream module balances a third loopback port over them with ``proxy_requests 1`` (each datagram
is its own session, so even one client port is spread round-robin), and when one backend stops,
the other answers everything. nginx runs in the
foreground from a temporary prefix with its own configuration, pid file and error log, as a
child process stopped by its PID. The configuration is the one docs/scaling.md shows.

Skipped, with the reason, where nginx or its stream module is not installed (Debian:
``apt-get install nginx-light libnginx-mod-stream``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from anydgram import SyncDatagramClient, SyncDatagramEndpoint
from example_harness import ExampleProcess, free_udp_port, require_tool

CONFIG = """\
{load_module}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 256;
}}

stream {{
    upstream anydgram_echo {{
        server 127.0.0.1:{port_a};
        server 127.0.0.1:{port_b};
    }}

    server {{
        listen 127.0.0.1:{port} udp;
        proxy_pass anydgram_echo;
        proxy_requests 1;   # a session per datagram: balance every request
        proxy_responses 1;  # a session ends with its one reply
        proxy_timeout 2s;
    }}
}}
"""


def stream_module_directive(nginx: str) -> str:
    """The ``load_module`` line this nginx needs for the stream module ("" when built in).

    Skips the test when nginx has no stream module, or is older than ``proxy_requests``.
    """
    version = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < (1, 15, 7):
        pytest.skip(f"nginx >= 1.15.7 is needed for proxy_requests: {version.splitlines()[:1]}")
    if "--with-stream=dynamic" in version:
        modules = re.search(r"--modules-path=(\S+)", version)
        prefix = re.search(r"--prefix=(\S+)", version)
        directory = (
            modules[1] if modules else f"{prefix[1] if prefix else '/usr/local/nginx'}/modules"
        )
        module = Path(directory) / "ngx_stream_module.so"
        if not module.exists():
            pytest.skip(f"the nginx stream module is not installed ({module}): libnginx-mod-stream")
        return f"load_module {module};\n"
    if re.search(r"--with-stream(\s|$)", version):
        return ""
    pytest.skip("nginx was built without the stream module")


@contextlib.contextmanager
def nginx_balancing(
    nginx: str, prefix: Path, port: int, backends: tuple[int, int]
) -> Generator[subprocess.Popen[bytes], None, None]:
    """nginx in the foreground, balancing 127.0.0.1:``port`` over ``backends``; stopped by PID."""
    config = prefix / "nginx.conf"
    config.write_text(
        CONFIG.format(
            load_module=stream_module_directive(nginx),
            prefix=prefix,
            port=port,
            port_a=backends[0],
            port_b=backends[1],
        )
    )
    error_log = prefix / "error.log"
    # -e: errors before the configuration is read go to our log, not /var/log/nginx.
    command = [nginx, "-p", str(prefix), "-c", str(config), "-e", str(error_log)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=10)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # fast shutdown: the master stops its worker
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_until_answered(port: int, proc: subprocess.Popen[bytes], error_log: Path) -> None:
    """Wait (at most 10 s) until something answers on ``port``."""
    with SyncDatagramEndpoint("127.0.0.1", 0) as probe:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, f"nginx exited: {error_log.read_text()}"
            try:
                probe.request(b"ready?", ("127.0.0.1", port), timeout=0.2, attempts=1)
            except TimeoutError:
                assert time.monotonic() < deadline, error_log.read_text()
            else:
                return


def echo_of(sent: bytes) -> Callable[[bytes], bool]:
    """A ``match`` for the tagged echo of ``sent``, so a late reply is never taken for it."""
    return lambda reply: reply.endswith(b" " + sent)


def answering_pid(reply: bytes, sent: bytes) -> int:
    """The PID an ``echo_server.py --tag-pid`` put before the echo of ``sent``."""
    pid, _, echo = reply.partition(b" ")
    assert echo == sent
    return int(pid)


def test_nginx_balances_udp_over_two_anydgram_servers(tmp_path: Path) -> None:
    nginx = require_tool("nginx", "nginx-light")
    stream_module_directive(nginx)  # skip early, before starting anything
    with (
        ExampleProcess("echo_server.py", "--port", "0", "--tag-pid") as server_a,
        ExampleProcess(
            "echo_server.py", "--port", "0", "--tag-pid", "--backend", "trio"
        ) as server_b,
    ):
        backends = (server_a.address()[1], server_b.address()[1])
        port = free_udp_port()
        with nginx_balancing(nginx, tmp_path, port, backends) as proc:
            wait_until_answered(port, proc, tmp_path / "error.log")

            # One client, one source port: proxy_requests 1 still spreads its requests.
            one_port: list[int] = []
            with SyncDatagramClient("127.0.0.1", port) as client:
                for i in range(12):
                    sent = b"request %d" % i
                    reply = client.request(sent, timeout=0.5, match=echo_of(sent))
                    one_port.append(answering_pid(reply, sent))
            # And a fresh client (source port) per request.
            many_ports: list[int] = []
            for i in range(8):
                with SyncDatagramClient("127.0.0.1", port) as client:
                    sent = b"client %d" % i
                    many_ports.append(answering_pid(client.request(sent, timeout=0.5), sent))

            # One backend goes away: nginx marks it down (max_fails=1, fail_timeout=10s by
            # default) and the other answers. nginx 1.22 answers the request that found the
            # backend gone with an empty datagram; a match on the echo skips it, and
            # request() re-sends.
            assert server_b.stop() == 0, server_b.stderr()
            after_failure: list[int] = []
            with SyncDatagramClient("127.0.0.1", port) as client:
                for i in range(6):
                    sent = b"after %d" % i
                    reply = client.request(sent, timeout=0.3, match=echo_of(sent))
                    after_failure.append(answering_pid(reply, sent))

        assert set(one_port) == {server_a.pid, server_b.pid}, one_port
        assert set(many_ports) == {server_a.pid, server_b.pid}, many_ports
        # Round-robin: neither server took much more than its half.
        assert min(one_port.count(server_a.pid), one_port.count(server_b.pid)) >= 4
        assert after_failure == [server_a.pid] * 6
        assert server_a.stop() == 0, server_a.stderr()
