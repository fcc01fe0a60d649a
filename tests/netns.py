"""Throw-away network namespaces joined by a veth pair, for tests that need a real network.

Multicast and broadcast tests must never touch the host's interfaces (the host has a default
route, so such traffic would leave the machine). :func:`veth_pair` builds two fresh namespaces,
``a`` and ``b``, whose only link besides ``lo`` is a veth pair between them, and always removes
both on exit. The veth is created inside namespace ``a`` with its peer placed straight into
``b``, so it never exists in the host's namespace even for a moment.

Code runs inside a namespace through ``ip netns exec``; every subprocess started here is bounded
in time, and the processes still running when the pair is torn down (only those started through
it) are killed before the namespaces go.

Typical use::

    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    with veth_pair() as net:
        receiver = net.start_python(net.ns_b, RECEIVER_CODE, "arg")
        receiver.expect_line(timeout=10)
        net.run_python(net.ns_a, SENDER_CODE, "arg", timeout=10)
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

__all__ = ("NetnsPair", "NetnsProcess", "netns_available", "veth_pair")

#: Every namespace (and veth) these helpers create starts with this, so a leftover from a killed
#: test run is easy to recognise: ``ip netns list | grep adg-``.
PREFIX: Final = "adg-"

#: Bound on each ``ip`` command; they normally take milliseconds.
_IP_TIMEOUT: Final = 10.0

#: How long a killed process may take to be reaped.
_REAP_TIMEOUT: Final = 5.0


def _ip(*args: str, timeout: float = _IP_TIMEOUT) -> None:
    """Run ``ip args...`` and raise :exc:`RuntimeError` with its stderr if it fails."""
    result = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _delete_namespace(name: str) -> None:
    # Best effort: a failure here must not hide the test's own error; the prefix makes a
    # leftover easy to spot and remove by hand.
    with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
        _ip("netns", "delete", name)


@functools.cache
def netns_available() -> str | None:
    """Why namespaces with a veth pair cannot be built here, or ``None`` when they can.

    The answer (a reason for ``pytest.skip``) is computed once per process: root, ``ip`` on the
    ``PATH``, and a probe namespace with a veth pair inside it actually created and removed.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2)"
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", probe, "link", "add", "adgprobe0", "type", "veth", "peer", "name", "adgprobe1")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return f"cannot create a veth pair: {exc}"
    finally:
        _delete_namespace(probe)
    return None


class NetnsProcess:
    """A process running inside a namespace, with line-oriented stdin and stdout.

    Daemon threads drain stdout (into a queue, so :meth:`expect_line` can wait with a timeout)
    and stderr (so a chatty process never blocks on a full pipe); :meth:`finish` returns both.
    """

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        assert popen.stderr is not None
        self.popen = popen
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str | None] = []
        outputs = ((popen.stdout, self._lines.put), (popen.stderr, self._stderr.append))
        self._readers = [
            threading.Thread(target=self._read, args=output, daemon=True) for output in outputs
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], sink: Callable[[str | None], None]) -> None:
        try:
            for line in stream:
                sink(line.rstrip("\n"))
        except (OSError, ValueError):  # the pipe was closed under us: treat as end of output
            pass
        finally:
            sink(None)

    @property
    def stderr(self) -> str:
        """What the process has written to stderr so far."""
        return "\n".join(line for line in self._stderr if line is not None)

    def expect_line(self, timeout: float) -> str:
        """The next line the process printed, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: No line came in time.
            EOFError: The process closed its stdout (usually: it exited) first; the message
                holds its stderr.
        """
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output from {self.popen.args!r} within {timeout} s") from None
        if line is None:
            self._lines.put(None)  # later calls see the end too
            self.kill()
            raise EOFError(
                f"{self.popen.args!r} ended (exit {self.popen.returncode}) "
                f"before printing the expected line; stderr:\n{self.stderr}"
            )
        return line

    def send_line(self, line: str) -> None:
        """Write ``line`` and a newline to the process's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def finish(self, timeout: float) -> tuple[list[str], str]:
        """Close stdin and wait at most ``timeout`` seconds for the process to exit.

        Returns:
            The stdout lines :meth:`expect_line` has not consumed, and the whole stderr.

        Raises:
            TimeoutError: The process did not exit in time (it has been killed).
        """
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{self.popen.args!r} did not exit within {timeout} s; stderr:\n{self.stderr}"
            ) from None
        self.kill()  # already exited: this only joins the readers and closes the pipes
        lines: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)
                break
            lines.append(line)
        return lines, self.stderr

    def kill(self) -> None:
        """Kill the process (only this one, by its pid) if it is still running, and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=_REAP_TIMEOUT)
        for reader in self._readers:  # they end at EOF; then their streams can close
            reader.join(timeout=_REAP_TIMEOUT)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class NetnsPair:
    """Two namespaces ``ns_a`` and ``ns_b`` linked by ``veth_a`` (in a) <-> ``veth_b`` (in b).

    IPv4: ``ipv4_a``/``ipv4_b`` in ``ipv4_network`` (a /24 that exists only inside the two
    namespaces), with ``ipv4_broadcast`` its broadcast address. IPv6: ``ipv6_a``/``ipv6_b`` in a
    unique-local /64. In both namespaces, IPv4 and IPv6 multicast with no interface named goes
    out of the veth.
    """

    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str
    ipv4_network: ipaddress.IPv4Network
    ipv6_network: ipaddress.IPv6Network
    _processes: list[NetnsProcess] = field(default_factory=list[NetnsProcess], repr=False)

    @property
    def ipv4_a(self) -> str:
        """Namespace a's IPv4 address on the veth."""
        return str(self.ipv4_network[1])

    @property
    def ipv4_b(self) -> str:
        """Namespace b's IPv4 address on the veth."""
        return str(self.ipv4_network[2])

    @property
    def ipv4_broadcast(self) -> str:
        """The veth subnet's (directed) broadcast address."""
        return str(self.ipv4_network.broadcast_address)

    @property
    def ipv6_a(self) -> str:
        """Namespace a's IPv6 address on the veth."""
        return str(self.ipv6_network[1])

    @property
    def ipv6_b(self) -> str:
        """Namespace b's IPv6 address on the veth."""
        return str(self.ipv6_network[2])

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float,
        input: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` and wait at most ``timeout`` seconds for it.

        Raises:
            subprocess.TimeoutExpired: It ran too long (it has been killed).
            subprocess.CalledProcessError: It failed and ``check`` is true.
        """
        self._check_ns(ns)
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def run_python(
        self, ns: str, code: str, *args: str, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this interpreter inside ``ns`` (``args`` in ``sys.argv[1:]``).

        Warnings in the child are errors, as in the test suite. Never raises for a non-zero exit:
        check ``returncode`` (and show ``stderr``) in the test.
        """
        return self.run(ns, _python_argv(code, args), timeout=timeout, check=False)

    def start_python(self, ns: str, code: str, *args: str) -> NetnsProcess:
        """Start ``code`` inside ``ns`` without waiting; it is killed on teardown if still alive.

        Bound its life in the test with :meth:`NetnsProcess.expect_line` and
        :meth:`NetnsProcess.finish`, which both take timeouts.
        """
        self._check_ns(ns)
        popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *_python_argv(code, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        process = NetnsProcess(popen)
        self._processes.append(process)
        return process

    def _check_ns(self, ns: str) -> None:
        if ns not in (self.ns_a, self.ns_b):
            raise ValueError(f"{ns!r} is not one of this pair's namespaces")

    def _kill_processes(self) -> None:
        for process in self._processes:
            process.kill()
        self._processes.clear()


def _python_argv(code: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-W", "error", "-c", code, *args]


@contextlib.contextmanager
def veth_pair() -> Generator[NetnsPair]:
    """Create two namespaces joined by a veth pair; remove both on exit, whatever happens.

    Names are ``adg-<hex>-a``/``-b`` (namespaces) and ``adg<hex>a``/``b`` (veths, well under
    ``IFNAMSIZ``); the IPv4 /24 is ``10.123.<random>.0/24`` and the IPv6 /64
    ``fd00:adc:<random>::/64``. Both exist only inside the two namespaces.

    Raises:
        RuntimeError: An ``ip`` command failed (the message holds its stderr). Check
            :func:`netns_available` first to skip instead.
    """
    tag = secrets.token_hex(3)
    subnet = secrets.randbelow(256)
    pair = NetnsPair(
        ns_a=f"{PREFIX}{tag}-a",
        ns_b=f"{PREFIX}{tag}-b",
        veth_a=f"adg{tag}a",
        veth_b=f"adg{tag}b",
        ipv4_network=ipaddress.IPv4Network(f"10.123.{subnet}.0/24"),
        ipv6_network=ipaddress.IPv6Network(f"fd00:adc:{subnet:x}::/64"),
    )
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            created.append(ns)  # before, so a timed-out `add` that did create it is removed too
            _ip("netns", "add", ns)
        # Created inside a, with the peer put straight into b: the host never sees either end.
        _ip(
            "-n", pair.ns_a,
            "link", "add", pair.veth_a, "type", "veth",
            "peer", "name", pair.veth_b, "netns", pair.ns_b,
        )  # fmt: skip
        for ns, veth, host in ((pair.ns_a, pair.veth_a, 1), (pair.ns_b, pair.veth_b, 2)):
            v4 = f"{pair.ipv4_network[host]}/{pair.ipv4_network.prefixlen}"
            v6 = f"{pair.ipv6_network[host]}/{pair.ipv6_network.prefixlen}"
            _ip("-n", ns, "address", "add", v4, "broadcast", "+", "dev", veth)
            # nodad: the address is usable at once instead of after duplicate detection.
            _ip("-n", ns, "-6", "address", "add", v6, "dev", veth, "nodad")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", veth, "up")
            # There is no default route in a namespace: without this, joining or sending to an
            # IPv4 group with no interface named has nowhere to go (ENODEV / ENETUNREACH). IPv6
            # needs none: the kernel puts ff00::/8 on every link in its local table.
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", veth)
        yield pair
    finally:
        pair._kill_processes()
        for ns in reversed(created):
            _delete_namespace(ns)
