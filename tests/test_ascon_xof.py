"""Ascon-Hash256, Ascon-XOF128 and Ascon-CXOF128 (pqlink.ascon) against every NIST vector.

Both the code path chosen at import and the portable build are checked, as for the AEAD."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqlink import _ascon
from pqlink.ascon import CXOF_MAX_CUSTOMIZATION, HASH256_SIZE, cxof128, hash256, xof128
from tests.test_ascon import _build_portable

DATA = Path(__file__).parent / "data"
XOF_KAT = DATA / "LWC_XOF_KAT_128_512.txt"
CXOF_KAT = DATA / "LWC_CXOF_KAT_128_512.txt"
HASH_KAT = DATA / "LWC_HASH_KAT_128_256.txt"


@dataclass(frozen=True)
class Vector:
    count: int
    msg: bytes
    customization: bytes
    digest: bytes


@cache
def vectors(path: Path) -> tuple[Vector, ...]:
    out = []
    for block in path.read_text(encoding="ascii").strip().split("\n\n"):
        fields = {}
        for line in block.strip().splitlines():
            name, _, value = line.partition("=")
            fields[name.strip()] = value.strip()
        out.append(
            Vector(
                count=int(fields["Count"]),
                msg=bytes.fromhex(fields["Msg"]),
                customization=bytes.fromhex(fields.get("Z", "")),
                digest=bytes.fromhex(fields["MD"]),
            )
        )
    return tuple(out)


@pytest.mark.parametrize(("path", "count"), [(XOF_KAT, 1025), (CXOF_KAT, 1089), (HASH_KAT, 1025)])
def test_kat_files_are_complete(path: Path, count: int) -> None:
    got = vectors(path)
    assert [v.count for v in got] == list(range(1, count + 1))
    assert {len(v.digest) for v in got} == ({32} if path is HASH_KAT else {64})


def test_every_xof_vector() -> None:
    for v in vectors(XOF_KAT):
        got = xof128(v.msg, len(v.digest))
        assert got == v.digest, f"Count = {v.count}: {got.hex()} != {v.digest.hex()}"


def test_every_cxof_vector() -> None:
    customizations = {len(v.customization) for v in vectors(CXOF_KAT)}
    assert customizations == set(range(33))  # the file covers every length 0..32
    for v in vectors(CXOF_KAT):
        got = cxof128(v.msg, v.customization, len(v.digest))
        assert got == v.digest, f"Count = {v.count}: {got.hex()} != {v.digest.hex()}"


def test_every_hash_vector() -> None:
    for v in vectors(HASH_KAT):
        got = hash256(v.msg)
        assert len(got) == HASH256_SIZE
        assert got == v.digest, f"Count = {v.count}: {got.hex()} != {v.digest.hex()}"


def test_portable_build_reproduces_every_vector(tmp_path: Path) -> None:
    portable = _build_portable(tmp_path)
    assert portable.IMPLEMENTATION == "portable"
    for v in vectors(XOF_KAT):
        assert portable.xof128(v.msg, 64) == v.digest, f"XOF Count = {v.count}"
    for v in vectors(CXOF_KAT):
        assert portable.cxof128(v.msg, v.customization, 64) == v.digest, f"CXOF Count = {v.count}"
    for v in vectors(HASH_KAT):
        assert portable.hash256(v.msg) == v.digest, f"Hash Count = {v.count}"
    # longer inputs and outputs than the vectors have, across the GIL threshold
    for size in (0, 1, 7, 8, 9, 4095, 4096, 70_001):
        msg, z = os.urandom(size % 1000), os.urandom(size % 257)
        assert portable.xof128(msg, size) == xof128(msg, size)
        assert portable.cxof128(msg, z[:256], size) == cxof128(msg, z[:256], size)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4096, 100_003])
def test_output_is_a_prefix_of_longer_output(length: int) -> None:
    # The sponge squeezes one stream: shorter requests are prefixes of longer ones.
    msg = b"prefix property"
    longest = xof128(msg, 100_003 + 8)
    assert xof128(msg, length) == longest[:length]
    longest_c = cxof128(msg, b"mask", 100_003 + 8)
    assert cxof128(msg, b"mask", length) == longest_c[:length]


def test_customization_separates_outputs() -> None:
    assert cxof128(b"seed", b"", 32) != xof128(b"seed", 32)
    assert cxof128(b"seed", b"a", 32) != cxof128(b"seed", b"b", 32)
    # the length word keeps (Z="ab", M="") apart from (Z="a", M="b")
    assert cxof128(b"", b"ab", 32) != cxof128(b"b", b"a", 32)


def test_customization_limit_exact_and_one_over() -> None:
    assert CXOF_MAX_CUSTOMIZATION == 256
    assert len(cxof128(b"m", bytes(256), 16)) == 16
    with pytest.raises(ValueError, match=r"^customization must be at most 256 bytes, got 257$"):
        cxof128(b"m", bytes(257), 16)


def test_negative_length_is_refused() -> None:
    assert xof128(b"m", 0) == b""
    with pytest.raises(ValueError, match=r"^length must be at least 0, got -1$"):
        xof128(b"m", -1)
    with pytest.raises(ValueError, match=r"^length must be at least 0, got -1$"):
        cxof128(b"m", b"", -1)


def test_argument_errors() -> None:
    with pytest.raises(TypeError):
        xof128("text", 16)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cxof128(b"m", "z", 16)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        xof128(b"m", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exactly 3 positional arguments"):
        cxof128(b"m", 16)  # type: ignore[call-arg, arg-type]
    with pytest.raises(TypeError, match="exactly 1 positional argument"):
        hash256()  # type: ignore[call-arg]


def test_accepts_bytearray_and_memoryview() -> None:
    msg, z = b"x" * 40, b"custom"
    want = cxof128(msg, z, 50)
    assert cxof128(bytearray(msg), memoryview(z), 50) == want
    assert cxof128(memoryview(b"__" + msg)[2:], bytearray(z), 50) == want
    assert xof128(bytearray(msg), 50) == xof128(msg, 50)
    assert hash256(memoryview(msg)) == hash256(msg)


def test_large_outputs_in_parallel_threads_agree() -> None:
    seeds = [os.urandom(32) for _ in range(2)]
    want = [cxof128(seed, b"mask", 1 << 20) for seed in seeds]
    got: list[list[bytes]] = [[] for _ in seeds]
    start = threading.Barrier(len(seeds))

    def work(index: int) -> None:
        start.wait()
        for _ in range(2):
            got[index].append(cxof128(seeds[index], b"mask", 1 << 20))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seeds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [[w, w] for w in want]


def test_gil_is_released_on_large_outputs() -> None:
    # While one thread squeezes 32 MiB, another must keep running Python code.
    ticks = 0
    done = threading.Event()

    def squeeze() -> None:
        cxof128(b"seed", b"mask", 32 << 20)
        done.set()

    thread = threading.Thread(target=squeeze)
    thread.start()
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        ticks += 1
    thread.join()
    assert done.is_set()
    assert ticks > 1000


def test_mask_sized_expansion_is_fast() -> None:
    # A 1,106-coordinate mask of 32-bit words, the model the gateways train, is 4,424 bytes.
    seed = os.urandom(32)
    cxof128(seed, b"mask", 4 * 1106)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(50):
            cxof128(seed, b"mask", 4 * 1106)
        best = min(best, (time.perf_counter() - t0) / 50)
    assert best < 1e-3, f"{best * 1e6:.0f} us per 1,106-word mask"


keys = st.binary(max_size=200)


@given(msg=keys, z=st.binary(max_size=256), length=st.integers(min_value=0, max_value=300))
def test_cxof_property(msg: bytes, z: bytes, length: int) -> None:
    out = cxof128(msg, z, length)
    assert len(out) == length
    assert out == cxof128(msg, z, length + 5)[:length]
    assert _ascon.cxof128(msg, z, length) == out
