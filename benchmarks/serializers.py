"""Serializer micro-benchmarks: encode and decode nanoseconds per packet, per serializer.

Every serializer of ``anydgram.serializers`` (JSON on both paths, stdlib and orjson; the
optional MessagePack and CBOR ones when their package is installed; ``PickleSerializer`` with
its key; the zlib, base64 and HMAC wrappers around JSON) turns a packet of about 100 bytes and
one of about 1 KB into a datagram (``serialize``) and back (``deserialize``). Each timing calls
the method in a loop sized for ``--target-ms``, timeit-style (garbage collection off); the
cases are interleaved over ``--repeats`` repeats (A B C ... A B C ...) and reported as the
median with the min-max range, pinned to one CPU.

``--raw-loop-us`` gives the server CPU microseconds the raw blocking echo loop spends per
datagram (``server_echo.py``, same run): the table then shows what one encode plus one decode
costs next to that, the budget the performance contract measures servers against.

Run from the repository root: ``python benchmarks/serializers.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from _common import CLIENT_CPU, Summary, environment, markdown_table, pin_to_cpu, write_json

#: The two packet sizes, as the bytes of their datagram (JSON for the object packets).
SIZES = ("100 B", "1 KB")


def _object_packet(items: int) -> dict[str, Any]:
    """A JSON-shaped request: a few header fields and ``items`` small records."""
    return {
        "id": 12345,
        "method": "telemetry.report",
        "ok": True,
        "items": [
            {"seq": i, "name": f"sensor-{i:03d}", "value": i * 0.25, "flags": [i % 2 == 0, None]}
            for i in range(items)
        ],
    }


#: Object packets whose JSON encoding is about 100 B and about 1 KB.
OBJECT_PACKETS = {"100 B": _object_packet(1), "1 KB": _object_packet(14)}
#: Struct formats of 100 and 1000 bytes: unsigned 64-bit integers in network order.
STRUCT_FORMATS = {"100 B": "!12QI", "1 KB": "!125Q"}
#: Datagram bytes for the bytes and text serializers.
BLOB_SIZES = {"100 B": 100, "1 KB": 1000}
#: Not a secret: the key of the signing serializers in this benchmark only.
BENCH_KEY = b"benchmark key, not a secret"


@dataclass(frozen=True)
class Case:
    """One serializer with the packet it encodes at each size."""

    label: str
    make: Callable[[], Any]
    packets: dict[str, Any]


def build_cases() -> tuple[list[Case], list[str]]:
    """Every serializer to measure, and notes on those that cannot run here."""
    from anydgram import serializers as s

    pattern = bytes(range(256)) * 4
    blobs = {size: pattern[:n] for size, n in BLOB_SIZES.items()}
    texts = {size: ("datagram " * n)[:n] for size, n in BLOB_SIZES.items()}
    objects = OBJECT_PACKETS
    cases = [
        Case("BytesSerializer", s.BytesSerializer, blobs),
        Case("StringSerializer (utf-8)", s.StringSerializer, texts),
        Case("JSONSerializer (stdlib json)", partial(s.JSONSerializer, use_orjson=False), objects),
        Case("JSONSerializer (orjson)", partial(s.JSONSerializer, use_orjson=True), objects),
        Case("MessagePackSerializer", s.MessagePackSerializer, objects),
        Case("CBORSerializer", s.CBORSerializer, objects),
        Case("PickleSerializer (HMAC key)", partial(s.PickleSerializer, key=BENCH_KEY), objects),
        Case(
            "ZlibSerializer(JSONSerializer)", lambda: s.ZlibSerializer(s.JSONSerializer()), objects
        ),
        Case(
            "Base64Serializer(JSONSerializer)",
            lambda: s.Base64Serializer(s.JSONSerializer()),
            objects,
        ),
        Case(
            "HMACSerializer(JSONSerializer)",
            lambda: s.HMACSerializer(s.JSONSerializer(), BENCH_KEY),
            objects,
        ),
    ]
    cases.extend(_msgspec_cases(objects))
    # A struct format fixes the datagram's size, so each size has its own format.
    for size, fmt in STRUCT_FORMATS.items():
        values = tuple(range(1, len(struct.unpack(fmt, bytes(struct.calcsize(fmt)))) + 1))
        cases.append(
            Case(f"StructSerializer({fmt!r})", partial(s.StructSerializer, fmt), {size: values})
        )
    runnable, notes = [], []
    for case in cases:
        try:
            case.make()
        except ImportError as exc:  # an optional extra (orjson, msgpack, cbor2) is missing
            notes.append(f"{case.label} ({exc}).")
        else:
            runnable.append(case)
    return runnable, notes


def _msgspec_cases(objects: dict[str, Any]) -> list[Case]:
    """MsgspecSerializer untyped (the same dicts) and typed (Structs of the same shape)."""
    from anydgram.serializers import MsgspecSerializer

    try:
        import msgspec
    except ImportError:  # reported as a note when the untyped case cannot be made
        typed: dict[str, Any] = {}
        report: Any = None
    else:
        # defstruct: local classes' string annotations would not resolve.
        item = msgspec.defstruct(
            "Item", [("seq", int), ("name", str), ("value", float), ("flags", list[bool | None])]
        )
        report = msgspec.defstruct(
            "Report", [("id", int), ("method", str), ("ok", bool), ("items", list[item])]
        )
        typed = {size: msgspec.convert(packet, report) for size, packet in objects.items()}
    cases = []
    for fmt in ("json", "msgpack"):
        cases.append(
            Case(
                f"MsgspecSerializer({fmt}, untyped)",
                partial(MsgspecSerializer, format=fmt),
                objects,
            )
        )
        if report is not None:
            cases.append(
                Case(
                    f"MsgspecSerializer({fmt}, Struct)",
                    partial(MsgspecSerializer, report, format=fmt),
                    typed,
                )
            )
    return cases


# -- timing ------------------------------------------------------------------------------------


def calibrate(call: Callable[[Any], Any], arg: Any, target_s: float) -> int:
    """Calls per timing so that one timing lasts about ``target_s`` seconds."""
    number = 1
    while True:
        elapsed = time_calls(call, arg, number)
        if elapsed >= target_s / 10 or number >= 1 << 24:
            return max(1, int(number * target_s / max(elapsed, 1e-9)))
        number *= 10


def time_calls(call: Callable[[Any], Any], arg: Any, number: int) -> float:
    """Seconds ``number`` calls of ``call(arg)`` take, garbage collection off (as timeit)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            call(arg)
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: packets are dicts
class Timing:
    """One serializer, one packet size, one direction."""

    label: str
    size: str
    op: str
    call: Callable[[Any], Any]
    arg: Any
    datagram_bytes: int


def timings(cases: Sequence[Case]) -> list[Timing]:
    out = []
    for case in cases:
        serializer = case.make()
        for size, packet in case.packets.items():
            data = serializer.serialize(packet)
            # A round trip must give the packet back, or the timing measures a failure path.
            decoded = serializer.deserialize(data)
            if decoded != packet and not (isinstance(packet, tuple) and tuple(decoded) == packet):
                raise RuntimeError(f"{case.label} does not round-trip its {size} packet")
            out.append(Timing(case.label, size, "encode", serializer.serialize, packet, len(data)))
            out.append(Timing(case.label, size, "decode", serializer.deserialize, data, len(data)))
    return out


def _identity(packet: Any) -> Any:
    return packet


#: The loop and the call alone, timed beside the serializers: every figure includes it.
OVERHEAD = Timing("(loop and call overhead)", "", "call", _identity, b"", 0)


def measure(items: Sequence[Timing], repeats: int, target_s: float) -> dict[Timing, list[float]]:
    """Nanoseconds per call of each timing, once per repeat, interleaved across timings."""
    numbers = {item: calibrate(item.call, item.arg, target_s) for item in items}
    results: dict[Timing, list[float]] = {item: [] for item in items}
    for repeat in range(repeats):
        print(f"[repeat {repeat + 1}/{repeats}] {len(items)} timings", file=sys.stderr, flush=True)
        for item in items:
            number = numbers[item]
            results[item].append(time_calls(item.call, item.arg, number) / number * 1e9)
    return results


# -- the report ----------------------------------------------------------------------------------


def rows(results: dict[Timing, list[float]]) -> list[dict[str, Any]]:
    """One row per serializer and size, encode and decode side by side."""
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for item, values in results.items():
        if item is OVERHEAD:
            continue
        row = by_key.setdefault(
            (item.label, item.size),
            {"serializer": item.label, "size": item.size, "datagram_bytes": item.datagram_bytes},
        )
        row[f"{item.op}_ns"] = values
    for row in by_key.values():
        row["round_trip_ns"] = [
            e + d for e, d in zip(row["encode_ns"], row["decode_ns"], strict=True)
        ]
    # Grouped by size, each group in the order of the cases (dicts keep insertion order).
    return sorted(by_key.values(), key=lambda row: SIZES.index(row["size"]))


def render(
    table: Sequence[dict[str, Any]],
    *,
    overhead_ns: Sequence[float],
    repeats: int,
    target_ms: float,
    notes: Sequence[str],
    raw_loop_us: float | None,
) -> str:
    headers = ["serializer", "packet", "datagram B", "encode ns", "decode ns", "encode + decode ns"]
    if raw_loop_us:
        headers.append("x raw loop CPU/dgram")
    lines = []
    for row in table:
        both = Summary.of(row["round_trip_ns"])
        line = [
            row["serializer"],
            row["size"],
            str(row["datagram_bytes"]),
            Summary.of(row["encode_ns"]).format(".0f"),
            Summary.of(row["decode_ns"]).format(".0f"),
            both.format(".0f"),
        ]
        if raw_loop_us:
            line.append(f"{both.median / (raw_loop_us * 1000):.2f}x")
        lines.append(line)
    out = [
        "### Serializers",
        "",
        f"Nanoseconds per `serialize` (encode) and `deserialize` (decode) call, {repeats} "
        f"interleaved repeats of about {target_ms:g} ms each; median (min-max), one process "
        f"pinned to CPU {CLIENT_CPU}. Object packets are a JSON-shaped dict whose JSON is about "
        "100 B or 1 KB; the wrappers wrap the default `JSONSerializer()` (orjson when "
        "installed). Every figure includes the loop and the call, "
        f"{Summary.of(overhead_ns).median:.0f} ns here (an identity function timed alike).",
    ]
    if raw_loop_us:
        out[-1] += (
            f" The last column sets encode + decode against the {raw_loop_us:.2f} us of server "
            "CPU the raw blocking echo loop spent per datagram in the same run (64 B, window 64)."
        )
    out += [f"\nSkipped: {note}" for note in notes]
    out += ["", markdown_table(headers, lines)]
    return "\n".join(out)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of 2 ms (a few seconds)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 7, quick 3)")
    parser.add_argument("--target-ms", type=float, help="ms per timing (default 20, quick 2)")
    parser.add_argument("--raw-loop-us", type=float, help="the raw loop's server CPU/datagram")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    target_ms = args.target_ms or (2.0 if args.quick else 20.0)
    if repeats < 1 or not 0 < target_ms <= 1000 or math.isnan(target_ms):
        parser.error("--repeats must be at least 1 and --target-ms in (0, 1000]")
    pinned = pin_to_cpu(CLIENT_CPU)
    env = environment()
    cases, notes = build_cases()
    for note in notes:
        print(f"skipped: {note}", file=sys.stderr)
    results = measure([OVERHEAD, *timings(cases)], repeats, target_ms / 1000)
    table = rows(results)
    report = render(
        table,
        overhead_ns=results[OVERHEAD],
        repeats=repeats,
        target_ms=target_ms,
        notes=notes,
        raw_loop_us=args.raw_loop_us,
    )
    print(report)
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "serializers",
                "plan": {"repeats": repeats, "target_ms": target_ms, "pinned": pinned},
                "environment": env,
                "skipped": notes,
                "raw_loop_us": args.raw_loop_us,
                "overhead_ns": results[OVERHEAD],
                "rows": table,
            },
        )


if __name__ == "__main__":
    main(sys.argv[1:])
