"""The examples in examples/, each run as a program and talking to a real peer.

Every example starts as a child process (``sys.executable``), answers a peer that is not part of
it (util-linux ``logger``, Python's ``SysLogHandler``, dnspython and ``dig``, ``socat``, the
``statsd`` client library, or another example) over 127.0.0.1, and stops on a signal sent to
its PID. A peer that is not installed skips its test with the reason; nothing passes silently.
The parsers of untrusted input are also fed mutated datagrams in this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from typing import Any, cast

import pytest

from anydgram import SyncDatagramClient
from anydgram._mmsg import ENV_SWITCH
from example_harness import (
    EXAMPLES,
    ExampleProcess,
    free_udp_port,
    load_example,
    mutations,
    require_tool,
    run_example,
    send_datagrams,
    udp_exchange,
)

BACKENDS = ["asyncio", "uvloop", "trio"]
SCRIPTS = sorted(path.name for path in EXAMPLES.glob("*.py"))


def containing(text: str) -> Callable[[str], bool]:
    """A ``wait_for`` predicate: the line contains ``text``."""
    return lambda line: text in line


# -- every example -----------------------------------------------------------------------------


def test_every_example_has_help() -> None:
    assert len(SCRIPTS) >= 12, SCRIPTS
    # All at once: each is a Python start-up, and they are independent.
    children = {
        script: subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--help"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    try:
        for script, child in children.items():
            out, err = child.communicate(timeout=30)
            assert child.returncode == 0, f"{script} --help: {err}"
            assert out.startswith("usage:"), script
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait(5)


# -- echo --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server() -> Generator[int, None, None]:
    """An echo_server.py on asyncio; its port."""
    with ExampleProcess("echo_server.py", "--port", "0") as server:
        yield server.address()[1]
        assert server.stop() == 0, server.stderr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_server_answers_socat(backend: str) -> None:
    socat = require_tool("socat", "socat")
    with ExampleProcess("echo_server.py", "--port", "0", "--backend", backend) as server:
        _, port = server.address()
        result = subprocess.run(
            [socat, "-t", "1", "-T", "5", "-", f"UDP:127.0.0.1:{port}"],
            input="hello from socat\n",
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.stdout == "hello from socat\n", result.stderr
        assert server.stop() == 0, server.stderr()
        assert "shutting down" in server.stderr()


@pytest.mark.parametrize(
    ("script", "backend"),
    [
        ("echo_client_asyncio.py", "asyncio"),
        ("echo_client_asyncio.py", "uvloop"),
        ("echo_client_trio.py", None),
    ],
)
def test_async_echo_clients(echo_server: int, script: str, backend: str | None) -> None:
    # Generous time limits: they only bound a wait for an echo that comes in microseconds.
    args = ["--port", str(echo_server), "--timeout", "5", "hello", "hello world"]
    if backend is not None:
        args += ["--backend", backend]
    result = run_example(script, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello", "hello world"]


def test_async_echo_client_reads_stdin(echo_server: int) -> None:
    result = run_example(
        "echo_client_trio.py", "--port", str(echo_server), "--timeout", "5", stdin="one\ntwo\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["one", "two"]


def test_echo_client_threads(echo_server: int) -> None:
    messages = [f"m{i}" for i in range(12)]
    result = run_example(
        "echo_client_threads.py",
        "--port",
        str(echo_server),
        "--threads",
        "6",
        "--timeout",
        "2",
        *messages,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:12] == [f"{m} -> {m}" for m in messages]
    assert lines[12].startswith("sent 12 datagrams, received 12")


def test_echo_clients_report_a_missing_server() -> None:
    port = free_udp_port()  # nothing listens there: the kernel answers ICMP port unreachable
    for script in ("echo_client_asyncio.py", "echo_client_trio.py"):
        result = run_example(script, "--port", str(port), "--timeout", "0.5", "x")
        assert result.returncode == 1
        assert "connection refused" in result.stdout
    result = run_example("echo_client_threads.py", "--port", str(port), "--timeout", "0.1", "x")
    assert result.returncode == 1
    assert "x -> connection refused" in result.stdout


def test_echo_server_workers_share_the_port() -> None:
    port = free_udp_port()
    with ExampleProcess(
        "echo_server.py", "--port", str(port), "--workers", "2", "--tag-pid"
    ) as server:
        # The supervisor logs once every worker is bound (the first one answers earlier).
        deadline = time.monotonic() + 10
        while "2 worker processes" not in server.stderr():
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.05)
        # SO_REUSEPORT spreads clients by a hash of their address and port: many client
        # ports reach both workers.
        pids: set[int] = set()
        for i in range(24):
            reply = udp_exchange(port, b"hi %d" % i)
            assert reply is not None
            pid, _, echoed = reply.partition(b" ")
            assert echoed == b"hi %d" % i
            pids.add(int(pid))
        assert len(pids) == 2, pids
        assert server.pid not in pids  # the supervisor keeps no socket
        assert server.stop() == 0, server.stderr()


def test_echo_server_refuses_workers_on_port_zero() -> None:
    result = run_example("echo_server.py", "--port", "0", "--workers", "2")
    assert result.returncode == 2
    assert "needs an explicit --port" in result.stderr


# -- threads -----------------------------------------------------------------------------------


def test_threaded_transmitter_receiver_in_one_process() -> None:
    result = run_example(
        "threaded_transmitter_receiver.py", "--port", "0", "--timeout", "2", "one", "two words"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TX: echo 'one'" in out
    assert "TX: echo 'two words'" in out
    assert "RX: 'two words' from 127.0.0.1:" in out


def test_threaded_receiver_and_transmitter_processes() -> None:
    script = "threaded_transmitter_receiver.py"
    with ExampleProcess(script, "--mode", "rx", "--port", "0") as receiver:
        _, port = receiver.address()
        result = run_example(
            script, "--mode", "tx", "--port", str(port), "--timeout", "2", stdin="alpha\nbeta\n"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "TX: 'alpha'",
            "TX: echo 'alpha'",
            "TX: 'beta'",
            "TX: echo 'beta'",
        ]
        receiver.wait_for(lambda line: line.startswith("RX: 'beta'"))
        # A signal handler closes the endpoint: the blocked receive thread ends at once.
        start = time.monotonic()
        assert receiver.stop(signal.SIGINT) == 0
        assert time.monotonic() - start < 2
    port = free_udp_port()
    result = run_example(script, "--mode", "tx", "--port", str(port), "--timeout", "0.1", "x")
    assert result.returncode == 1
    assert "TX: no echo" in result.stdout


# -- pinger ------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"(\d+) requests sent, (\d+) replies received, ([\d.]+)% loss")
_RTT = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def test_pinger_against_the_lossy_server() -> None:
    with ExampleProcess(
        "pinger.py", "serve", "--port", "0", "--loss", "0.3", "--seed", "7", "--backend", "trio"
    ) as server:
        _, port = server.address()
        common = ["--port", str(port), "--count", "20", "--interval", "0", "--timeout", "0.1"]
        once = run_example("pinger.py", "ping", *common, "--backend", "uvloop")
        assert once.returncode == 0, once.stderr
        summary = _SUMMARY.search(once.stdout)
        assert summary is not None, once.stdout
        sent, received, loss = int(summary[1]), int(summary[2]), float(summary[3])
        assert sent == 20
        assert 0 < received < 20  # about 30% lost, not all and not none
        assert loss == pytest.approx((sent - received) * 100 / sent, abs=0.05)
        assert once.stdout.count("request timed out") == sent - received
        rtt = _RTT.search(once.stdout)
        assert rtt is not None, once.stdout
        low, avg, high, mdev = (float(rtt[i]) for i in range(1, 5))
        assert 0 <= low <= avg <= high
        assert mdev >= 0

        # With retries, request() re-sends: a ping is lost only if all six sends are.
        retried = run_example("pinger.py", "ping", *common, "--attempts", "6")
        assert retried.returncode == 0, retried.stderr
        summary = _SUMMARY.search(retried.stdout)
        assert summary is not None, retried.stdout
        assert int(summary[2]) >= 19
        datagrams = re.search(r"\((\d+) datagrams sent\)", retried.stdout)
        assert datagrams is not None
        assert int(datagrams[1]) > 20

        assert server.stop() == 0, server.stderr()
        answered = re.search(r"answered (\d+), dropped (\d+)", "\n".join(server.rest_of_output()))
        assert answered is not None
        assert int(answered[2]) > 0


# -- latency probe -----------------------------------------------------------------------------

_PROBE = re.compile(
    r"seq=(\d+) rtt=([\d.]+) ms wakeup=([\d.]+) ms out=([\d.]+) ms hold=([\d.]+) ms "
    r"back=([\d.]+) ms ttl=(\d+) tos=0x([0-9a-f]{2}) ecn=(\d)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timestamps: Linux")
def test_latency_probe_splits_round_trips_with_kernel_timestamps() -> None:
    with ExampleProcess("latency_probe.py", "reflect", "--port", "0", "--backend", "trio") as rx:
        _, port = rx.address()
        result = run_example(
            "latency_probe.py",
            "probe",
            *("--port", str(port), "--count", "5", "--interval", "0", "--tos", "0xb9"),
            *("--backend", "uvloop"),
        )
        assert result.returncode == 0, result.stderr
        probes = _PROBE.findall(result.stdout)
        with open("/proc/sys/net/ipv4/ip_default_ttl") as default:
            default_ttl = int(default.read())
        assert [int(p[0]) for p in probes] == list(range(5)), result.stdout
        for _, rtt, wakeup, out, hold, back, ttl, tos, ecn in probes:
            # Every part of a round trip is there and none is longer than the whole.
            assert all(0 <= float(part) <= float(rtt) + 1 for part in (out, hold, back))
            assert float(wakeup) >= 0
            assert (int(ttl), int(tos, 16), int(ecn)) == (default_ttl, 0xB9, 1)  # as it was sent
        assert "5 probes, 5 replies" in result.stdout
        assert re.search(r"^rtt min/median/max = [\d.]+/[\d.]+/[\d.]+ ms$", result.stdout, re.M)
        assert rx.stop() == 0, rx.stderr()


# -- syslog ------------------------------------------------------------------------------------


def _logger_supports_remote(logger: str) -> None:
    usage = subprocess.run(
        [logger, "--help"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    for option in ("--rfc5424", "--rfc3164", "--server", "--sd-id"):
        if option not in usage:
            pytest.skip(f"this logger has no {option} (util-linux >= 2.26 is needed)")


def test_syslog_receiver_parses_real_senders() -> None:
    logger = require_tool("logger", "bsdutils")
    _logger_supports_remote(logger)
    with ExampleProcess("syslog_receiver.py", "--port", "0", "--json", "--backend", "trio") as rx:
        _, port = rx.address()
        remote = [logger, "-n", "127.0.0.1", "-P", str(port), "-d"]
        subprocess.run(
            [
                *remote,
                "--rfc5424",
                "--msgid",
                "BOOT",
                "--sd-id",
                "meta@32473",
                "--sd-param",
                'phase="early \\"one\\""',
                "-t",
                "anyapp",
                "-p",
                "local3.warning",
                "hello 5424",
            ],
            check=True,
            timeout=10,
        )
        subprocess.run(
            [*remote, "--rfc3164", "-i", "-t", "oldapp", "-p", "daemon.err", "hello 3164"],
            check=True,
            timeout=10,
        )
        handler = logging.handlers.SysLogHandler(
            address=("127.0.0.1", port), facility=logging.handlers.SysLogHandler.LOG_LOCAL1
        )
        handler.ident = "pyapp: "
        log = logging.Logger("syslog-example-test")  # not registered: no global state
        log.addHandler(handler)
        try:
            log.warning("hello from %s", "python")
        finally:
            handler.close()

        records: dict[str, dict[str, Any]] = {}
        for text in ("hello 5424", "hello 3164", "hello from python"):
            line = rx.wait_for(containing(text))
            records[text] = json.loads(line)

    rfc5424 = records["hello 5424"]
    assert rfc5424["format"] == "rfc5424"
    assert (rfc5424["facility"], rfc5424["severity"], rfc5424["priority"]) == (
        "local3",
        "warning",
        19 * 8 + 4,
    )
    assert (rfc5424["app_name"], rfc5424["msgid"]) == ("anyapp", "BOOT")
    assert rfc5424["structured_data"]["meta@32473"] == {"phase": 'early "one"'}
    assert rfc5424["hostname"] == socket.gethostname()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+([+-]\d\d:\d\d|Z)", rfc5424["timestamp"])

    rfc3164 = records["hello 3164"]
    assert rfc3164["format"] == "rfc3164"
    assert (rfc3164["facility"], rfc3164["severity"]) == ("daemon", "err")
    assert rfc3164["app_name"] == "oldapp"
    assert rfc3164["procid"].isdigit()
    assert rfc3164["message"] == "hello 3164"
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d", rfc3164["timestamp"])

    python = records["hello from python"]
    assert (python["format"], python["facility"], python["severity"]) == (
        "rfc3164",
        "local1",
        "warning",
    )
    assert (python["app_name"], python["message"]) == ("pyapp", "hello from python")
    assert python["timestamp"] is None


def test_syslog_receiver_survives_malformed_datagrams() -> None:
    garbage = [
        b"",
        b"no priority",
        b"<192>too high",
        b"<013>leading zero",
        b"<13>1 truncated",
        b"<13>1 2026-13-40T99:00:00Z host app - - - bad date",
        b'<13>1 - - - - - [id unterminated="x] m',
        b'<13>1 - - - - - [id a="1"][id a="2"] repeated id',
        b"<13>\x1b[31mred\xff\xfe",
    ]
    with ExampleProcess("syslog_receiver.py", "--port", "0") as rx:
        _, port = rx.address()
        send_datagrams(port, [*garbage, b"<14>app[7]: still alive"])
        rx.wait_for(lambda line: "still alive" in line)
        assert rx.stop() == 0, rx.stderr()
        output = rx.rest_of_output()
    assert sum(" unparsed (" in line for line in output) == 8
    assert not any("\x1b" in line for line in output)  # escaped, never sent to a terminal
    assert any(r"\x1b[31mred" in line and "rfc3164" in line for line in output)


def test_syslog_parser_never_raises_anything_else() -> None:
    module = load_example("syslog_receiver")
    seeds = [
        b'<13>1 2026-11-21T13:05:56.37+00:00 vm app 12 ID [a b="c \\"d\\""][e@1 f="g"] msg',
        b"<13>Nov 21 13:05:56 vm app[15099]: hello",
        b"<14>pyapp: hi\0",
    ]
    for data in mutations(seeds, 5000, b'<>[]"\\ =-1:', seed=1):
        with contextlib.suppress(module.SyslogParseError):
            module.parse_syslog_untrusted(data)
        assert module.render(data, "test", as_json=True)


# -- DNS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_responder() -> Generator[int, None, None]:
    """A dns_responder.py on uvloop serving examples/zone.txt; its port."""
    with ExampleProcess("dns_responder.py", "--port", "0", "--backend", "uvloop") as server:
        yield server.address()[1]
        assert server.stop() == 0, server.stderr()


def test_dns_responder_answers_dnspython(dns_responder: int) -> None:
    pytest.importorskip("dns.message", reason="dnspython is not installed (the test extra)")
    import dns.flags
    import dns.message
    import dns.opcode
    import dns.query
    import dns.rcode
    import dns.rdataclass
    import dns.rrset

    def addresses(rrset: dns.rrset.RRset) -> list[str]:
        # "www.example.test. 60 IN A 192.0.2.10" per record: the address is the last field.
        return sorted(line.split()[-1] for line in rrset.to_text().splitlines())

    def ask(query: dns.message.Message) -> dns.message.Message:
        return dns.query.udp(query, "127.0.0.1", port=dns_responder, timeout=3)

    reply = ask(dns.message.make_query("www.example.test", "A"))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    (answer,) = reply.answer
    assert addresses(answer) == ["192.0.2.10", "192.0.2.11"]
    assert answer.ttl == 60

    reply = ask(dns.message.make_query("EXAMPLE.test.", "AAAA", use_edns=0))
    assert addresses(reply.answer[0]) == ["2001:db8::1"]

    reply = ask(dns.message.make_query("nowhere.example.test", "A"))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer

    reply = ask(dns.message.make_query("ipv6only.example.test", "A"))  # exists, no A
    assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, [])

    reply = ask(dns.message.make_query("example.test", "TXT", rdclass=dns.rdataclass.CH))
    assert reply.rcode() == dns.rcode.NOTIMP

    query = dns.message.make_query("example.test", "A")
    query.set_opcode(dns.opcode.STATUS)
    assert ask(query).rcode() == dns.rcode.NOTIMP


def test_dns_responder_answers_dig(dns_responder: int) -> None:
    dig = require_tool("dig", "bind9-dnsutils")
    base = [dig, "@127.0.0.1", "-p", str(dns_responder), "+tries=2", "+time=2"]
    short = subprocess.run(
        [*base, "+short", "www.example.test", "A"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    assert sorted(short.stdout.split()) == ["192.0.2.10", "192.0.2.11"]
    short = subprocess.run(
        [*base, "+short", "www.example.test", "AAAA"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    )
    assert short.stdout.split() == ["2001:db8::10"]
    full = subprocess.run(
        [*base, "missing.example.test", "A"], capture_output=True, text=True, timeout=15
    )
    assert "status: NXDOMAIN" in full.stdout
    assert " aa" in full.stdout  # authoritative


def test_dns_responder_rejects_malformed_queries(dns_responder: int) -> None:
    header = bytes.fromhex("1234 0100 0001 0000 0000 0000")

    def rcode(reply: bytes | None) -> int:
        assert reply is not None
        assert reply[:2] == b"\x12\x34"
        assert reply[2] & 0x80  # a response
        return reply[3] & 0x0F

    # A compression pointer to itself: a loop, refused without looping.
    assert rcode(udp_exchange(dns_responder, header + b"\xc0\x0c\x00\x01\x00\x01")) == 1
    # A pointer forward, a label past the end, a truncated question, two questions.
    assert rcode(udp_exchange(dns_responder, header + b"\xc0\x20\x00\x01\x00\x01")) == 1
    assert rcode(udp_exchange(dns_responder, header + b"\x05ab")) == 1
    assert rcode(udp_exchange(dns_responder, header + b"\x00\x00")) == 1
    two = bytes.fromhex("1234 0100 0002 0000 0000 0000") + b"\x00\x00\x01\x00\x01" * 2
    assert rcode(udp_exchange(dns_responder, two)) == 1
    # A 300-byte name, made of pointers to ever earlier labels: too long.
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    assert rcode(udp_exchange(dns_responder, header + labels + b"\x00\x01\x00\x01")) == 1
    # Too short for a header, or itself a response: no answer at all.
    assert udp_exchange(dns_responder, b"abc", timeout=0.3, expect_reply=False) is None
    response = bytes.fromhex("1234 8100 0000 0000 0000 0000")
    assert udp_exchange(dns_responder, response, timeout=0.3, expect_reply=False) is None
    # Still answering.
    query = header + b"\x07example\x04test\x00\x00\x01\x00\x01"
    assert rcode(udp_exchange(dns_responder, query)) == 0


def test_dns_parser_never_raises_anything_else() -> None:
    module = load_example("dns_responder")
    zone = module.Zone.from_text((EXAMPLES / "zone.txt").read_text())
    header = bytes.fromhex("1234 0100 0001 0000 0000 0001")
    seeds = [
        header + b"\x03www\x07example\x04test\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0" * 2,
        header + b"\x07example\x04test\x00\x00\x1c\x00\x01",
        header + b"\x03www\xc0\x0c\x00\x01\x00\x01",
    ]
    for data in mutations(seeds, 5000, bytes([0, 1, 3, 0x3F, 0x40, 0xC0, 0x0C, 0xFF]), seed=2):
        response, description = module.answer_untrusted(data, zone)
        assert isinstance(description, str)
        assert response is None or len(response) <= 512


def test_dns_zone_file_errors_name_the_line(tmp_path: Any) -> None:
    zone = tmp_path / "zone.txt"
    zone.write_text("ok.test A 192.0.2.1\nbad.test A 300.1.1.1\n")
    result = run_example("dns_responder.py", "--zone", str(zone), "--port", "0")
    assert result.returncode == 2
    assert "zone line 2" in result.stderr


# -- statsd ------------------------------------------------------------------------------------


def test_statsd_collector_aggregates_a_statsd_client() -> None:
    statsd = pytest.importorskip("statsd", reason="the statsd client is not installed (test extra)")
    with ExampleProcess(
        "statsd_collector.py", "--port", "0", "--json", "--flush-interval", "0.3"
    ) as collector:
        _, port = collector.address()
        client = statsd.StatsClient("127.0.0.1", port, prefix="app")
        try:
            client.incr("hits")
            client.incr("hits", 4)
            client.decr("hits", 2)
            client.gauge("temperature", 20)
            client.gauge("temperature", 5, delta=True)
            client.gauge("temperature", -3, delta=True)
            with client.pipeline() as pipe:  # one datagram: the samples land in one flush
                for value in range(1, 11):
                    pipe.timing("db.query", value)
        finally:
            client.close()
        # A sample rate, sent by hand (the library drops a share of the calls itself).
        send_datagrams(port, [b"raw.sampled:1|c|@0.1\nbad line\nx:nan|c\nraw.tagged:2|c|#a:b"])
        collector.wait_for(lambda line: '"app.db.query"' in line)
        collector.wait_for(lambda line: line.startswith("{"))  # one more, periodic, flush
        assert collector.stop() == 0, collector.stderr()
        flushes = [json.loads(line) for line in collector.rest_of_output() if line[:1] == "{"]

    assert len(flushes) >= 2
    counters: dict[str, float] = {}
    for flush in flushes:
        for name, counter in flush["counters"].items():
            counters[name] = counters.get(name, 0.0) + counter["value"]
    assert counters == {"app.hits": 3.0, "raw.sampled": 10.0, "raw.tagged": 2.0}
    assert flushes[-1]["gauges"] == {"app.temperature": 22.0}  # gauges persist
    (timers,) = [flush["timers"] for flush in flushes if flush["timers"]]
    assert timers["app.db.query"] == {"count": 10, "min": 1, "max": 10, "mean": 5.5, "p90": 9}
    assert sum(flush["bad_lines"] for flush in flushes) == 2


def test_statsd_parser_never_raises_anything_else() -> None:
    module = load_example("statsd_collector")
    metrics = module.Metrics(max_metrics=50)
    seeds = [b"a.b:1|c|@0.5\nt:3.5|ms\ng:+4|g\ng:-1e3|g|#x:y", b"h:12|h"]
    for data in mutations(seeds, 5000, b":|@#.-+\n0eE", seed=3):
        metrics.add_datagram_untrusted(data)
    snapshot = metrics.flush(1.0)
    assert len(snapshot["counters"]) + len(snapshot["gauges"]) + len(snapshot["timers"]) <= 50
    assert json.dumps(snapshot)


# -- JSON-RPC ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jsonrpc_service() -> Generator[int, None, None]:
    """A jsonrpc_service.py on trio; its port."""
    with ExampleProcess("jsonrpc_service.py", "--port", "0", "--backend", "trio") as service:
        yield service.address()[1]
        assert service.stop() == 0, service.stderr()


def test_jsonrpc_client_calls_the_service(jsonrpc_service: int) -> None:
    port = ["--port", str(jsonrpc_service)]
    result = run_example("jsonrpc_client.py", *port, "call", "add", "[2, 3.5]")
    assert (result.returncode, result.stdout) == (0, "5.5\n"), result.stderr
    result = run_example(
        "jsonrpc_client.py", *port, "call", "subtract", '{"subtrahend": 8, "minuend": 5}'
    )
    assert (result.returncode, result.stdout) == (0, "-3\n"), result.stderr
    result = run_example("jsonrpc_client.py", *port, "call", "no.such.method")
    assert result.returncode == 1
    assert result.stdout.startswith("error -32601:")
    result = run_example("jsonrpc_client.py", *port, "call", "add", '["x", 1]')
    assert result.returncode == 1
    assert result.stdout.startswith("error -32602:")
    result = run_example("jsonrpc_client.py", *port, "--backend", "uvloop", "demo", "--calls", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("60 concurrent calls, 60 right answers")


def test_jsonrpc_service_speaks_the_specification(jsonrpc_service: int) -> None:
    def exchange(payload: bytes) -> Any:
        reply = udp_exchange(jsonrpc_service, payload)
        assert reply is not None
        return json.loads(reply)

    parse_error = exchange(b'{"jsonrpc": "2.0", "method": ')
    assert parse_error == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }
    assert exchange(b"[]")["error"]["code"] == -32600
    assert exchange(b'"a string"')["error"]["code"] == -32600
    assert exchange(b'{"jsonrpc": "1.0", "method": "add", "id": 1}')["error"]["code"] == -32600
    batch = exchange(
        b'[{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "a"},'
        b' {"jsonrpc": "2.0", "method": "echo", "params": {"x": 1}},'
        b' {"jsonrpc": "2.0", "method": "echo", "params": [true], "id": "b"}]'
    )
    assert batch == [
        {"jsonrpc": "2.0", "result": 3, "id": "a"},
        {"jsonrpc": "2.0", "result": [True], "id": "b"},
    ]
    # "1e5" comes back as "100000.0": a batch whose replies do not fit in one datagram.
    calls = (
        b'{"jsonrpc": "2.0", "method": "echo", "params": [%s], "id": %d}'
        % (b",".join([b"1e5"] * 400), i)
        for i in range(32)
    )
    too_large = exchange(b"[" + b",".join(calls) + b"]")
    assert too_large["error"] == {"code": -32603, "message": "the reply is too large"}
    notification = b'{"jsonrpc": "2.0", "method": "counter.increment"}'
    assert udp_exchange(jsonrpc_service, notification, timeout=0.3, expect_reply=False) is None
    # A re-sent request is answered from memory: the non-idempotent method runs once.
    call = b'{"jsonrpc": "2.0", "method": "counter.increment", "params": [5], "id": 99}'
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        replies: list[Any] = []
        for _ in range(3):
            sock.sendto(call, ("127.0.0.1", jsonrpc_service))
            replies.append(json.loads(sock.recv(4096)))
    assert replies[0] == replies[1] == replies[2]
    assert isinstance(replies[0]["result"], int)


def test_jsonrpc_with_the_blocking_client(jsonrpc_service: int) -> None:
    from anydgram import DatagramProtocol
    from anydgram.serializers import JSONSerializer

    protocol = DatagramProtocol(JSONSerializer())
    with SyncDatagramClient("127.0.0.1", jsonrpc_service, protocol=protocol) as client:
        reply = client.request(
            {"jsonrpc": "2.0", "method": "echo", "params": ["hi"], "id": 7},
            match=lambda r: isinstance(r, dict) and cast("dict[str, Any]", r).get("id") == 7,
        )
    assert reply == {"jsonrpc": "2.0", "result": ["hi"], "id": 7}


# -- chunking ----------------------------------------------------------------------------------


def test_chunking_sender_and_receiver() -> None:
    with ExampleProcess("chunking.py", "receive", "--port", "0", "--backend", "uvloop") as rx:
        _, port = rx.address()
        # Garbage first: counted, never a crash.
        send_datagrams(port, [b"", b"CK", b"CK\x00" + b"\xff" * 12, b"\x00" * 1300])
        sent = run_example(
            "chunking.py",
            "send",
            "--port",
            str(port),
            "--size",
            "150000",
            "--loss",
            "0.25",
            "--seed",
            "5",
            "--backend",
            "trio",
        )
        assert sent.returncode == 0, sent.stderr
        digest = re.search(
            r"sent 150000 bytes sha256=(\w+) .* after (\d+) NACK rounds", sent.stdout
        )
        assert digest is not None, sent.stdout
        assert int(digest[2]) >= 1  # a quarter of the chunks skipped: NACKs brought them
        rx.wait_for(lambda line: f"150000 bytes sha256={digest[1]}" in line)
        empty = run_example("chunking.py", "send", "--port", str(port), "--size", "0")
        assert empty.returncode == 0, empty.stderr
        rx.wait_for(lambda line: ": 0 bytes sha256=" in line)
        stats = rx.wait_for(lambda line: line.startswith("stats "))
        assert "'malformed': 4" in stats
        assert rx.stop() == 0, rx.stderr()


def test_chunking_reassembler_within_bounds() -> None:
    module = load_example("chunking")
    reassembler = module.Reassembler(timeout=1.0)
    rng = random.Random(4)
    now = 0.0
    for i in range(20_000):
        now += 0.001
        count = rng.choice([1, 3, 1024, 1025, rng.randrange(2000)])
        data = module.HEADER.pack(
            rng.choice([module.MAGIC, b"XX"]),
            rng.choice([0, 0, 0, 1, 2]),
            rng.randrange(400),
            rng.randrange(max(count, 1) + 1),
            count,
        ) + bytes(rng.randrange(1300))
        message, reply = reassembler.receive_untrusted(data, ("127.0.0.1", i % 3), now)
        assert message is None or len(message) <= module.MAX_CHUNKS * module.CHUNK_SIZE
        assert reply is None or module.decode_reply_untrusted(reply) is not None
        assert len(reassembler._partial) <= module.MAX_PARTIAL
        assert reassembler._pending_bytes <= module.MAX_PENDING_BYTES
    assert reassembler.stats["messages"] > 0
    assert reassembler.stats["expired"] > 0


# -- typed service (msgspec) -------------------------------------------------------------------


def test_typed_service_answers_each_message_type_and_refuses_bad_ones() -> None:
    with ExampleProcess("typed_service.py", "--port", "0") as server:
        host, port = server.address()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.settimeout(10)
            peer.connect((host, port))
            peer.send(b'{"type":"add","a":2,"b":3}')
            assert json.loads(peer.recv(2048)) == {"type": "sum", "value": 5}
            peer.send(b'{"type":"echo","text":"hi","times":2}')
            assert json.loads(peer.recv(2048)) == {"type": "echoed", "text": "hihi"}
            peer.send(b'{"type":"add","a":"two","b":3}')
            server.wait_for(containing("Expected `int`, got `str` - at `$.a`"))
            peer.send(b'{"type":"divide","a":1,"b":0}')
            server.wait_for(containing("Invalid value 'divide' - at `$.type`"))
        assert server.stop() == 0, server.stderr()


# -- bulk telemetry (send_packets / recv_packets) -----------------------------------------------


def _last_json(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_bulk_telemetry_sender_and_collector(backend: str) -> None:
    count = 3000
    with ExampleProcess(
        "bulk_telemetry.py", "--backend", backend, "receive", "--port", "0", "--count", str(count)
    ) as collector:
        _, port = collector.address()
        sent = run_example(
            "bulk_telemetry.py", "--backend", backend, "send", "--to", f"127.0.0.1:{port}",
            "--count", str(count), "--size", "1000",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert _last_json(sent.stdout)["sent"] == count
        report = json.loads(collector.wait_for(lambda line: line.startswith("{"), timeout=20))
    # Nothing may be lost on loopback with the collector's 4 MiB buffer: every sample once.
    assert report["kernel_drops"] == 0, report
    assert (report["received"], report["distinct"], report["missing"]) == (count, count, 0)
    assert report["malformed"] == 0
    if sys.platform == "linux" and os.environ.get(ENV_SWITCH, "1") != "0":
        assert report["gro"] is True  # recv_packets asked the kernel for UDP_GRO


def test_bulk_telemetry_feeds_socat_and_counts_what_socat_sends() -> None:
    socat = require_tool("socat", "socat")
    port = free_udp_port()
    # socat as the collector: it writes each datagram it receives to its stdout.
    with subprocess.Popen(
        [socat, "-T", "3", "-u", f"UDP-RECV:{port},bind=127.0.0.1", "STDOUT"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as receiver:
        try:
            deadline = time.monotonic() + 10
            while _udp_port_is_free(port):  # until socat has bound it
                assert time.monotonic() < deadline, "socat did not bind its port"
                time.sleep(0.01)
            sent = run_example(
                "bulk_telemetry.py", "send", "--to", f"127.0.0.1:{port}", "--count", "200",
                "--size", "100",
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            out, _ = receiver.communicate(timeout=20)  # socat stops 3 s after the last one
        finally:
            if receiver.poll() is None:
                receiver.kill()
    assert len(out) == 200 * 100
    module = load_example("bulk_telemetry")
    sequences = [module.read_sample(out[i : i + 100])[0] for i in range(0, len(out), 100)]
    assert sorted(sequences) == list(range(200))
    # And socat as a sender to the collector: its datagram is too short to be a sample.
    with ExampleProcess(
        "bulk_telemetry.py", "receive", "--port", "0", "--idle", "0.5"
    ) as collector:
        _, port = collector.address()
        subprocess.run(
            [socat, "-u", "-", f"UDP-SENDTO:127.0.0.1:{port}"],
            input=b"hi",
            timeout=10,
            check=True,
        )
        report = json.loads(collector.wait_for(lambda line: line.startswith("{"), timeout=20))
    assert (report["received"], report["malformed"]) == (0, 1)


def _udp_port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
