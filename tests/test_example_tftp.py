"""examples/tftp_server.py against Debian's TFTP clients, a hand-driven client, and a lossy link.

The server runs as a child process on each backend and serves a directory made here. Three
real clients fetch from it over 127.0.0.1: tftp-hpa's ``tftp``, ``atftp`` and ``curl
tftp://``, each of them the 0-, 511-, 512-, 513-byte and 5 MB files, byte for byte, alone and
at the same time. A client written here on a plain socket does what those clients never do on
purpose: ACKs every block twice, withholds an ACK, asks for names outside the directory, sends
junk. Across a pair of network namespaces that lose 10% of the datagrams each way (nftables,
see ``netns_faults.py``) a 512 KiB file still arrives byte-exact.

Every wait is bounded and waits for an event (a client's exit, a datagram, the server's log
line for one transfer), never for a fixed time; a duration appears only to bound a wait, or as
the window in which something must *not* arrive. Client processes write to files, not pipes,
and are killed (by PID) and reaped however the test ends.

A client that is not installed skips its tests with the reason (the Debian package to install);
nothing passes silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import pytest

from anydgram import DatagramEndpoint, EndpointStatistics, open_udp_endpoint
from example_harness import EXAMPLES, ExampleProcess, load_example, mutations, require_tool
from netns import veth_pair
from netns_faults import impose_loss, nft_support

BACKENDS = ["asyncio", "uvloop", "trio"]
SCRIPT: Final = "tftp_server.py"

#: The files every client fetches, by name: sizes around one 512-byte block, and 5 MB.
SIZES: Final = {"empty": 0, "511.bin": 511, "512.bin": 512, "513.bin": 513, "5mb.bin": 5 << 20}
#: The file sent across the lossy link: 1,024 blocks of 512 bytes, and an empty one.
LOSSY_FILE: Final = "lossy.bin"
LOSSY_SIZE: Final = 512 << 10
#: Line ends of every kind, for netascii.
TEXT: Final = b"one\ntwo\r\nbare cr\rlast line without an end"

#: Bound on one client run; a 5 MB fetch on loopback takes about a second.
CLIENT_TIMEOUT: Final = 60.0

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


def _content(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served directory, and a secret next to it that must never be served."""
    base = tmp_path_factory.mktemp("tftp")
    served = base / "served"
    (served / "sub").mkdir(parents=True)
    for name, size in SIZES.items():
        (served / name).write_bytes(_content(name, size))
    (served / "text.txt").write_bytes(TEXT)
    (served / LOSSY_FILE).write_bytes(_content(LOSSY_FILE, LOSSY_SIZE))
    (served / "sub" / "inner.bin").write_bytes(b"inner")
    (base / "secret.txt").write_text("not for TFTP")
    (served / "escape").symlink_to(base / "secret.txt")
    (served / "inside").symlink_to("sub/inner.bin")
    os.mkfifo(served / "pipe")
    return served


@dataclass
class Server:
    """A running tftp_server.py: its port and its process (for its log lines)."""

    port: int
    process: ExampleProcess

    def log_line(self, client_port: int, filename: str) -> str:
        """The line the server prints when the transfer of ``filename`` to ``client_port`` ends.

        The file name too: a port the kernel gave an earlier test's client may come again, and
        that transfer's line may still be unread.
        """
        start = f"127.0.0.1:{client_port} RRQ {filename!r} "
        return self.process.wait_for(lambda line: line.startswith(start))


@contextlib.contextmanager
def running_server(root: Path, backend: str, *args: str) -> Generator[Server]:
    """tftp_server.py serving ``root`` on a free port of 127.0.0.1."""
    argv = ["--root", str(root), "--port", "0", "--backend", backend, *args]
    with ExampleProcess(SCRIPT, *argv) as process:
        yield Server(process.address()[1], process)
        assert process.stop() == 0, process.stderr()


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, root: Path) -> Generator[Server, None, None]:
    """One server per backend for the module's tests."""
    with running_server(root, request.param) as running:
        yield running


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )


def _same(path: Path, name: str) -> bool:
    return path.read_bytes() == _content(name, SIZES[name])


# -- the real clients --------------------------------------------------------------------------


def tftp_hpa_get(port: int, name: str, local: Path, *, mode: str = "binary") -> list[str]:
    """tftp-hpa's ``tftp`` command line for a get (binary, or ``ascii`` for netascii)."""
    tftp = require_tool("tftp", "tftp-hpa")
    return [tftp, "-m", mode, "127.0.0.1", str(port), "-c", "get", name, str(local)]


def atftp_get(port: int, name: str, local: Path, *options: str) -> list[str]:
    """atftp's command line for a get, with RFC 2347 options such as ``"blksize 1428"``."""
    atftp = require_tool("atftp", "atftp")
    flags = [item for option in options for item in ("--option", option)]
    return [atftp, *flags, "-g", "-r", name, "-l", str(local), "127.0.0.1", str(port)]


def curl_get(port: int, name: str, local: Path, *flags: str) -> list[str]:
    """curl's command line for a ``tftp://`` URL."""
    curl = require_tool("curl", "curl")
    return [curl, "-sS", *flags, "-o", str(local), f"tftp://127.0.0.1:{port}/{name}"]


def test_tftp_hpa_fetches_every_size(server: Server, tmp_path: Path) -> None:
    for name in SIZES:
        done = _run(tftp_hpa_get(server.port, name, tmp_path / name), tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _same(tmp_path / name, name), name
    # netascii: the server sends CR LF and CR NUL, the client turns them back into the file.
    done = _run(tftp_hpa_get(server.port, "text.txt", tmp_path / "text", mode="ascii"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "text").read_bytes() == TEXT
    server.process.wait_for(lambda line: "'text.txt' netascii: sent 45 bytes in 1 blocks" in line)


def test_atftp_fetches_every_size(server: Server, tmp_path: Path) -> None:
    for name in SIZES:
        done = _run(atftp_get(server.port, name, tmp_path / name), tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _same(tmp_path / name, name), name
    # With options: one 1,428-byte block per Ethernet frame, and the size announced up front.
    local = tmp_path / "with-options"
    done = _run(atftp_get(server.port, "5mb.bin", local, "blksize 1428", "tsize 0"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _same(local, "5mb.bin")
    server.process.wait_for(
        lambda line: f"blksize=1428 tsize={5 << 20}: sent {5 << 20} bytes in 3672 blocks" in line
    )


def test_curl_fetches_every_size(server: Server, tmp_path: Path) -> None:
    # curl asks for blksize, timeout and tsize every time: each answer is an OACK.
    for name in SIZES:
        done = _run(curl_get(server.port, name, tmp_path / name), tmp_path)
        assert done.returncode == 0, done.stderr
        assert _same(tmp_path / name, name), name
    local = tmp_path / "big-blocks"
    done = _run(curl_get(server.port, "5mb.bin", local, "--tftp-blksize", "8192"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert _same(local, "5mb.bin")
    done = _run(curl_get(server.port, "sub/inner.bin", tmp_path / "inner"), tmp_path)
    assert (done.returncode, (tmp_path / "inner").read_bytes()) == (0, b"inner")


@contextlib.contextmanager
def started(
    commands: dict[str, list[str]], outputs: Path
) -> Generator[dict[str, subprocess.Popen[bytes]]]:
    """Start every command at once, each writing its output to ``outputs/<name>.out``.

    Files rather than pipes: a client that prints a lot never blocks on a pipe nobody reads
    yet, and no pipe is left open if the test fails. On the way out, those still running are
    killed (by PID) and every one is reaped.
    """
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            with (outputs / f"{name}.out").open("wb") as output:  # the child has its own copy
                children[name] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
                )
        yield children
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
        for child in children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)


def test_clients_at_the_same_time(server: Server, tmp_path: Path) -> None:
    commands = {
        "tftp-1": tftp_hpa_get(server.port, "5mb.bin", tmp_path / "tftp-1"),
        "tftp-2": tftp_hpa_get(server.port, "5mb.bin", tmp_path / "tftp-2"),
        "atftp-1": atftp_get(server.port, "5mb.bin", tmp_path / "atftp-1", "blksize 1024"),
        "atftp-2": atftp_get(server.port, "5mb.bin", tmp_path / "atftp-2"),
        "curl-1": curl_get(server.port, "5mb.bin", tmp_path / "curl-1"),
        "curl-2": curl_get(server.port, "513.bin", tmp_path / "curl-2"),
    }
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with started(commands, outputs) as children:
        deadline = time.monotonic() + CLIENT_TIMEOUT  # one bound for all of them
        for name, child in children.items():
            returncode = child.wait(max(0.0, deadline - time.monotonic()))
            output = (outputs / f"{name}.out").read_text(errors="replace")
            assert returncode == 0, f"{name}: {output}"
    for name in commands:
        assert _same(tmp_path / name, "513.bin" if name == "curl-2" else "5mb.bin"), name


def test_real_clients_report_the_refusals(server: Server, tmp_path: Path) -> None:
    # tftp-hpa prints the error (and exits 0 all the same).
    done = _run(tftp_hpa_get(server.port, "../secret.txt", tmp_path / "x"), tmp_path)
    assert "Error code 2: '..' is refused" in done.stdout + done.stderr
    done = _run(curl_get(server.port, "escape", tmp_path / "y"), tmp_path)
    assert done.returncode == 69, done.stderr  # CURLE_TFTP_PERM: TFTP error 2
    done = _run(atftp_get(server.port, "missing", tmp_path / "z"), tmp_path)
    assert done.returncode != 0
    assert "<file not found>" in done.stdout + done.stderr
    source = tmp_path / "upload.bin"
    source.write_bytes(b"data")
    tftp = require_tool("tftp", "tftp-hpa")
    argv = [tftp, "-m", "binary", "127.0.0.1", str(server.port), "-c", "put", str(source), "up"]
    done = _run(argv, tmp_path)
    assert "Error code 2: this server is read-only" in done.stdout + done.stderr


# -- a client driven by hand -------------------------------------------------------------------


class RawClient:
    """A TFTP client on a plain socket, to do by hand what real clients never do."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def request(self, name: str, *options: str, opcode: int = RRQ, mode: str = "octet") -> None:
        fields = [name, mode, *options]
        self.sock.sendto(struct.pack("!H", opcode) + b"".join(f.encode() + b"\0" for f in fields),
                         self.server)  # fmt: skip

    def receive(self, timeout: float = 5.0) -> tuple[bytes, Any]:
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(70000)

    def nothing_within(self, timeout: float) -> bool:
        """Whether no datagram arrives within ``timeout`` seconds (a bounded wait)."""
        try:
            self.receive(timeout)
        except TimeoutError:
            return True
        return False

    def ack(self, block: int, address: Any) -> None:
        self.sock.sendto(struct.pack("!HH", ACK, block), address)

    def receive_after(self, previous: bytes, timeout: float = 5.0) -> tuple[bytes, Any]:
        """The next packet that is not ``previous`` again.

        The server sends a packet again when its ACK is slow to come (this process may wait
        for a CPU on a busy machine); a client takes the next one, as real clients do.
        """
        deadline = time.monotonic() + timeout
        while True:
            packet, sender = self.receive(max(0.001, deadline - time.monotonic()))
            if packet != previous:
                return packet, sender


def _header(packet: bytes) -> tuple[int, int]:
    opcode, number = struct.unpack_from("!HH", packet)
    return opcode, number


def _error(packet: bytes) -> tuple[int, str]:
    opcode, code = _header(packet)
    assert opcode == ERROR, packet
    assert packet.endswith(b"\0")
    return code, packet[4:-1].decode()


def _oack(packet: bytes) -> dict[str, str]:
    assert _header(packet)[0] == OACK, packet
    fields = packet[2:].split(b"\0")
    assert fields.pop() == b""
    return {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True)}


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("../secret.txt", 2, "'..'"),
        ("sub/../../secret.txt", 2, "'..'"),
        ("/etc/passwd", 2, "absolute"),
        ("escape", 2, "outside the directory"),  # a symbolic link out
        ("missing", 1, "not found"),
        ("sub", 2, "not a regular file"),
        ("pipe", 2, "not a regular file"),  # opening a FIFO would wait for a writer
    ],
)
def test_names_outside_the_directory_are_refused(
    server: Server, name: str, code: int, reason: str
) -> None:
    with RawClient(server.port) as client:
        client.request(name)
        packet, sender = client.receive()
        assert _error(packet)[0] == code
        assert reason in _error(packet)[1]
        assert sender == client.server  # refused from the request port, no transfer started
        # A symbolic link that stays inside is served.
        client.request("inside")
        packet, sender = client.receive()
        assert packet == struct.pack("!HH", DATA, 1) + b"inner"
        client.ack(1, sender)


def test_malformed_requests_and_writes(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("up.bin", opcode=WRQ)
        assert _error(client.receive()[0]) == (2, "this server is read-only")
        client.request("512.bin", mode="mail")
        assert _error(client.receive()[0])[0] == 4
        client.sock.sendto(struct.pack("!H", RRQ) + b"no-nul-at-the-end", client.server)
        assert _error(client.receive()[0])[0] == 4
        client.sock.sendto(struct.pack("!H", RRQ) + b"512.bin\0octet\0blksize\0", client.server)
        assert _error(client.receive()[0])[0] == 4  # an option without a value
        client.sock.sendto(struct.pack("!H", RRQ) + b"\xff\xfe\0octet\0", client.server)
        assert _error(client.receive()[0])[0] == 4
        client.sock.sendto(struct.pack("!H", RRQ) + b"a" * 600 + b"\0octet\0", client.server)
        assert _error(client.receive()[0])[0] == 4
        # Not requests: no answer, so two servers can never bounce errors at each other.
        for junk in (b"", b"\x00", struct.pack("!HH", ACK, 1), struct.pack("!HH", ERROR, 0)):
            client.sock.sendto(junk + b"\0", client.server)
        client.sock.sendto(struct.pack("!HH", DATA, 1) + b"x", client.server)
        assert client.nothing_within(0.3)
        client.request("513.bin")  # still serving
        assert _header(client.receive()[0]) == (DATA, 1)


def test_options_are_negotiated(server: Server) -> None:
    with RawClient(server.port) as client:
        # Too large a block is offered down to the maximum; tsize is the file's size; an
        # unknown option is left out of the OACK.
        client.request("513.bin", "BLKSIZE", "100000", "tsize", "0", "windowsize", "4")
        packet, tid = client.receive()
        assert _oack(packet) == {"blksize": "65464", "tsize": "513"}
        assert tid != client.server  # the transfer has its own port
        client.ack(0, tid)
        packet, _ = client.receive_after(packet)
        assert packet == struct.pack("!HH", DATA, 1) + _content("513.bin", 513)
        client.ack(1, tid)
    with RawClient(server.port) as client:
        # Out-of-range values are ignored: no option left, so no OACK, and 512-byte blocks.
        client.request("513.bin", "blksize", "4", "timeout", "0", "tsize", "x")
        packet, tid = client.receive()
        assert packet[:4] == struct.pack("!HH", DATA, 1)
        assert len(packet) == 4 + 512
        client.ack(1, tid)
        packet, _ = client.receive_after(packet)
        assert packet == struct.pack("!HH", DATA, 2) + _content("513.bin", 513)[512:]
        client.ack(2, tid)
    with RawClient(server.port) as client:
        client.request("empty", "tsize", "0", "timeout", "3")
        packet, tid = client.receive()
        assert _oack(packet) == {"timeout": "3"}  # no "tsize 0": curl refuses that
        client.ack(0, tid)
        assert client.receive_after(packet)[0] == struct.pack("!HH", DATA, 1)
        client.ack(1, tid)


def test_duplicate_acks_never_double_the_data(server: Server) -> None:
    # The Sorcerer's Apprentice: if a duplicate ACK made the server send the next block again,
    # every block from then on would go out twice (and four times, ...). Each block must come
    # exactly once. The timeout option (3 s) keeps any retransmission out of this test.
    blocks = (5 << 20) // 65464 + 1
    with RawClient(server.port) as client:
        client.request("5mb.bin", "blksize", "65464", "timeout", "3")
        packet, tid = client.receive()
        assert _oack(packet) == {"blksize": "65464", "timeout": "3"}
        client.ack(0, tid)
        client.ack(0, tid)
        received: dict[int, int] = {}
        data = bytearray()
        while len(received) < blocks:
            packet, sender = client.receive()
            assert sender == tid
            opcode, block = _header(packet)
            assert opcode == DATA
            received[block] = received.get(block, 0) + 1
            data += packet[4:]
            client.ack(block, tid)
            client.ack(block, tid)
        assert client.nothing_within(0.5)  # 0.5 s: a doubled block would come in microseconds
        line = server.log_line(client.port, "5mb.bin")
    assert set(received.values()) == {1}, received
    assert bytes(data) == _content("5mb.bin", 5 << 20)
    found = re.search(r"(\d+) sent again, (\d+) ignored", line)
    assert found is not None, line
    assert int(found[1]) == 0
    assert int(found[2]) >= blocks - 1  # the duplicates, dropped and counted


def test_a_lost_ack_brings_the_block_again(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("5mb.bin", "blksize", "8192")
        packet, tid = client.receive()
        client.ack(0, tid)
        seen: list[int] = []
        data = bytearray()
        expected = 1
        while True:
            packet, _ = client.receive()
            opcode, block = _header(packet)
            if opcode != DATA:
                continue  # the OACK again, its ACK slow to come
            seen.append(block)
            if block == 5 and seen.count(5) == 1:
                continue  # as if this ACK were lost
            client.ack(block, tid)  # a duplicate DATA is acknowledged again, as RFC 1350 asks
            if block == expected:
                data += packet[4:]
                expected += 1
                if len(packet) < 4 + 8192:
                    break
        # With the port still open: were it closed, a re-sent last block (its ACK slow to come
        # on a busy machine) would meet ICMP "port unreachable", and the line would say so.
        line = server.log_line(client.port, "5mb.bin")
    assert seen.count(5) >= 2  # sent again after the timeout
    assert bytes(data) == _content("5mb.bin", 5 << 20)
    found = re.search(r": sent \d+ bytes in 641 blocks, (\d+) sent again", line)
    assert found is not None, line
    assert int(found[1]) >= 1


def test_a_client_error_ends_the_transfer(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("5mb.bin")
        _, tid = client.receive()
        client.sock.sendto(struct.pack("!HH", ERROR, 3) + b"disk full\0", tid)
        line = server.log_line(client.port, "5mb.bin")
    assert "ended by the client (error 3 'disk full') after 0 bytes" in line


def test_a_repeated_request_starts_no_second_transfer(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("513.bin")
        client.request("513.bin")  # as a client does when the first DATA is slow to come
        packet, tid = client.receive()
        assert _header(packet) == (DATA, 1)
        client.ack(1, tid)
        packet, sender = client.receive_after(packet)
        assert (sender, _header(packet)) == (tid, (DATA, 2))
        client.ack(2, tid)
        # No DATA 1 from a second transfer, which would come from a port of its own (a block
        # of this one sent again, its ACK slow on a busy machine, comes from tid).
        deadline = time.monotonic() + 0.3
        with contextlib.suppress(TimeoutError):
            while (left := deadline - time.monotonic()) > 0:
                assert client.receive(left)[1] == tid


def test_transfers_at_once_are_bounded(root: Path) -> None:
    with running_server(root, "trio", "--max-transfers", "2") as server:
        clients = [RawClient(server.port) for _ in range(3)]
        try:
            for client in clients[:2]:
                client.request("5mb.bin")
                assert _header(client.receive()[0]) == (DATA, 1)  # not acknowledged: held
            clients[2].request("5mb.bin")
            assert _error(clients[2].receive()[0]) == (0, "too many transfers, try again later")
        finally:
            for client in clients:
                client.sock.close()


# -- the parts without I/O ---------------------------------------------------------------------


def test_request_parser_never_raises_anything_else() -> None:
    module = load_example("tftp_server")
    seeds = [
        b"\x00\x01boot.img\x00octet\x00blksize\x001428\x00tsize\x000\x00",
        b"\x00\x02a/b\x00NETASCII\x00timeout\x005\x00",
    ]
    for data in mutations(seeds, 5000, b"\x00\x01./a", seed=6):
        with contextlib.suppress(module.TFTPError):
            request = module.parse_request_untrusted(data)
            options, oack = module.negotiate(request.options, size=len(data))
            assert module.MIN_BLKSIZE <= options.blksize <= module.MAX_BLKSIZE
            assert len(module.oack_packet(oack)) < 100


def test_names_are_resolved_inside_the_root(root: Path) -> None:
    module = load_example("tftp_server")
    served = root.resolve()
    assert module.resolve_untrusted(served, "sub/inner.bin") == served / "sub" / "inner.bin"
    assert module.resolve_untrusted(served, "inside") == served / "sub" / "inner.bin"
    assert module.resolve_untrusted(served, "./512.bin") == served / "512.bin"
    for name in ("..", "a/../..", "/", "//etc/passwd", "escape"):
        with pytest.raises(module.TFTPError) as caught:
            module.resolve_untrusted(served, name)
        assert caught.value.code == module.ErrorCode.ACCESS_VIOLATION


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 100])
def test_blocks_end_with_a_short_one(size: int) -> None:
    import io

    module = load_example("tftp_server")
    data = random.Random(size).choice([b"a\r\n", b"\n", b"\r", b"x"]) * size
    for netascii in (False, True):
        payloads = list(module.blocks(io.BytesIO(data), 8, netascii=netascii))
        assert all(len(p) == 8 for p in payloads[:-1])
        assert len(payloads[-1]) < 8
        sent = b"".join(payloads)
        if netascii:
            assert sent.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r") == data
        else:
            assert sent == data


def test_retransmit_timer_adapts_within_bounds() -> None:
    module = load_example("tftp_server")
    timer = module.RetransmitTimer()
    assert timer.timeout == module.RetransmitTimer.INITIAL
    for _ in range(20):
        timer.measured(0.0002)
    assert timer.timeout == module.RetransmitTimer.MIN
    timer.timed_out()
    timer.timed_out()
    assert timer.timeout == 4 * module.RetransmitTimer.MIN
    for _ in range(20):
        timer.timed_out()
    assert timer.timeout == module.RetransmitTimer.MAX
    timer.measured(0.0002)
    assert timer.timeout < 0.1
    fixed = module.RetransmitTimer(3)
    fixed.timed_out()
    assert fixed.timeout == 3


def test_a_lan_round_trip_leaves_a_busy_client_time_to_answer() -> None:
    # Round trips of 0.1 ms (loopback, a LAN) bring the estimate down to about that. A client
    # on a loaded machine may wait a scheduling period (tens of ms on Linux) before it runs
    # and answers; a shorter wait sent it nearly every block twice, which atftp answers with
    # one extra ACK and then gives up on ("got wrong block").
    module = load_example("tftp_server")
    timer = module.RetransmitTimer()
    for _ in range(100):
        timer.measured(0.0001)
    assert timer.timeout >= 0.05


class LateAcks:
    """An endpoint on which ``acks`` land just after the first wait for an ACK has ended.

    What a busy machine does at random: request() gives up at its deadline, and the ACK is in
    the socket before the server has sent the block again. Each ack is ``(socket, datagram)``.
    """

    def __init__(
        self, endpoint: DatagramEndpoint[bytes, bytes], acks: list[tuple[socket.socket, bytes]]
    ) -> None:
        self.endpoint = endpoint
        address = endpoint.local_address
        assert isinstance(address, tuple)
        self.address: tuple[Any, ...] = address
        self.acks = acks
        self.requests = 0

    async def request(self, packet: bytes, address: Any, **options: Any) -> bytes:
        self.requests += 1
        try:
            return await self.endpoint.request(packet, address, **options)
        except TimeoutError:
            for sock, datagram in self.acks:  # on loopback, in the socket when sendto returns
                sock.sendto(datagram, self.address)
            self.acks = []
            raise

    def iter_received_packets(self, *, timeout: float | None) -> AsyncIterator[tuple[bytes, Any]]:
        return self.endpoint.iter_received_packets(timeout=timeout)

    def statistics(self) -> EndpointStatistics:
        return self.endpoint.statistics()


async def test_an_ack_that_comes_after_the_wait_is_not_lost() -> None:
    # The next request() drops what is already waiting as stale: had the loop called it at
    # once, it would have sent the block again and waited for an ACK the client had already
    # sent (atftp sends one extra ACK for a duplicate, then none).
    module = load_example("tftp_server")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
    ):
        client.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.1", 0))
        async with await open_udp_endpoint("127.0.0.1", 0) as endpoint:
            late = LateAcks(
                endpoint,
                [
                    (client, struct.pack("!HH", ACK, 0)),  # a duplicate of an earlier ACK
                    (stranger, struct.pack("!HH", ACK, 1)),  # not the client's transfer ID
                    (client, struct.pack("!HH", ACK, 1)),
                ],
            )
            timer = module.RetransmitTimer(0.05)  # fixed: nobody answers the first wait
            sent = module.Sent()
            packet = module.data_packet(1, b"block")
            with anyio.fail_after(5):
                await module.send_until_acknowledged(
                    late, client.getsockname(), packet, 1, timer, sent
                )
            assert late.requests == 1
            assert endpoint.statistics().datagrams_sent == 1  # the block went out once
            assert sent.ignored == 2
        client.settimeout(5)
        assert client.recv(100) == packet
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            client.recv(100)


# -- across a lossy link -----------------------------------------------------------------------

#: Percentage of UDP datagrams lost in each direction.
LOSS_PERCENT: Final = 10
#: A bound on the transfer, which takes about 15 s on an idle machine (30 s on a loaded one):
#: some 250 of 1,025 blocks are lost or have their ACK lost, and each loss costs the 50 ms
#: floor of the server's timer (doubled when a block is lost twice in a row).
LOSSY_TIMEOUT: Final = 90.0

_RUN_EXAMPLE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.netns
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("backend", "client"), [("asyncio", "tftp"), ("uvloop", "curl"), ("trio", "tftp")]
)
def test_a_file_crosses_a_lossy_link(root: Path, tmp_path: Path, backend: str, client: str) -> None:
    reason = nft_support().unavailable
    if reason is not None:
        pytest.skip(reason)
    local = tmp_path / "fetched.bin"
    port = "6969"
    with veth_pair() as net:
        to_server = impose_loss(net, net.ns_a, LOSS_PERCENT)
        to_client = impose_loss(net, net.ns_b, LOSS_PERCENT)
        argv = [str(EXAMPLES / SCRIPT), "--root", str(root), "--host", net.ipv4_b,
                "--port", port, "--backend", backend]  # fmt: skip
        server = net.start_python(net.ns_b, _RUN_EXAMPLE, *argv)
        assert server.expect_line(timeout=10) == f"listening on {net.ipv4_b}:{port}"
        if client == "tftp":
            tftp = require_tool("tftp", "tftp-hpa")
            command = [tftp, "-m", "binary", net.ipv4_b, port, "-c", "get", LOSSY_FILE, str(local)]
        else:
            # No options: curl would ask for a 6 s timeout, which the server then keeps to.
            curl = require_tool("curl", "curl")
            url = f"tftp://{net.ipv4_b}:{port}/{LOSSY_FILE}"
            command = [curl, "-sS", "--tftp-no-options", "-o", str(local), url]
        done = net.run(net.ns_a, command, timeout=LOSSY_TIMEOUT, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        line = server.expect_line(timeout=10)
        lost = (to_server.count(net), to_client.count(net))
        print(f"{backend}, {client}: {line}; lost {lost[0]} requests and {lost[1]} replies")
    assert (
        hashlib.sha256(local.read_bytes()).digest()
        == hashlib.sha256(_content(LOSSY_FILE, LOSSY_SIZE)).digest()
    )
    # "sent", or "the client has gone, after" when the final ACK was lost and the client, which
    # does not linger, closed its port: the server hears ICMP "port unreachable" and stops.
    found = re.search(
        r"(sent|the client has gone, after) (\d+) bytes in (\d+) blocks, (\d+) sent again", line
    )
    assert found is not None, line
    assert int(found[2]) == LOSSY_SIZE  # the last block, the empty one, was sent either way
    blocks, again = int(found[3]), int(found[4])
    # The link lost about a tenth each way of what crossed it: of the DATA packets sent (some
    # 1,260, so 126 lost give or take 11), and of the ACKs sent for those that arrived. Every
    # DATA lost, or whose ACK was, went again.
    data_sent = blocks + again
    assert 0.05 * data_sent < lost[1] < 0.15 * data_sent
    assert 0.05 * (data_sent - lost[1]) < lost[0] < 0.15 * data_sent
    assert again >= lost[1]
