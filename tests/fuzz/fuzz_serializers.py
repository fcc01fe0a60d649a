"""Fuzz harness: untrusted bytes through ``DatagramProtocol.build_packet_from_datagram``.

What it covers: every serializer and wrapper in :mod:`anydgram.serializers`, each inside a
:class:`~anydgram.DatagramProtocol` (see :data:`TARGETS`). The first byte of an input picks
the target (``data[0] % len(TARGETS)``), the rest is the datagram. For every input:

* parsing returns a packet or raises :class:`~anydgram.DatagramProtocolParseError`, whose
  ``.data`` is the datagram, whose ``.address`` is ``None`` and whose ``__cause__`` is the
  serializer's :class:`~anydgram.DeserializeError` (or ``None`` when the datagram was over
  ``max_datagram_size``). Any other exception is a crash;
* a packet that parsed is sent back through ``make_datagram`` where that is an invariant
  (:class:`RoundTrip`): the datagram is reproduced exactly, or the re-encoding is a fixed
  point (``make(build(make(p))) == make(p)``). Re-encoding may be refused only with
  :class:`~anydgram.DatagramTooLargeError` or with the errors a target lists as legitimate.
  Object formats are round-tripped only when the packet is a small acyclic tree of
  JSON-like values (:func:`is_plain`): CBOR and MessagePack decode tagged and extension
  types that no encoder promises to take back, and depth limits differ between encoders
  and decoders.

What it does not cover: the tag check of :class:`~anydgram.serializers.HMACSerializer`
and :class:`~anydgram.serializers.PickleSerializer` cannot be forged by a fuzzer, so the
decoders behind them see only the seed corpus (made by ``make_corpus.py`` with the keys
below); those inner decoders are fuzzed directly through their own targets, except
:func:`pickle.loads`, which must never see unauthenticated bytes. A zlib stream whose
checksum survives mutation is rare, so the decoders behind
:class:`~anydgram.serializers.ZlibSerializer` are mostly reached through the seeds as well.
No sockets are involved; ``fuzz_server_path.py`` covers the receive path.

Run ``python tests/fuzz/fuzz_serializers.py [libFuzzer flags] [corpus dirs]`` with atheris
installed (``nox -s fuzz`` does this), or call :func:`test_one_input` from plain Python
(``tests/test_fuzz_harnesses.py``); the module imports atheris only when run as a script.

:data:`TARGETS` is append-only: a target's index is the first byte of its corpus files.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from anydgram import DatagramProtocol, DatagramProtocolParseError, DatagramTooLargeError
from anydgram.serializers import (
    Base64Serializer,
    BytesSerializer,
    CBORSerializer,
    DeserializeError,
    HMACSerializer,
    JSONSerializer,
    MessagePackSerializer,
    MsgspecSerializer,
    PickleSerializer,
    StringSerializer,
    StructSerializer,
    ZlibSerializer,
)

#: Keys of the keyed targets. Test values: they only have to match the seed corpus.
HMAC_KEY = b"anydgram-fuzz-hmac-key-0123456789"
PICKLE_KEY = b"anydgram-fuzz-pickle-key-01234567"

#: Bounds of :func:`is_plain`, far below every encoder's and decoder's depth limit.
MAX_PLAIN_DEPTH = 200
MAX_PLAIN_NODES = 10_000


class RoundTrip(Enum):
    """What re-encoding a parsed packet must do."""

    #: ``make_datagram(packet)`` gives back the very bytes that were parsed.
    EXACT = "exact"
    #: ``make_datagram`` may normalise (whitespace, number forms, BOMs), but its output parses
    #: again and re-encodes to the same bytes.
    STABLE = "stable"
    #: No round trip is checked (the reason is next to the target).
    NONE = "none"


@dataclass(frozen=True)
class Target:
    """One protocol under test, the round trip it promises, and seed packets for the corpus."""

    name: str
    protocol: DatagramProtocol[Any, Any]
    round_trip: RoundTrip
    seeds: tuple[Any, ...]
    #: Errors besides DatagramTooLargeError that re-encoding a parsed packet may raise.
    reencode_errors: tuple[type[Exception], ...] = ()


_JSON_SEEDS: tuple[Any, ...] = (
    {"id": 7, "op": "probe", "values": [1.5, -2, None, True, False], "tags": {"a": []}},
    [],
    'text with ünïcödé and \u2028 and "quotes"',
    [1e300, -0.0, 12345678901234567890, 0.1],
    {"deep": [[[[{"x": [1, [2, [3]]]}]]]]},
)
_BINARY_SEEDS: tuple[Any, ...] = (
    *_JSON_SEEDS,
    {"blob": b"\x00\xff" * 8, "n": -(2**63), "m": 2**64 - 1},
    [b"", "", 0, -1, 3.25],
)


def _protocol(serializer: Any, max_datagram_size: int = 65507) -> DatagramProtocol[Any, Any]:
    return DatagramProtocol(serializer, max_datagram_size=max_datagram_size)


TARGETS: tuple[Target, ...] = (
    Target("bytes", _protocol(BytesSerializer()), RoundTrip.EXACT, (b"", b"\x00hello\xff")),
    Target(
        "bytes-max64",
        _protocol(BytesSerializer(), max_datagram_size=64),
        RoundTrip.EXACT,
        (b"x" * 64, b"short"),
    ),
    Target("str-utf8", _protocol(StringSerializer()), RoundTrip.EXACT, ("", "héllo, wörld ✓")),
    # Decoding strips a BOM and accepts either byte order; encoding writes a native-order BOM.
    Target("str-utf16", _protocol(StringSerializer("utf-16")), RoundTrip.STABLE, ("", "héllo ✓")),
    # A name that decodes need not encode again (label lengths, empty labels, nameprep).
    Target(
        "str-idna",
        _protocol(StringSerializer("idna")),
        RoundTrip.STABLE,
        ("example.org", "bücher.example", "xn--nxasmq6b.example"),
        reencode_errors=(UnicodeError,),
    ),
    # The standard library decodes the escape "\ud800" into a lone surrogate that UTF-8
    # cannot encode (documented on JSONSerializer).
    Target(
        "json-stdlib",
        _protocol(JSONSerializer(use_orjson=False)),
        RoundTrip.STABLE,
        (*_JSON_SEEDS, float("nan"), float("-inf")),
        reencode_errors=(UnicodeEncodeError,),
    ),
    Target(
        "json-orjson", _protocol(JSONSerializer(use_orjson=True)), RoundTrip.STABLE, _JSON_SEEDS
    ),
    Target("msgpack", _protocol(MessagePackSerializer()), RoundTrip.STABLE, _BINARY_SEEDS),
    Target("cbor", _protocol(CBORSerializer()), RoundTrip.STABLE, (*_BINARY_SEEDS, 2**100)),
    Target(
        "struct-IHd",
        _protocol(StructSerializer("!IHd")),
        RoundTrip.STABLE,
        ((1, 80, 0.5), (2**32 - 1, 65535, float("inf"))),
    ),
    # Not EXACT: "?" reads any non-zero byte as True, "e"/"f" NaN payloads are not kept.
    Target(
        "struct-mixed",
        _protocol(StructSerializer("<?bBhHiIqQefd")),
        RoundTrip.STABLE,
        ((True, -1, 255, -300, 60000, -(2**31), 2**32 - 1, -(2**63), 2**64 - 1, 1.5, 0.25, -3.0),),
    ),
    # Pad bytes are dropped on reading and written as zeros; "p" clips the length byte.
    Target(
        "struct-bytes",
        _protocol(StructSerializer("!4s5p2xc")),
        RoundTrip.STABLE,
        ((b"abcd", b"xyz", b"!"), (b"\x00" * 4, b"", b"\xff")),
    ),
    Target(
        "pickle",
        _protocol(PickleSerializer(key=PICKLE_KEY)),
        RoundTrip.STABLE,
        ({"id": 1, "values": (1, 2.5, None), "raw": b"\x00"}, ["a", "b"]),
    ),
    Target(
        "zlib-bytes",
        _protocol(ZlibSerializer(BytesSerializer())),
        RoundTrip.STABLE,
        (b"", b"a" * 1000, bytes(range(256))),
    ),
    Target(
        "zlib-bytes-max256",
        _protocol(ZlibSerializer(BytesSerializer(), max_size=256)),
        RoundTrip.STABLE,
        (b"b" * 256, b"tiny"),
    ),
    # No round trip: ZlibSerializer bounds what it inflates, not what it compresses, and a JSON
    # value may re-encode longer than it arrived ("1E5" -> "100000.0"), so a packet that
    # parsed can re-encode past max_size and be refused by the same protocol.
    Target(
        "zlib-json",
        _protocol(ZlibSerializer(JSONSerializer(use_orjson=False), max_size=4096)),
        RoundTrip.NONE,
        _JSON_SEEDS,
    ),
    Target(
        "base64-json",
        _protocol(Base64Serializer(JSONSerializer(use_orjson=False))),
        RoundTrip.STABLE,
        _JSON_SEEDS,
        reencode_errors=(UnicodeEncodeError,),
    ),
    Target(
        "base64url-msgpack",
        _protocol(Base64Serializer(MessagePackSerializer(), alphabet="urlsafe")),
        RoundTrip.STABLE,
        _BINARY_SEEDS,
    ),
    Target(
        "hmac-cbor",
        _protocol(HMACSerializer(CBORSerializer(), HMAC_KEY)),
        RoundTrip.STABLE,
        _BINARY_SEEDS,
    ),
    Target(
        "hmac-struct",
        _protocol(HMACSerializer(StructSerializer("!IHd"), HMAC_KEY, digestmod="sha1")),
        RoundTrip.STABLE,
        ((3, 443, -1.25),),
    ),
    Target(
        "base64-zlib-str",
        _protocol(Base64Serializer(ZlibSerializer(StringSerializer()))),
        RoundTrip.STABLE,
        ("", "compress me " * 20),
    ),
    Target(
        "hmac-zlib-orjson",
        _protocol(HMACSerializer(ZlibSerializer(JSONSerializer(use_orjson=True)), HMAC_KEY)),
        RoundTrip.NONE,  # the zlib-json reason above
        _JSON_SEEDS,
    ),
    Target("msgspec-json", _protocol(MsgspecSerializer()), RoundTrip.STABLE, _JSON_SEEDS),
    Target(
        "msgspec-msgpack",
        _protocol(MsgspecSerializer(format="msgpack")),
        RoundTrip.STABLE,
        _BINARY_SEEDS,
    ),
)


def is_plain(packet: object) -> bool:
    """Whether ``packet`` is a small tree of JSON-like values (plus bytes and tuples).

    The walk is iterative and bounded (:data:`MAX_PLAIN_DEPTH`, :data:`MAX_PLAIN_NODES`) and
    stops at the first container seen twice, so a cycle or a shared subtree (should a decoder
    ever build one) ends it at once. Subclasses of the accepted types are refused.
    """
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(packet, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_PLAIN_NODES or depth > MAX_PLAIN_DEPTH:
            return False
        kind = type(value)
        if kind in (type(None), bool, int, float, str, bytes):
            continue
        if kind is list or kind is tuple:
            children = list(cast("list[object] | tuple[object, ...]", value))
        elif kind is dict:
            mapping = cast("dict[object, object]", value)
            children = [*mapping.keys(), *mapping.values()]
        else:
            return False
        if id(value) in seen:
            return False
        seen.add(id(value))
        stack.extend((child, depth + 1) for child in children)
    return True


def _check_parse_error(
    exc: DatagramProtocolParseError, protocol: DatagramProtocol[Any, Any], datagram: bytes
) -> None:
    assert exc.data == datagram, "DatagramProtocolParseError.data is not the datagram"
    assert exc.address is None, "the protocol layer filled in an address"
    if len(datagram) > protocol.max_datagram_size:
        assert exc.__cause__ is None, "an oversize datagram reached the serializer"
    else:
        assert isinstance(exc.__cause__, DeserializeError), (
            f"parse error caused by {exc.__cause__!r}, not a DeserializeError"
        )


def _reparse_own(protocol: DatagramProtocol[Any, Any], datagram: bytes) -> Any:
    try:
        return protocol.build_packet_from_datagram(datagram)
    except DatagramProtocolParseError as exc:
        raise AssertionError(f"the protocol refused a datagram it made: {datagram!r}") from exc


def _check_round_trip(target: Target, datagram: bytes, packet: Any) -> None:
    protocol = target.protocol
    if target.round_trip is RoundTrip.EXACT:
        made = protocol.make_datagram(packet)
        assert made == datagram, f"{target.name}: re-encoded as {made!r}"
        return
    if target.round_trip is RoundTrip.NONE or not is_plain(packet):
        return
    refusals: tuple[type[Exception], ...] = (DatagramTooLargeError, *target.reencode_errors)
    try:
        first = protocol.make_datagram(packet)
    except refusals:
        return
    second = protocol.make_datagram(_reparse_own(protocol, first))
    assert second == first, f"{target.name}: re-encoding is not stable: {first!r} -> {second!r}"


def test_one_input(data: bytes) -> None:
    """Parse one fuzzer input; raise (crash) on anything but a well-formed parse error."""
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    datagram = data[1:]
    try:
        packet = target.protocol.build_packet_from_datagram(datagram)
    except DatagramProtocolParseError as exc:
        _check_parse_error(exc, target.protocol, datagram)
        return
    _check_round_trip(target, datagram, packet)


#: The modulus of CPython's numeric hash: ``hash(n) == n % HASH_MODULUS`` for ``n >= 0``.
HASH_MODULUS = 2**61 - 1

# The constants of CPython's tuple hash (an xxHash variant, Objects/tupleobject.c).
_XX_PRIME_1 = 11400714785074694791
_XX_PRIME_2 = 14029467366897019727
_XX_PRIME_5 = 2870177450012600261
_U64 = 2**64


def _rotate_left(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) % _U64


def colliding_pairs(count: int, *, target: int = 0x5EED) -> list[tuple[int, int]]:
    """``count`` pairs of integers below 2**61 whose tuples all hash to ``target``.

    The tuple hash is invertible in its last element: for each first element there is one
    hash value of the second that brings the tuple's hash to ``target``, and about a quarter
    of those are below 2**61, where an integer is its own hash.
    """
    # The last steps are acc = rotl(acc + lane * P2, 31) * P1, then acc += len ^ (P5 ^ c):
    # undo them from the target to find what acc + lane * P2 must be.
    want = (target - (2 ^ (_XX_PRIME_5 ^ 3527539))) % _U64
    want = want * pow(_XX_PRIME_1, -1, _U64) % _U64
    want = ((want >> 31) | (want << 33)) % _U64
    inverse_prime_2 = pow(_XX_PRIME_2, -1, _U64)
    pairs: list[tuple[int, int]] = []
    first = 0
    while len(pairs) < count:
        acc = _rotate_left((_XX_PRIME_5 + first * _XX_PRIME_2) % _U64, 31) * _XX_PRIME_1 % _U64
        second = (want - acc) * inverse_prime_2 % _U64
        if second < HASH_MODULUS:
            pairs.append((first, second))
        first += 1
    return pairs


def cbor_head(major: int, argument: int) -> bytes:
    """The initial bytes of a CBOR data item: major type and argument (RFC 8949, 3)."""
    if argument < 24:
        return bytes([major << 5 | argument])
    size = 1 if argument < 2**8 else 2 if argument < 2**16 else 4 if argument < 2**32 else 8
    additional = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major << 5 | additional]) + argument.to_bytes(size, "big")


def _cbor_bignum(value: int) -> bytes:
    content = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return cbor_head(6, 2) + cbor_head(2, len(content)) + content


def _msgpack_map_head(length: int) -> bytes:
    return b"\xdf" + length.to_bytes(4, "big")


def _fill(header: Callable[[int], bytes], items: Iterable[bytes], size: int) -> bytes:
    """``header(n)`` followed by as many of the ``items`` as fit in ``size`` bytes."""
    chosen: list[bytes] = []
    total = len(header(2**16))  # the longest header these sizes need
    for item in items:
        if total + len(item) > size:
            break
        chosen.append(item)
        total += len(item)
    return header(len(chosen)) + b"".join(chosen)


def hash_collision_datagrams(size: int) -> dict[str, tuple[str, bytes]]:
    """The hash-collision family: containers whose keys all have one hash value.

    Each entry is ``shape: (target name, datagram of at most size bytes)``. Decoded naively,
    every new key is compared with all those before it, so the cost grows with the square of
    their number: CBOR sets and maps of bignums ``k * HASH_MODULUS`` (all hash to 0) and CBOR
    maps keyed by pairs of small integers from :func:`colliding_pairs`; MessagePack maps of
    integer keys ``k * HASH_MODULUS`` below 2**64 (only eight collide) beside the same pairs
    as keys, also for MsgspecSerializer's MessagePack. The serializers refuse them all: keys
    and set members must be strings (MsgspecSerializer: scalars, not floats or containers).
    """
    count = size // 4
    bignums = [_cbor_bignum((k + 1) * HASH_MODULUS) for k in range(count)]
    pairs = colliding_pairs(size // 20 + 1)
    cbor_pairs = [cbor_head(4, 2) + cbor_head(0, a) + cbor_head(0, b) + b"\x00" for a, b in pairs]
    cbor_set = _fill(lambda n: cbor_head(6, 258) + cbor_head(4, n), bignums, size)
    cbor_map = _fill(lambda n: cbor_head(5, n), (item + b"\x00" for item in bignums), size)
    cbor_pair_map = _fill(lambda n: cbor_head(5, n), cbor_pairs, size)
    msgpack_ints = [b"\xcf" + (k * HASH_MODULUS).to_bytes(8, "big") + b"\xc0" for k in range(1, 9)]
    msgpack_pairs = [
        b"\x92\xcf" + a.to_bytes(8, "big") + b"\xcf" + b.to_bytes(8, "big") + b"\xc0"
        for a, b in pairs
    ]
    return {
        "cbor-bignum-set": ("cbor", cbor_set),
        "cbor-bignum-map": ("cbor", cbor_map),
        "cbor-pair-map": ("cbor", cbor_pair_map),
        "msgpack-int-map": ("msgpack", _fill(_msgpack_map_head, msgpack_ints, size)),
        "msgpack-pair-map": ("msgpack", _fill(_msgpack_map_head, msgpack_pairs, size)),
        "msgspec-msgpack-pair-map": (
            "msgspec-msgpack",
            _fill(_msgpack_map_head, msgpack_pairs, size),
        ),
    }


def deep_nesting_datagrams(size: int) -> dict[str, tuple[str, bytes]]:
    """Datagrams nested as deep as ``size`` bytes allow, for the targets that bound depth."""
    half = size // 2
    return {
        "msgspec-json-deep": ("msgspec-json", b"[" * half + b"]" * half),
        "msgspec-json-deep-open": ("msgspec-json", b"[" * size),
        "msgspec-msgpack-deep": ("msgspec-msgpack", b"\x91" * (size - 1) + b"\xc0"),
    }


def seed_inputs() -> dict[str, bytes]:
    """The seed corpus: each target's seed packets as fuzzer inputs, by file name.

    Besides the valid seeds (``NN-target-number``), the hash-collision family
    (:func:`hash_collision_datagrams`, named ``NN-target-collide-shape``) and the deep-nesting
    family (:func:`deep_nesting_datagrams`, ``NN-target-deep...``) as datagrams that
    fit the fuzzers' ``-max_len``, alone and behind the HMAC target that holds CBOR.
    """
    seeds: dict[str, bytes] = {}
    for index, target in enumerate(TARGETS):
        for number, packet in enumerate(target.seeds):
            datagram = target.protocol.make_datagram(packet)
            seeds[f"{index:02d}-{target.name}-{number}"] = bytes([index]) + datagram
    indexes = {target.name: index for index, target in enumerate(TARGETS)}
    shapes = {
        **hash_collision_datagrams(SEED_COLLISION_SIZE),
        **deep_nesting_datagrams(SEED_COLLISION_SIZE),
    }
    for shape, (name, datagram) in shapes.items():
        suffix = shape.removeprefix(name + "-")
        if not suffix.startswith("deep"):
            suffix = "collide-" + suffix
        file_name = f"{indexes[name]:02d}-{name}-{suffix}"
        seeds[file_name] = bytes([indexes[name]]) + datagram
    # Behind HMAC: what a peer holding the key could send. The tag takes 32 bytes.
    signer = HMACSerializer(BytesSerializer(), HMAC_KEY)
    hmac_index = indexes["hmac-cbor"]
    for shape, (name, datagram) in hash_collision_datagrams(SEED_COLLISION_SIZE - 32).items():
        if name == "cbor":
            signed = bytes([hmac_index]) + signer.serialize(datagram)
            seeds[f"{hmac_index:02d}-hmac-cbor-collide-{shape.removeprefix('cbor-')}"] = signed
    return seeds


#: The size of the hash-collision seeds: the fuzzers' ``-max_len`` (4096) less the byte
#: that picks the target.
SEED_COLLISION_SIZE = 4095


if __name__ == "__main__":
    # Imported by name: atheris ships no type information, and the type checkers run
    # where it is not installed.
    atheris: Any = importlib.import_module("atheris")

    # anydgram was imported above, before atheris was, so instrument the code already
    # loaded (anydgram and the pure-Python parts of its decoders) instead of import hooks.
    atheris.instrument_all()
    # libFuzzer runs argv[0] through the shell for -merge (and -fork, -jobs): make it a
    # command that starts this script with this interpreter.
    command = shlex.join([sys.executable, os.path.abspath(__file__)])
    atheris.Setup([command, *sys.argv[1:]], test_one_input)
    atheris.Fuzz()
