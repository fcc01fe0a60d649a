"""The compiled fast path (``anydgram._speedups``) against its pure-Python references.

The extension must return the same objects, leave the same state and raise the same errors as
``_mmsg.unpack_batch`` and ``_mmsg_send.ReplySlots``: both run on the same random batches
(sizes 0..65507, IPv4 and IPv6 senders, oversize datagrams, a full address cache) and are
compared. Skipped where the extension is not built; CI sets ``ANYDGRAM_EXPECT_EXTENSIONS=1``
where a compiler is there, so a build that silently failed fails here instead.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from anydgram import _compiled, _mmsg, _mmsg_send
from anydgram._io_core import SocketCore, Tally
from anydgram._mmsg import IoVec, MMsgHdr, decode_sockaddr_untrusted, unpack_batch
from anydgram._mmsg_send import ReplyBatch, ReplySlots, encode_sockaddr

speedups = _compiled.speedups
needs_speedups = pytest.mark.skipif(speedups is None, reason="anydgram._speedups is not built")


def test_the_extension_is_used_where_built() -> None:
    if os.environ.get(_compiled.ENV_SWITCH, "") not in {"", "0"}:
        assert speedups is None
    elif os.environ.get("ANYDGRAM_EXPECT_EXTENSIONS") == "1":
        assert speedups is not None, "a compiler is there, but anydgram._speedups was not built"
    if speedups is None:
        assert _mmsg._unpack is unpack_batch
        assert ReplyBatch.__mro__[1] is ReplySlots
    else:
        assert _mmsg._unpack is speedups.unpack_batch
        assert ReplyBatch.__mro__[1] is speedups.ReplySlots
        assert ctypes.sizeof(MMsgHdr) == speedups.MMSGHDR_SIZE
        assert ctypes.sizeof(IoVec) == speedups.IOVEC_SIZE


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_switch_forces_pure_python(value: str) -> None:
    code = (
        "from anydgram import _compiled, _mmsg, _mmsg_send\n"
        "assert _compiled.speedups is None\n"
        "assert _mmsg._unpack is _mmsg.unpack_batch\n"
        "assert _mmsg_send.ReplyBatch.__mro__[1] is _mmsg_send.ReplySlots\n"
    )
    env = dict(os.environ, ANYDGRAM_NO_EXTENSIONS=value)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


# -- unpack_batch -------------------------------------------------------------------------------

_STRIDE = 128


def _sockaddr(family: int, rng: random.Random) -> bytes:
    if family == socket.AF_INET:
        host = socket.inet_ntop(socket.AF_INET, rng.randbytes(4))
        raw = encode_sockaddr(family, (host, rng.randrange(65536)))
    else:
        host = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
        address = (host, rng.randrange(65536), rng.randrange(1 << 20), rng.randrange(1 << 31))
        raw = encode_sockaddr(family, address)
    assert raw is not None
    return raw


def _random_batch(
    rng: random.Random, family: int, count: int, bufsize: int, senders: list[bytes]
) -> tuple[list[int], bytes, memoryview]:
    data = bytearray(count * bufsize)
    names = bytearray(count * _STRIDE)
    lengths: list[int] = []
    for i in range(count):
        # Now and then the edges: empty, the limit, one over it (oversize), the whole slot.
        length = rng.choice([0, bufsize - 1, bufsize, rng.randrange(bufsize + 1)])
        lengths.append(length)
        data[i * bufsize : i * bufsize + length] = rng.randbytes(length)
        name = rng.choice(senders)
        names[i * _STRIDE : i * _STRIDE + len(name)] = name
        # What follows the address in its slot is garbage the key must not include.
        names[i * _STRIDE + len(name) : (i + 1) * _STRIDE] = rng.randbytes(_STRIDE - len(name))
    return lengths, bytes(names), memoryview(data)


def _recording(calls: list[bytes]) -> Any:
    def decode(raw: bytes) -> Any:
        calls.append(raw)
        return decode_sockaddr_untrusted(raw)

    return decode


@needs_speedups
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize(("bufsize", "cache_size"), [(65508, 1024), (65508, 2), (17, 3), (1, 5)])
def test_unpack_batch_matches_the_reference(family: int, bufsize: int, cache_size: int) -> None:
    assert speedups is not None
    rng = random.Random(f"{family}-{bufsize}-{cache_size}")
    namelen = _mmsg.SOCKADDR_IN_SIZE if family == socket.AF_INET else _mmsg.SOCKADDR_IN6_SIZE
    senders = [_sockaddr(family, rng) for _ in range(7)]
    offsets = list(range(0, 64 * bufsize, bufsize))
    name_offsets = list(range(0, 64 * _STRIDE, _STRIDE))
    cache_py: dict[bytes, Any] = {}
    cache_c: dict[bytes, Any] = {}
    for _ in range(12):
        count = rng.choice([0, 1, rng.randrange(1, 9)])
        lengths, names, data = _random_batch(rng, family, count, bufsize, senders)
        calls_py: list[bytes] = []
        calls_c: list[bytes] = []
        limit = bufsize - 1
        args = (names, data, offsets, name_offsets, namelen, limit)
        got_py = unpack_batch(lengths, *args, cache_py, _recording(calls_py), cache_size)
        got_c = speedups.unpack_batch(lengths, *args, cache_c, _recording(calls_c), cache_size)
        assert got_c == got_py
        assert calls_c == calls_py
        assert cache_c == cache_py
        assert len(cache_c) <= cache_size
        batch, nbytes, oversize = got_c
        assert all(type(item) is tuple and type(item[0]) is bytes for item in batch)
        assert oversize == sum(1 for n in lengths if n > limit)
        assert nbytes == sum(n for n in lengths if n <= limit)


@needs_speedups
def test_unpack_batch_returns_the_cached_address_objects_and_same_errors() -> None:
    assert speedups is not None
    raw = encode_sockaddr(socket.AF_INET, ("10.0.0.1", 53))
    assert raw is not None
    cached = ("10.0.0.1", 53)
    bad = b"\x00" * 16  # family 0: the decoder refuses it
    names = raw + bytes(_STRIDE - 16) + bad + bytes(_STRIDE - 16)
    data = memoryview(bytearray(b"ab" * 8))
    offsets, name_offsets = [0, 8], [0, _STRIDE]
    results: list[tuple[str, dict[bytes, Any]]] = []
    for unpack in (unpack_batch, speedups.unpack_batch):
        cache: dict[bytes, Any] = {raw: cached}
        batch, _, _ = unpack([3], names, data, offsets, name_offsets, 16, 7, cache, _fail, 8)
        assert batch == [(b"aba", cached, None, None)]
        assert batch[0][1] is cached
        with pytest.raises(ValueError, match="unexpected socket address") as info:
            unpack(
                [3, 2], names, data, offsets, name_offsets, 16, 7, cache,
                decode_sockaddr_untrusted, 8,
            )  # fmt: skip
        results.append((str(info.value), dict(cache)))
    assert results[0] == results[1]


def _fail(raw: bytes) -> Any:
    raise AssertionError(f"decoded {raw!r} though it was cached")


# -- ReplySlots.put -----------------------------------------------------------------------------


def _pure_mmsg_send() -> ModuleType:
    """A second copy of ``_mmsg_send`` whose ReplyBatch derives from the Python ReplySlots."""
    spec = importlib.util.spec_from_file_location("anydgram._mmsg_send_pure", _mmsg_send.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = _compiled.speedups
    try:
        _compiled.speedups = None  # type: ignore[misc]
        spec.loader.exec_module(module)
    finally:
        _compiled.speedups = saved  # type: ignore[misc]
    assert module.ReplyBatch.__mro__[1] is module.ReplySlots
    return module


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def peers(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[socket.socket]]]:
    family, host = request.param
    try:
        socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    except OSError:
        pytest.skip("no IPv6 here")
    for sock in socks:
        sock.bind((host, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    yield family, socks
    for sock in socks:
        sock.close()


def _state(batch: Any, family: int) -> tuple[Any, ...]:
    """What a batch holds: filled slots' payloads, lengths, peers' sockaddrs, the counters."""
    namelen = _mmsg.SOCKADDR_IN_SIZE if family == socket.AF_INET else _mmsg.SOCKADDR_IN6_SIZE
    slots: list[tuple[bytes, bytes, Any]] = []
    for i in range(batch.count):
        iovec = batch._iovecs[i]
        payload = ctypes.string_at(iovec.iov_base, iovec.iov_len)
        name = ctypes.string_at(batch._messages[i].msg_hdr.msg_name, namelen)
        slots.append((payload, name, batch._peers[i]))
    peers = list(batch._names)  # each batch encodes its own copy of a peer's sockaddr
    return (slots, batch.count, batch.blocked, batch.capacity, batch._slot_size, peers)


@needs_speedups
def test_put_matches_the_reference(
    monkeypatch: pytest.MonkeyPatch, peers: tuple[int, list[socket.socket]]
) -> None:
    family, socks = peers
    pure = _pure_mmsg_send()
    for module in (pure, _mmsg_send):
        monkeypatch.setattr(module, "_NAME_CACHE_SIZE", 2)  # the peer cache fills and clears
    rng = random.Random(family)
    addresses: list[Any] = [sock.getsockname() for sock in socks]
    addresses += ["not an address", ("::1",), None]
    limit = 1200
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.bind((socks[0].getsockname()[0], 0))
    with sender:
        core = SocketCore(sender, max_datagram_size=limit, connected=False)
        tallies = [Tally(), Tally()]
        batches = [pure.ReplyBatch(core, tallies[0], 5), ReplyBatch(core, tallies[1], 5)]
        assert type(batches[1]).__mro__[1] is not pure.ReplySlots
        for step in range(300):
            size = rng.choice([0, limit, limit + 1, rng.randrange(limit)])
            data: Any = rng.randbytes(size)
            if step % 7 == 0:
                data = bytearray(data)
            address = rng.choice(addresses)
            if step % 50 == 49:
                for batch in batches:
                    batch.blocked = True
            results = [batch.put(data, address) for batch in batches]
            assert results[0] == results[1]
            assert _state(batches[0], family)[1:] == _state(batches[1], family)[1:]
            if results[0]:
                assert _state(batches[0], family)[0] == _state(batches[1], family)[0]
            if step % 50 == 49:
                for batch in batches:
                    batch.discard()
        for batch in batches:
            batch.flush()
        assert tallies[0].datagrams_sent == tallies[1].datagrams_sent > 0
        assert tallies[0].bytes_sent == tallies[1].bytes_sent
    unhashables: list[Any] = [[1, 2], {}]
    for unhashable in unhashables:
        errors: list[str] = []
        for batch in batches:
            with pytest.raises(TypeError) as info:
                batch.put(b"x", unhashable)
            errors.append(str(info.value))
        assert errors[0] == errors[1]
