"""``request()`` against a ``DatagramServer`` across a real link that loses and duplicates.

The server runs in namespace b and the client in namespace a (see ``netns.py``), each a
subprocess on the backend under test. Faults are imposed by nftables rules loaded *inside* the
namespaces, so nothing on the host changes and the rules die with the namespaces:

- loss: ``numgen random mod 100 < 10 drop`` in the netdev *ingress* hook of the receiving veth
  end (where that hook is missing, the inet *input* hook of the receiving namespace): the sender
  cannot tell, as on a real lossy link. Not at the sender: a drop in the output hook makes
  ``sendto`` fail with ``EPERM``, and one in the netdev egress hook with ``ENOBUFS`` on a socket
  with ``IP_RECVERR`` set (a server's are), counted in ``send_errors``, not lost.
- duplication: ``numgen random mod 100 < 5 dup to "<veth>"`` in the netdev *egress* hook of the
  sending veth end (Linux >= 5.16, nft >= 1.0.1): the copy goes out of the same veth. A copy
  passes the rule again, so a datagram may be copied more than once; the counter counts each,
  including the rare copy the kernel then discards at its recursion limit for ``dup``. So the
  copies that arrived are counted where they arrive: the receiving namespace's UDP
  ``InDatagrams`` (``/proc/net/snmp``; each side's socket is the only one in its namespace).

Only UDP is touched (``meta l4proto udp``): a lost ARP request would stall a call for the
kernel's one-second neighbour retry. Every rule has a counter, so the test accounts for each
datagram exactly: what one side sent, minus what the link dropped (or plus what it duplicated),
is what the other side received.

Marked ``netns``; skipped, with the reason, where namespaces or a usable ``nft`` are missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest

from netns import NetnsPair, NetnsProcess, veth_pair
from netns_faults import impose_duplication, impose_loss, nft_support

BACKENDS = ["asyncio", "uvloop", "trio"]

#: The server's port inside namespace b (nothing else runs there).
PORT: Final = 47002
#: ``request()`` calls per test, and how many tasks of the client make them concurrently.
CALLS: Final = 1000
CONCURRENCY: Final = 8
ATTEMPTS: Final = 4
ATTEMPT_TIMEOUT: Final = 0.05
#: Percentages imposed on each direction.
LOSS_PERCENT: Final = 10
DUP_PERCENT: Final = 5
#: How long the client keeps reading after its last call, for late and duplicate replies.
LINGER: Final = 0.3

#: Bounds on the subprocesses; each case needs a few seconds.
STEP_TIMEOUT: Final = 30.0

_PRELUDE = """
import collections
import json
import socket
import sys

import anyio

import anydgram


def emit(*fields):
    print(json.dumps(list(fields)), flush=True)


def udp_in_datagrams():
    # Datagrams this namespace's kernel delivered to UDP sockets.
    with open("/proc/net/snmp") as snmp:
        names, values = [line.split() for line in snmp if line.startswith("Udp:")]
    return int(values[names.index("InDatagrams")])


def stats_dict(stats):
    return {name: getattr(stats, name) for name in stats.__slots__}


def run(main):
    backend, config = sys.argv[1], json.loads(sys.argv[2])
    if backend == "uvloop":
        anyio.run(main, config, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, config, backend=backend)
"""

#: Serves ``host``:``port``, echoing every request; the handler counts its calls per request
#: id. Says "ready", waits for a line on stdin (the client is done), then reports the counts and
#: the server's statistics.
SERVER = (
    _PRELUDE
    + """
async def main(config):
    handled = collections.Counter()

    async def handler(request):
        handled[request.packet.decode()] += 1
        await request.respond(request.packet)

    server = anydgram.DatagramServer(config["host"], config["port"], handler)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve_forever)
        emit("ready")
        await anyio.to_thread.run_sync(sys.stdin.readline)
        emit("server", dict(handled), stats_dict(server.statistics()), udp_in_datagrams())
        await server.shutdown(grace_period=1.0)


run(main)
"""
)

#: Makes ``calls`` ``request()`` calls (payload: the request id) from ``concurrency`` tasks on
#: one client, each matching its own id; the socket counts every datagram the kernel accepted,
#: per id. Then reads whatever still arrives for ``linger`` seconds and reports.
CLIENT = (
    _PRELUDE
    + """
class CountingSocket(socket.socket):
    def __init__(self, *args):
        super().__init__(*args)
        self.sent = collections.Counter()

    def send(self, data, *args):
        count = super().send(data, *args)
        self.sent[data.decode()] += 1
        return count


async def main(config):
    sock = CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((config["host"], config["port"]))
    ids = iter(range(config["calls"]))
    answered = collections.Counter()
    wrong = []
    failed = []

    async def worker(client):
        for number in ids:
            payload = str(number).encode()
            try:
                reply = await client.request(
                    payload,
                    attempts=config["attempts"],
                    timeout=config["timeout"],
                    match=payload.__eq__,
                )
            except TimeoutError:
                failed.append(number)
                continue
            answered[number] += 1
            if reply != payload:
                wrong.append([number, reply.decode()])

    async with anydgram.DatagramClient.from_socket(sock) as client:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(config["concurrency"]):
                tg.start_soon(worker, client)
        elapsed = anyio.current_time() - start
        leftover = [p async for p in client.iter_received_packets(timeout=config["linger"])]
        stats = stats_dict(client.statistics())
    emit(
        "client",
        {
            "answered": sum(answered.values()),
            "answered_twice": [n for n, c in answered.items() if c != 1],
            "wrong": wrong,
            "failed": failed,
            "sent": dict(sock.sent),
            "leftover": len(leftover),
            "elapsed": elapsed,
            "stats": stats,
            "udp_in": udp_in_datagrams(),
        },
    )


run(main)
"""
)


# -- the run -------------------------------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    """A fresh pair of namespaces for one test (skips where faults cannot be imposed)."""
    reason = nft_support().unavailable
    if reason is not None:
        pytest.skip(reason)
    with veth_pair() as pair:
        yield pair


@dataclass(frozen=True)
class Outcome:
    """What the client and the server reported after the calls."""

    client: dict[str, Any]
    server_handled: dict[str, int]
    server_stats: dict[str, int]
    #: What the server's namespace delivered to UDP sockets.
    server_udp_in: int

    @property
    def client_stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.client["stats"]
        return stats

    @property
    def sent(self) -> dict[str, int]:
        sent: dict[str, int] = self.client["sent"]
        return sent


def _expect(process: NetnsProcess, tag: str) -> list[Any]:
    message: list[Any] = json.loads(process.expect_line(timeout=STEP_TIMEOUT))
    assert message[0] == tag, f"expected {tag!r}, got {message!r}"
    return message


def _run_calls(net: NetnsPair, backend: str) -> Outcome:
    """Start the server in b, make the calls from a, and collect both reports."""
    config = {
        "host": net.ipv4_b,
        "port": PORT,
        "calls": CALLS,
        "concurrency": CONCURRENCY,
        "attempts": ATTEMPTS,
        "timeout": ATTEMPT_TIMEOUT,
        "linger": LINGER,
    }
    server = net.start_python(net.ns_b, SERVER, backend, json.dumps(config))
    _expect(server, "ready")
    result = net.run_python(net.ns_a, CLIENT, backend, json.dumps(config), timeout=STEP_TIMEOUT)
    assert result.returncode == 0, f"client failed:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    tag, client = json.loads(lines[0])
    assert tag == "client"
    server.send_line("done")
    _, handled, server_stats, server_udp_in = _expect(server, "server")
    lines, stderr = server.finish(timeout=STEP_TIMEOUT)
    assert server.popen.returncode == 0, stderr
    assert lines == []
    return Outcome(client, handled, server_stats, server_udp_in)


def _check_common(outcome: Outcome) -> None:
    """What holds whatever the link does: one reply per call, one handler call per arrival."""
    client, stats, server_stats = outcome.client, outcome.client_stats, outcome.server_stats
    # Each successful call returned exactly one reply, and its own.
    assert client["answered"] + len(client["failed"]) == CALLS
    assert client["answered_twice"] == []
    assert client["wrong"] == []
    # Every datagram the client's kernel accepted is in the per-id count.
    assert sum(outcome.sent.values()) == stats["datagrams_sent"]
    assert len(outcome.sent) == CALLS
    assert all(1 <= count <= ATTEMPTS for count in outcome.sent.values())
    # Each datagram the server received was handled exactly once, by a handler that ended.
    assert sum(outcome.server_handled.values()) == server_stats["datagrams_received"]
    assert server_stats["handler_errors"] == 0
    assert server_stats["handlers_active"] == 0
    # Nothing was lost anywhere but on the link.
    for counters in (stats, server_stats):
        for name in ("kernel_drops", "parse_errors", "oversize", "send_errors", "icmp_errors"):
            assert counters[name] == 0, (name, counters)
    # Every reply the client read was a call's answer, or dropped and counted, or read after.
    assert stats["datagrams_received"] == (
        client["answered"] + stats["unmatched_replies"] + client["leftover"]
    )


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_request_over_a_lossy_link(net: NetnsPair, backend: str) -> None:
    to_server = impose_loss(net, net.ns_a, LOSS_PERCENT)
    to_client = impose_loss(net, net.ns_b, LOSS_PERCENT)

    outcome = _run_calls(net, backend)
    _check_common(outcome)
    client, stats, server_stats = outcome.client, outcome.client_stats, outcome.server_stats
    lost_requests, lost_replies = to_server.count(net), to_client.count(net)
    print(
        f"{backend}: {client['answered']}/{CALLS} answered in {client['elapsed']:.2f} s, "
        f"{stats['datagrams_sent']} requests sent, {lost_requests} requests and "
        f"{lost_replies} replies lost, {stats['unmatched_replies']} unmatched replies"
    )

    assert client["answered"] >= CALLS * 0.99, client["failed"]
    # The link lost about what it was told to, in each direction...
    assert 0.05 * stats["datagrams_sent"] < lost_requests < 0.15 * stats["datagrams_sent"]
    assert (
        0.05 * server_stats["datagrams_sent"] < lost_replies < 0.15 * server_stats["datagrams_sent"]
    )
    # ...and exactly that: each side received what the other sent, less the link's drops.
    assert server_stats["datagrams_received"] == stats["datagrams_sent"] - lost_requests
    assert stats["datagrams_received"] == server_stats["datagrams_sent"] - lost_replies
    # No request id was handled more often than it was sent, and every answered one was handled.
    for request_id, handled in outcome.server_handled.items():
        assert handled <= outcome.sent[request_id], request_id
    answered = CALLS - len(client["failed"])
    assert len(outcome.server_handled) >= answered
    # Lost replies made the client send again: the server answered those ids more than once.
    assert sum(outcome.server_handled.values()) > len(outcome.server_handled)


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_request_over_a_duplicating_link(net: NetnsPair, backend: str) -> None:
    support = nft_support()
    if support.no_egress is not None:
        pytest.skip(f"duplication needs the egress hook: {support.no_egress}")
    to_server = impose_duplication(net, net.ns_a, DUP_PERCENT)
    to_client = impose_duplication(net, net.ns_b, DUP_PERCENT)

    outcome = _run_calls(net, backend)
    _check_common(outcome)
    client, stats, server_stats = outcome.client, outcome.client_stats, outcome.server_stats
    copied_requests, copied_replies = to_server.count(net), to_client.count(net)
    print(
        f"{backend}: {client['answered']}/{CALLS} answered in {client['elapsed']:.2f} s, "
        f"{copied_requests} requests and {copied_replies} replies duplicated, "
        f"{stats['unmatched_replies']} unmatched replies, {client['leftover']} read after"
    )

    # Nothing is lost: every call got its reply.
    assert client["failed"] == []
    assert client["answered"] == CALLS
    # The copies really arrived: each side received what the other sent plus copies, no more
    # than the rules counted, and read every datagram its kernel delivered.
    assert server_stats["datagrams_received"] == outcome.server_udp_in
    assert stats["datagrams_received"] == client["udp_in"]
    arrived_requests = server_stats["datagrams_received"] - stats["datagrams_sent"]
    arrived_replies = stats["datagrams_received"] - server_stats["datagrams_sent"]
    assert 0 < arrived_requests <= copied_requests
    assert 0 < arrived_replies <= copied_replies
    # A duplicated request is handled once per arrival: more often than it was sent.
    handled_twice = [
        request_id
        for request_id, handled in outcome.server_handled.items()
        if handled > outcome.sent[request_id]
    ]
    assert handled_twice
    # The extra replies were dropped by request() and counted (or read after the last call).
    assert stats["unmatched_replies"] > 0
    assert stats["unmatched_replies"] + client["leftover"] == stats["datagrams_received"] - CALLS
