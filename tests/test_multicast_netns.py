"""Multicast and broadcast over a real (virtual) link, and the validation of group membership.

Multicast and broadcast datagrams must never leave through the host's own interfaces, so every
test that sends one runs its endpoints inside two throw-away network namespaces joined by a veth
pair (see ``netns.py``): a receiver script in namespace b, a sender script in namespace a, each a
subprocess running anydgram on the backend under test. Those tests are marked ``netns`` and are
skipped, with the reason, where namespaces cannot be built (not root, no iproute2...).

The validation tests at the end send nothing (every error is raised before any system call that
could), so they run on the host, on loopback endpoints, for every ``anyio_backend``; their
sockets refuse to join a group, should a regression let a call through.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest

import anydgram
from netns import NetnsPair, NetnsProcess, netns_available, veth_pair

BACKENDS = ["asyncio", "uvloop", "trio"]

#: Ports inside the namespaces: nothing else runs there, so fixed numbers cannot collide.
PORT = 47001
IPV4_GROUP = "239.1.2.3"
#: A transient (flag 1), link-local (scope 2) group: it cannot be routed off the link anyway.
IPV6_GROUP = "ff12::1234"

#: Bounds on the subprocesses; a healthy run needs well under a second for each step.
STEP_TIMEOUT = 15.0
#: How long the receiver keeps listening after leaving the group.
AFTER_LEAVE_WINDOW = 0.5

# The scripts run as `python -c SCRIPT BACKEND CONFIG_JSON` and report on stdout, one JSON list
# per line, so the test can follow them step by step.
_PRELUDE = """
import errno
import json
import socket
import struct
import sys

import anyio

import anydgram


def emit(*fields):
    print(json.dumps(list(fields)), flush=True)


def run(main):
    backend, config = sys.argv[1], json.loads(sys.argv[2])
    if backend == "uvloop":
        anyio.run(main, config, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, config, backend=backend)
"""

#: Binds ``bind``:``port``; joins ``group`` (if any) on ``interface`` (``[kind, value]``), says
#: "ready", prints ``expect`` datagrams; then leaves the group, says "left", waits for a line on
#: stdin (the sender is done) and reports whatever arrives in the next half second.
RECEIVER = (
    _PRELUDE
    + """
def resolve(interface):
    if interface is None:
        return None
    kind, value = interface
    return socket.if_nametoindex(value) if kind == "index" else value


async def main(config):
    group = config["group"]
    interface = resolve(config["interface"])
    async with await anydgram.open_udp_endpoint(config["bind"], config["port"]) as endpoint:
        if group is not None:
            try:
                endpoint.leave_multicast_group(group, interface)
            except OSError as exc:
                emit("leave-before-join", errno.errorcode.get(exc.errno))
            endpoint.join_multicast_group(group, interface)
        emit("ready")
        with anyio.fail_after(10):
            for _ in range(config["expect"]):
                packet, address = await endpoint.recv_packet()
                emit("received", packet.decode(), address[0])
        if group is None:
            return
        endpoint.leave_multicast_group(group, interface)
        emit("left")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        late = [
            packet.decode()
            async for packet, _ in endpoint.iter_received_packets(
                timeout=config["after_leave_window"]
            )
        ]
        emit("after-leave", late)


run(main)
"""
)

#: Binds ``bind`` (any port, ``broadcast`` as given), points multicast at ``multicast_interface``
#: with a TTL / hop limit of 1, and sends each ``[host, port, payload]`` of ``datagrams``.
SENDER = (
    _PRELUDE
    + """
async def main(config):
    async with await anydgram.open_udp_endpoint(
        config["bind"], 0, broadcast=config["broadcast"]
    ) as endpoint:
        name = config["multicast_interface"]
        if name is not None:
            index = socket.if_nametoindex(name)
            sock = endpoint.socket
            if sock.family == socket.AF_INET:
                # struct ip_mreqn: no group, no local address, the interface index.
                mreqn = struct.pack("=4s4si", bytes(4), bytes(4), index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        for host, port, payload in config["datagrams"]:
            await endpoint.send_packet(payload.encode(), (host, port))
        emit("sent", endpoint.statistics().datagrams_sent)


run(main)
"""
)

#: Without ``broadcast=True`` the kernel refuses a send to a broadcast address (EACCES).
REFUSED_BROADCAST = (
    _PRELUDE
    + """
async def main(config):
    async with await anydgram.open_udp_endpoint(config["bind"], 0) as endpoint:
        try:
            await endpoint.send_packet(b"refused", (config["host"], config["port"]))
        except PermissionError as exc:
            stats = endpoint.statistics()
            emit("refused", exc.errno, stats.send_errors, stats.datagrams_sent)
        else:
            emit("sent")


run(main)
"""
)


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    """A fresh pair of namespaces for one test (skips where they cannot be built)."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    with veth_pair() as pair:
        yield pair


def _messages(lines: list[str]) -> list[list[Any]]:
    return [json.loads(line) for line in lines]


def _expect(process: NetnsProcess, tag: str) -> list[Any]:
    message: list[Any] = json.loads(process.expect_line(timeout=STEP_TIMEOUT))
    assert message[0] == tag, f"expected {tag!r}, got {message!r}"
    return message


def _run_script(net: NetnsPair, ns: str, script: str, backend: str, config: Any) -> list[list[Any]]:
    result = net.run_python(ns, script, backend, json.dumps(config), timeout=STEP_TIMEOUT)
    assert result.returncode == 0, f"script failed in {ns}:\n{result.stderr}"
    return _messages(result.stdout.splitlines())


def _send(
    net: NetnsPair,
    backend: str,
    *,
    bind: str,
    datagrams: list[tuple[str, int, str]],
    multicast_interface: str | None = None,
    broadcast: bool = False,
) -> None:
    config = {
        "bind": bind,
        "broadcast": broadcast,
        "multicast_interface": multicast_interface,
        "datagrams": datagrams,
    }
    assert _run_script(net, net.ns_a, SENDER, backend, config) == [["sent", len(datagrams)]]


def _start_receiver(
    net: NetnsPair,
    backend: str,
    *,
    bind: str,
    group: str | None = None,
    interface: tuple[str, str] | None = None,
    expect: int = 3,
) -> NetnsProcess:
    config = {
        "bind": bind,
        "port": PORT,
        "group": group,
        "interface": interface,
        "expect": expect,
        "after_leave_window": AFTER_LEAVE_WINDOW,
    }
    return net.start_python(net.ns_b, RECEIVER, backend, json.dumps(config))


def _check_multicast_round(
    net: NetnsPair,
    backend: str,
    *,
    group: str,
    interface: tuple[str, str],
    receiver_bind: str,
    sender_address: str,
    receiver_address: str,
) -> None:
    """Join, receive three datagrams, leave, and see a later datagram to the group not arrive."""
    receiver = _start_receiver(net, backend, bind=receiver_bind, group=group, interface=interface)
    # Leaving a group that was never joined is the kernel's EADDRNOTAVAIL, passed through.
    assert _expect(receiver, "leave-before-join") == ["leave-before-join", "EADDRNOTAVAIL"]
    _expect(receiver, "ready")

    payloads = [f"{group} #{i}" for i in range(3)]
    _send(
        net,
        backend,
        bind=sender_address,
        datagrams=[(group, PORT, payload) for payload in payloads],
        multicast_interface=net.veth_a,
    )
    received = [_expect(receiver, "received") for _ in payloads]
    assert sorted(message[1] for message in received) == payloads
    assert {message[2] for message in received} == {sender_address}

    _expect(receiver, "left")
    # After the leave: one more datagram to the group, then a unicast one to the receiver's own
    # address as the control that shows the path still works and the window is not empty.
    _send(
        net,
        backend,
        bind=sender_address,
        datagrams=[(group, PORT, "to the group"), (receiver_address, PORT, "unicast")],
        multicast_interface=net.veth_a,
    )
    receiver.send_line("go")
    assert _expect(receiver, "after-leave") == ["after-leave", ["unicast"]]
    lines, stderr = receiver.finish(timeout=STEP_TIMEOUT)
    assert receiver.popen.returncode == 0, stderr
    assert lines == []


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interface_kind", ["name", "address"])
def test_ipv4_multicast_join_receive_leave(
    net: NetnsPair, backend: str, interface_kind: str
) -> None:
    interface = net.veth_b if interface_kind == "name" else net.ipv4_b
    _check_multicast_round(
        net,
        backend,
        group=IPV4_GROUP,
        interface=(interface_kind, interface),
        receiver_bind="0.0.0.0",
        sender_address=net.ipv4_a,
        receiver_address=net.ipv4_b,
    )


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interface_kind", ["name", "index"])
def test_ipv6_multicast_join_receive_leave(
    net: NetnsPair, backend: str, interface_kind: str
) -> None:
    _check_multicast_round(
        net,
        backend,
        group=IPV6_GROUP,
        interface=(interface_kind, net.veth_b),
        receiver_bind="::",
        sender_address=net.ipv6_a,
        receiver_address=net.ipv6_b,
    )


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv4_broadcast_needs_the_broadcast_option(net: NetnsPair, backend: str) -> None:
    receiver = _start_receiver(net, backend, bind="0.0.0.0")
    _expect(receiver, "ready")

    refused = _run_script(
        net,
        net.ns_a,
        REFUSED_BROADCAST,
        backend,
        {"bind": net.ipv4_a, "host": net.ipv4_broadcast, "port": PORT},
    )
    # errno EACCES, counted in send_errors, nothing sent.
    assert refused == [["refused", 13, 1, 0]]

    payloads = [f"broadcast #{i}" for i in range(3)]
    _send(
        net,
        backend,
        bind=net.ipv4_a,
        datagrams=[(net.ipv4_broadcast, PORT, payload) for payload in payloads],
        broadcast=True,
    )
    received = [_expect(receiver, "received") for _ in payloads]
    assert sorted(message[1] for message in received) == payloads
    assert {message[2] for message in received} == {net.ipv4_a}
    # The refused datagram never arrived: the receiver took exactly three and exited cleanly.
    lines, stderr = receiver.finish(timeout=STEP_TIMEOUT)
    assert receiver.popen.returncode == 0, stderr
    assert lines == []


@pytest.mark.netns
def test_netns_helper_cleans_up() -> None:
    """The namespaces are gone after the pair is closed, even when the body raised."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    names: list[str] = []

    def fail_inside() -> None:
        with veth_pair() as pair:
            names.extend([pair.ns_a, pair.ns_b])
            pair.start_python(pair.ns_b, "import time; time.sleep(60)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert names
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert not any(name in listing for name in names)


# -- validation on the host ----------------------------------------------------------------------
#
# These endpoints sit on loopback and every call below must fail in argument checking. As a
# guard against a regression that lets one through (joining with no interface named would send a
# membership report out of the host's default-route interface), their sockets refuse any join.

MEMBERSHIP_METHODS = ["join_multicast_group", "leave_multicast_group"]

#: Linux option numbers that join a group, at the IPPROTO_IP and IPPROTO_IPV6 levels.
_MCAST_JOIN_GROUP = 42
_MCAST_JOIN_SOURCE_GROUP = 46
_IP_ADD_SOURCE_MEMBERSHIP = 39
_JOIN_OPTIONS = {
    socket.IPPROTO_IP: {
        socket.IP_ADD_MEMBERSHIP,
        _IP_ADD_SOURCE_MEMBERSHIP,
        _MCAST_JOIN_GROUP,
        _MCAST_JOIN_SOURCE_GROUP,
    },
    socket.IPPROTO_IPV6: {socket.IPV6_JOIN_GROUP, _MCAST_JOIN_GROUP, _MCAST_JOIN_SOURCE_GROUP},
}


class _NoJoinSocket(socket.socket):
    """A UDP socket that fails the test instead of joining a multicast group on the host."""

    def setsockopt(self, *args: Any) -> None:
        level, option = args[0], args[1]
        if option in _JOIN_OPTIONS.get(level, ()):
            raise AssertionError(f"a host-side test tried to join a group (option {option})")
        super().setsockopt(*args)


@contextlib.asynccontextmanager
async def _loopback_endpoint(
    family: socket.AddressFamily,
) -> AsyncGenerator[anydgram.DatagramEndpoint[bytes, bytes]]:
    sock = _NoJoinSocket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    except BaseException:
        sock.close()
        raise
    # Specialised: without a protocol, from_socket's return type is not inferred as bytes.
    async with anydgram.DatagramEndpoint[bytes, bytes].from_socket(sock) as endpoint:
        yield endpoint


async def test_the_guard_refuses_a_join() -> None:
    async with _loopback_endpoint(socket.AF_INET) as endpoint:
        with pytest.raises(AssertionError, match="tried to join"):
            endpoint.join_multicast_group(IPV4_GROUP, "lo")


@pytest.mark.parametrize("method", MEMBERSHIP_METHODS)
@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("127.0.0.1", "not a multicast address"),
        ("10.123.0.1", "not a multicast address"),
        ("not-an-address", "not an IP address"),
        ("", "not an IP address"),
    ],
)
async def test_membership_rejects_a_non_multicast_group(
    method: str, group: str, message: str
) -> None:
    async with _loopback_endpoint(socket.AF_INET) as endpoint:
        with pytest.raises(ValueError, match=message):
            getattr(endpoint, method)(group)


@pytest.mark.parametrize("method", MEMBERSHIP_METHODS)
async def test_membership_rejects_a_group_of_the_other_family(method: str) -> None:
    async with _loopback_endpoint(socket.AF_INET) as endpoint:
        with pytest.raises(ValueError, match="IPv6 group needs an IPv6 endpoint"):
            getattr(endpoint, method)(IPV6_GROUP)
    async with _loopback_endpoint(socket.AF_INET6) as endpoint:
        with pytest.raises(ValueError, match="IPv4 group needs an IPv4 endpoint"):
            getattr(endpoint, method)(IPV4_GROUP)


@pytest.mark.parametrize("method", MEMBERSHIP_METHODS)
async def test_membership_rejects_a_unix_endpoint(method: str) -> None:
    path = f"\0anydgram-test-{secrets.token_hex(8)}"
    async with await anydgram.open_unix_datagram_endpoint(path) as endpoint:
        with pytest.raises(ValueError, match="IPv4 group needs an IPv4 endpoint"):
            getattr(endpoint, method)(IPV4_GROUP)


@pytest.mark.parametrize("method", MEMBERSHIP_METHODS)
@pytest.mark.parametrize(
    ("family", "group"), [(socket.AF_INET, IPV4_GROUP), (socket.AF_INET6, IPV6_GROUP)]
)
async def test_membership_rejects_an_unknown_interface(
    method: str, family: socket.AddressFamily, group: str
) -> None:
    missing = f"adgx{secrets.token_hex(4)}"  # 12 characters, within IFNAMSIZ, never created
    assert missing not in {name for _, name in socket.if_nameindex()}
    async with _loopback_endpoint(family) as endpoint:
        with pytest.raises(ValueError, match="unknown network interface"):
            getattr(endpoint, method)(group, missing)


@pytest.mark.parametrize("method", MEMBERSHIP_METHODS)
async def test_membership_rejects_an_address_as_ipv6_interface(method: str) -> None:
    async with _loopback_endpoint(socket.AF_INET6) as endpoint:
        with pytest.raises(ValueError, match="interface name or index"):
            getattr(endpoint, method)(IPV6_GROUP, "127.0.0.1")
