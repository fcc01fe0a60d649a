"""Worst-case decode cost: CPU milliseconds to deserialize the most expensive datagrams found.

For each serializer, a few hostile shapes of up to 65,502 bytes (the hash-collision family
of ``tests/fuzz/fuzz_serializers.py``, huge integers, long runs of tiny items, escapes,
punycode, zlib streams that inflate to ``max_size``), each decoded three times; the table
shows the best of the three in CPU time (``time.process_time``), so a busy machine barely
moves it, and whether the datagram was accepted or refused. The last rows compare the two
orders of ``ZlibSerializer`` and ``HMACSerializer`` on a datagram with a wrong tag.

Run from the repository root: ``python benchmarks/worst_case_decode.py``.
"""

from __future__ import annotations

import base64
import importlib
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from anydgram import serializers as s

# The hash-collision family is built by the serializers' fuzz harness, in tests/fuzz/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
hash_collision_datagrams: Callable[[int], dict[str, tuple[str, bytes]]] = importlib.import_module(
    "fuzz.fuzz_serializers"
).hash_collision_datagrams

#: The largest datagram measured: what fits in one UDP datagram over IPv4, less a little.
SIZE = 65502
#: Not a secret: the key of the HMAC rows of this benchmark only.
KEY = b"worst-case benchmark key"


def _json_array(item: bytes, size: int = SIZE) -> bytes:
    count = (size - 2 + 1) // (len(item) + 1)
    return b"[" + b",".join([item] * count) + b"]"


def _msgpack_array(item: bytes, size: int = SIZE) -> bytes:
    count = (size - 5) // len(item)
    return b"\xdd" + count.to_bytes(4, "big") + item * count


def cases() -> Iterator[tuple[str, str, Any, bytes]]:
    """Every row: serializer label, input shape, serializer, datagram."""
    collisions = hash_collision_datagrams(SIZE)
    big_int = b"9" * 4300  # sys.get_int_max_str_digits() by default
    for label, use_orjson in (("JSON (stdlib)", False), ("JSON (orjson)", True)):
        json_serializer = s.JSONSerializer(use_orjson=use_orjson)
        yield label, "array of 4,300-digit integers", json_serializer, _json_array(big_int)
        yield label, "array of 0", json_serializer, _json_array(b"0")
        yield label, "array of {}", json_serializer, _json_array(b"{}")
        escapes = b'"' + b"\\u00e9" * ((SIZE - 2) // 6) + b'"'
        yield label, "string of \\u escapes", json_serializer, escapes
        duplicates = b"{" + b",".join([b'"a":0'] * ((SIZE - 2) // 6)) + b"}"
        yield label, "one key repeated", json_serializer, duplicates
        yield label, "nesting [[[[...", json_serializer, b"[" * SIZE
    msgpack = s.MessagePackSerializer()
    for shape in ("msgpack-int-map", "msgpack-pair-map"):
        yield "MessagePack", shape.removeprefix("msgpack-"), msgpack, collisions[shape][1]
    yield "MessagePack", "array of nil", msgpack, _msgpack_array(b"\xc0")
    yield "MessagePack", "array of {}", msgpack, _msgpack_array(b"\x80")
    yield "MessagePack", "array of 64-bit ints", msgpack, _msgpack_array(b"\xcf" + b"\xff" * 8)
    yield "MessagePack", "nesting", msgpack, b"\x91" * SIZE
    yield "MessagePack", "object then junk", msgpack, _msgpack_array(b"\x80", SIZE - 1) + b"\xc1"
    cbor = s.CBORSerializer()
    for shape in ("cbor-bignum-set", "cbor-bignum-map", "cbor-pair-map"):
        yield "CBOR", shape.removeprefix("cbor-"), cbor, collisions[shape][1]
    nil_array = b"\x9a" + (SIZE - 5).to_bytes(4, "big") + b"\xf6" * (SIZE - 5)
    yield "CBOR", "array of null", cbor, nil_array
    yield "CBOR", "nesting", cbor, b"\x81" * SIZE
    text = ("é" * (SIZE // 2)).encode()
    yield "String (utf-8)", "two-byte characters", s.StringSerializer(), text
    yield "String (utf-16)", "characters", s.StringSerializer("utf-16"), "é".encode("utf-16") * 3
    idna = s.StringSerializer("idna")
    yield "String (idna)", "one punycode label", idna, b"xn--" + b"a" * (SIZE - 4)
    yield "String (idna)", "punycode labels", idna, (b"xn--" + b"a" * 58 + b".") * (SIZE // 63)
    punycode = s.StringSerializer("punycode")
    yield "String (punycode)", "letters", punycode, b"a" * SIZE
    yield "Struct (!IHd)", "wrong length", s.StructSerializer("!IHd"), bytes(SIZE)
    yield (
        "Base64(JSON)",
        "array of 0",
        s.Base64Serializer(s.JSONSerializer()),
        base64.b64encode(_json_array(b"0", SIZE * 3 // 4)),
    )
    hmac_json = s.HMACSerializer(s.JSONSerializer(), KEY)
    yield "HMAC(JSON)", "wrong tag", hmac_json, bytes(SIZE)
    yield "HMAC(JSON)", "array of 0", hmac_json, hmac_json.serialize([0] * (SIZE // 2 - 32))
    one_mib = _json_array(b"0", 1 << 20)
    inflating = zlib.compress(one_mib, 9)
    yield "Zlib(Bytes)", "inflates to 1 MiB", s.ZlibSerializer(s.BytesSerializer()), inflating
    yield "Zlib(JSON)", "inflates to 1 MiB", s.ZlibSerializer(s.JSONSerializer()), inflating
    # The two wrapper orders, both given a datagram with a wrong tag.
    zlib_outside = s.ZlibSerializer(s.HMACSerializer(s.JSONSerializer(), KEY))
    forged = zlib.compress(bytes(32) + one_mib[: (1 << 20) - 32], 9)
    yield "Zlib(HMAC(JSON))", "wrong tag, inflates to 1 MiB", zlib_outside, forged
    hmac_outside = s.HMACSerializer(s.ZlibSerializer(s.JSONSerializer()), KEY)
    yield "HMAC(Zlib(JSON))", "wrong tag", hmac_outside, bytes(32) + inflating[: len(forged) - 32]


def cpu_ms(decode: Callable[[bytes], Any], data: bytes, repeats: int = 3) -> tuple[float, str]:
    """The best CPU time of ``repeats`` decodes, in ms, and the outcome of the last."""
    best = float("inf")
    outcome = ""
    for _ in range(repeats):
        started = time.process_time()
        try:
            decode(data)
            outcome = "accepted"
        except s.DeserializeError as exc:
            outcome = f"refused ({len(str(exc))}-char message)"
        best = min(best, time.process_time() - started)
    return best * 1000, outcome


def main() -> None:
    print("| serializer | input | bytes | CPU ms | outcome |")
    print("| --- | --- | ---: | ---: | --- |")
    for label, shape, serializer, data in cases():
        ms, outcome = cpu_ms(serializer.deserialize, data)
        print(f"| {label} | {shape} | {len(data):,} | {ms:.3f} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
