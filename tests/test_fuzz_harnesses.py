"""The fuzz harnesses in ``tests/fuzz/`` as ordinary tests, without atheris.

Every corpus file and a few hundred generated inputs go through each harness's
``test_one_input``, so CI runs the harness code (and replays any input ever added to the
corpus) on every change; ``nox -s fuzz`` runs the same functions under atheris.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anydgram import DatagramProtocol, DatagramProtocolParseError
from anydgram.serializers import BytesSerializer, DeserializeError
from fuzz import fuzz_serializers, fuzz_server_path, make_corpus

CORPUS = Path(__file__).parent / "fuzz" / "corpus"

HARNESSES: dict[str, Callable[[bytes], None]] = {
    "serializers": fuzz_serializers.test_one_input,
    "server_path": fuzz_server_path.test_one_input,
}

SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "serializers": fuzz_serializers.seed_inputs,
    "server_path": fuzz_server_path.seed_inputs,
}

needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the server-path harness binds abstract Unix socket names (Linux only)",
)

FUZZ = settings(max_examples=300, deadline=None, database=None)


def _harness_params() -> list[Any]:
    return [
        pytest.param(name, marks=needs_linux) if name == "server_path" else name
        for name in HARNESSES
    ]


@pytest.mark.parametrize("name", _harness_params())
def test_corpus_replays(name: str) -> None:
    files = sorted((CORPUS / name).iterdir())
    assert files, f"no corpus for {name}: run tests/fuzz/make_corpus.py"
    for path in files:
        try:
            HARNESSES[name](path.read_bytes())
        except BaseException as exc:
            exc.add_note(f"corpus file: {path}")
            raise


@pytest.mark.parametrize("name", _harness_params())
def test_every_seed_is_in_the_corpus(name: str) -> None:
    # Contents are not compared: zlib, pickle or CBOR output may differ between versions.
    missing = set(SEEDS[name]()) - {path.name for path in (CORPUS / name).iterdir()}
    assert not missing, f"run tests/fuzz/make_corpus.py; missing: {sorted(missing)}"


def test_every_serializer_seed_parses() -> None:
    for name, data in fuzz_serializers.seed_inputs().items():
        target = fuzz_serializers.TARGETS[data[0]]
        assert name.startswith(f"{data[0]:02d}-{target.name}-")
        if "-collide-" in name or "-deep" in name:
            continue
        target.protocol.build_packet_from_datagram(data[1:])  # raises if the seed is invalid


def test_hash_collision_seeds_are_refused() -> None:
    seeds = {
        name: data for name, data in fuzz_serializers.seed_inputs().items() if "-collide-" in name
    }
    assert len(seeds) == 9
    for name, data in seeds.items():
        assert len(data) <= 4096, name  # the fuzzers' -max_len
        target = fuzz_serializers.TARGETS[data[0]]
        with pytest.raises(
            DatagramProtocolParseError, match=r"must be a|not allowed for map key|map keys must be"
        ):
            target.protocol.build_packet_from_datagram(data[1:])


def test_deep_nesting_seeds_are_refused() -> None:
    seeds = {name: data for name, data in fuzz_serializers.seed_inputs().items() if "-deep" in name}
    assert len(seeds) == 3
    for name, data in seeds.items():
        assert len(data) <= 4096, name
        target = fuzz_serializers.TARGETS[data[0]]
        with pytest.raises(DatagramProtocolParseError, match=r"nested deeper|do not match"):
            target.protocol.build_packet_from_datagram(data[1:])


def test_colliding_pairs_collide() -> None:
    pairs = fuzz_serializers.colliding_pairs(50)
    assert len(set(pairs)) == 50
    assert len({hash(pair) for pair in pairs}) == 1
    assert all(0 <= number < fuzz_serializers.HASH_MODULUS for pair in pairs for number in pair)


def test_make_corpus_writes_every_seed(tmp_path: Path) -> None:
    counts = make_corpus.write_corpus(tmp_path)
    for name, seed_inputs in SEEDS.items():
        seeds = seed_inputs()
        assert counts[name] == len(seeds)
        for file_name, data in seeds.items():
            assert (tmp_path / name / file_name).read_bytes() == data


@FUZZ
@given(
    index=st.integers(0, len(fuzz_serializers.TARGETS) - 1),
    datagram=st.binary(max_size=4096),
)
def test_serializers_harness_random(index: int, datagram: bytes) -> None:
    fuzz_serializers.test_one_input(bytes([index]) + datagram)


@FUZZ
@given(index=st.integers(0, len(fuzz_serializers.TARGETS) - 1), data=st.data())
def test_serializers_harness_mutated_seed(index: int, data: st.DataObject) -> None:
    target = fuzz_serializers.TARGETS[index]
    seed = target.protocol.make_datagram(data.draw(st.sampled_from(target.seeds)))
    position = data.draw(st.integers(0, len(seed)))
    insert = data.draw(st.binary(max_size=8))
    cut = data.draw(st.integers(0, 8))
    fuzz_serializers.test_one_input(
        bytes([index]) + seed[:position] + insert + seed[position + cut :]
    )


@needs_linux
@FUZZ
@given(data=st.binary(min_size=2, max_size=2048))
def test_server_path_harness_random(data: bytes) -> None:
    fuzz_server_path.test_one_input(data)


@needs_linux
@FUZZ
@given(
    protocol=st.integers(0, len(fuzz_server_path.PROTOCOLS) - 1),
    mode=st.sampled_from(fuzz_server_path.MODES),
    room=st.integers(0, 7),
    datagrams=st.lists(st.binary(max_size=254), max_size=20),
)
def test_server_path_harness_structured(
    protocol: int, mode: str, room: int, datagrams: list[bytes]
) -> None:
    data = fuzz_server_path.join_input(protocol, mode, datagrams, room=room)
    assert fuzz_server_path.split_input(data)[1:] == (mode, room, datagrams)
    fuzz_server_path.test_one_input(data)


# The harnesses must fail loudly: a serializer that breaks its contract is a crash.


class _LeakySerializer(BytesSerializer):
    def deserialize(self, data: bytes) -> bytes:
        if data.startswith(b"!"):
            raise KeyError("not a DeserializeError")
        if data.startswith(b"?"):
            raise DeserializeError("fine")
        return data + b"?"  # does not round-trip


def _leaky_target(round_trip: fuzz_serializers.RoundTrip) -> fuzz_serializers.Target:
    return fuzz_serializers.Target(
        "leaky", DatagramProtocol(_LeakySerializer()), round_trip, seeds=()
    )


def test_serializers_harness_crashes_on_broken_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        fuzz_serializers, "TARGETS", (_leaky_target(fuzz_serializers.RoundTrip.EXACT),)
    )
    fuzz_serializers.test_one_input(b"\x00?")
    with pytest.raises(KeyError):
        fuzz_serializers.test_one_input(b"\x00!")
    with pytest.raises(AssertionError, match="re-encoded"):
        fuzz_serializers.test_one_input(b"\x00a")
    monkeypatch.setattr(
        fuzz_serializers, "TARGETS", (_leaky_target(fuzz_serializers.RoundTrip.STABLE),)
    )
    with pytest.raises(AssertionError, match="not stable"):
        fuzz_serializers.test_one_input(b"\x00a")


def test_is_plain() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    shared = [1]
    deep: list[object] = []
    for _ in range(fuzz_serializers.MAX_PLAIN_DEPTH + 1):
        deep = [deep]
    assert fuzz_serializers.is_plain({"a": [1, 2.5, None, True, b"x", ("t",)]})
    assert not fuzz_serializers.is_plain(cyclic)
    assert not fuzz_serializers.is_plain([shared, shared])
    assert not fuzz_serializers.is_plain(deep)
    assert not fuzz_serializers.is_plain([{1, 2}])
    assert not fuzz_serializers.is_plain(list(range(fuzz_serializers.MAX_PLAIN_NODES)))
