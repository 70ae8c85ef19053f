"""Ascon-AEAD128 (pqlink.ascon) against the NIST known-answer vectors, and its failure modes.

A modified, truncated or mis-keyed ciphertext must raise AuthenticationError and yield nothing."""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext

import pqlink
from pqlink import _ascon
from pqlink._errors import AuthenticationError
from pqlink.ascon import KEY_SIZE, NONCE_SIZE, TAG_SIZE, decrypt, encrypt

KAT_PATH = Path(__file__).parent / "data" / "LWC_AEAD_KAT_128_128.txt"
KAT_COUNT = 1089

KEY = bytes(range(16))
NONCE = bytes(range(16, 32))


@dataclass(frozen=True)
class Vector:
    count: int
    key: bytes
    nonce: bytes
    pt: bytes
    ad: bytes
    ct: bytes


@cache
def kat_vectors() -> tuple[Vector, ...]:
    vectors = []
    for block in KAT_PATH.read_text(encoding="ascii").strip().split("\n\n"):
        fields = {}
        for line in block.strip().splitlines():
            name, _, value = line.partition("=")
            fields[name.strip()] = value.strip()
        vectors.append(
            Vector(
                count=int(fields["Count"]),
                key=bytes.fromhex(fields["Key"]),
                nonce=bytes.fromhex(fields["Nonce"]),
                pt=bytes.fromhex(fields["PT"]),
                ad=bytes.fromhex(fields["AD"]),
                ct=bytes.fromhex(fields["CT"]),
            )
        )
    return tuple(vectors)


def kat(pt_len: int, ad_len: int) -> Vector:
    """The vector with these lengths; the file runs AD length 0..32 within PT length 0..32."""
    vector = kat_vectors()[33 * pt_len + ad_len]
    assert (len(vector.pt), len(vector.ad)) == (pt_len, ad_len)
    return vector


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# (PT, AD) lengths: empty, partial words, exact blocks, a block plus a byte, the longest.
TAMPER_LENGTHS = [(0, 0), (7, 9), (16, 16), (17, 0), (32, 32)]


def test_constants() -> None:
    assert (KEY_SIZE, NONCE_SIZE, TAG_SIZE) == (16, 16, 16)
    assert _ascon.IMPLEMENTATION in {"portable", "x86-64 BMI2"}


def test_kat_file_is_complete() -> None:
    vectors = kat_vectors()
    assert len(vectors) == KAT_COUNT
    assert [v.count for v in vectors] == list(range(1, KAT_COUNT + 1))


def test_known_answers_encrypt() -> None:
    for v in kat_vectors():
        got = encrypt(v.key, v.nonce, v.ad, v.pt)
        assert got == v.ct, f"Count = {v.count}: encrypt gave {got.hex()}, want {v.ct.hex()}"


def test_known_answers_decrypt() -> None:
    for v in kat_vectors():
        try:
            got = decrypt(v.key, v.nonce, v.ad, v.ct)
        except AuthenticationError as exc:
            pytest.fail(f"Count = {v.count}: decrypt rejected the known answer ({exc})")
        assert got == v.pt, f"Count = {v.count}: decrypt gave {got.hex()}, want {v.pt.hex()}"


@pytest.mark.parametrize(("pt_len", "ad_len"), TAMPER_LENGTHS)
def test_every_bit_flip_is_rejected(pt_len: int, ad_len: int) -> None:
    v = kat(pt_len, ad_len)
    for bit in range(len(v.ct) * 8):
        with pytest.raises(AuthenticationError):
            decrypt(v.key, v.nonce, v.ad, flip_bit(v.ct, bit))


@pytest.mark.parametrize(("pt_len", "ad_len"), TAMPER_LENGTHS)
def test_every_truncation_is_rejected(pt_len: int, ad_len: int) -> None:
    v = kat(pt_len, ad_len)
    for length in range(len(v.ct)):
        with pytest.raises(AuthenticationError):
            decrypt(v.key, v.nonce, v.ad, v.ct[:length])


def test_short_input_message() -> None:
    with pytest.raises(AuthenticationError, match="shorter than the 16-byte tag"):
        decrypt(KEY, NONCE, b"", bytes(15))
    with pytest.raises(AuthenticationError, match="tag mismatch"):
        decrypt(KEY, NONCE, b"", bytes(16))


def test_appended_byte_is_rejected() -> None:
    ct = encrypt(KEY, NONCE, b"ad", b"payload")
    with pytest.raises(AuthenticationError):
        decrypt(KEY, NONCE, b"ad", ct + b"\x00")


@pytest.mark.parametrize("bit", [0, 7, 64, 127])
def test_wrong_key_nonce_or_ad_is_rejected(bit: int) -> None:
    ad, pt = b"header", b"sensor reading"
    ct = encrypt(KEY, NONCE, ad, pt)
    assert decrypt(KEY, NONCE, ad, ct) == pt
    with pytest.raises(AuthenticationError):
        decrypt(flip_bit(KEY, bit), NONCE, ad, ct)
    with pytest.raises(AuthenticationError):
        decrypt(KEY, flip_bit(NONCE, bit), ad, ct)
    with pytest.raises(AuthenticationError):
        decrypt(KEY, NONCE, flip_bit(ad, bit % (8 * len(ad))), ct)


def test_missing_or_extra_ad_is_rejected() -> None:
    with pytest.raises(AuthenticationError):
        decrypt(KEY, NONCE, b"", encrypt(KEY, NONCE, b"\x00", b"msg"))
    with pytest.raises(AuthenticationError):
        decrypt(KEY, NONCE, b"\x00", encrypt(KEY, NONCE, b"", b"msg"))


@pytest.mark.parametrize("size", [0, 8, 15, 17, 32])
def test_wrong_key_size(size: int) -> None:
    with pytest.raises(ValueError, match=f"^key must be 16 bytes, got {size}$"):
        encrypt(bytes(size), NONCE, b"", b"msg")
    with pytest.raises(ValueError, match=f"^key must be 16 bytes, got {size}$"):
        decrypt(bytes(size), NONCE, b"", bytes(32))


@pytest.mark.parametrize("size", [0, 12, 15, 17, 24])
def test_wrong_nonce_size(size: int) -> None:
    with pytest.raises(ValueError, match=f"^nonce must be 16 bytes, got {size}$"):
        encrypt(KEY, bytes(size), b"", b"msg")
    with pytest.raises(ValueError, match=f"^nonce must be 16 bytes, got {size}$"):
        decrypt(KEY, bytes(size), b"", bytes(32))


def test_accepts_bytearray_and_memoryview() -> None:
    ad, pt = b"associated", b"plaintext that spans more than one block"
    ct = encrypt(KEY, NONCE, ad, pt)
    assert encrypt(bytearray(KEY), bytearray(NONCE), bytearray(ad), bytearray(pt)) == ct
    assert encrypt(memoryview(KEY), memoryview(NONCE), memoryview(ad), memoryview(pt)) == ct
    assert decrypt(bytearray(KEY), memoryview(NONCE), bytearray(ad), memoryview(ct)) == pt
    # A slice is a bytes-like view into a larger buffer, as a framing layer passes it.
    frame = b"\xff" * 5 + ct + b"\xee" * 3
    assert decrypt(KEY, NONCE, ad, memoryview(frame)[5 : 5 + len(ct)]) == pt


@pytest.mark.parametrize("position", range(4))
def test_str_argument_raises_type_error(position: int) -> None:
    args: list[object] = [KEY, NONCE, b"", encrypt(KEY, NONCE, b"", b"")]
    args[position] = "not bytes"
    with pytest.raises(TypeError):
        encrypt(*args)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decrypt(*args)  # type: ignore[arg-type]


def test_wrong_argument_count_raises_type_error() -> None:
    with pytest.raises(TypeError, match="4 positional arguments"):
        encrypt(KEY, NONCE, b"")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="4 positional arguments"):
        decrypt(KEY, NONCE, b"", b"", b"")  # type: ignore[call-arg]


def test_large_message_round_trip() -> None:
    key, nonce = os.urandom(16), os.urandom(16)
    ad, pt = os.urandom(5000), os.urandom(1 << 20)
    ct = encrypt(key, nonce, ad, pt)
    assert len(ct) == len(pt) + TAG_SIZE
    assert ct[: len(pt)] != pt
    assert decrypt(key, nonce, ad, ct) == pt
    # Both ends of a large ciphertext are covered by the tag, on the GIL-free path too.
    for bit in (0, 8 * len(pt) - 1, 8 * len(ct) - 1):
        with pytest.raises(AuthenticationError):
            decrypt(key, nonce, ad, flip_bit(ct, bit))
    with pytest.raises(AuthenticationError):
        decrypt(key, nonce, flip_bit(ad, 4999 * 8), ct)


def test_concurrent_encryption_is_correct() -> None:
    jobs = [(os.urandom(16), os.urandom(16), os.urandom(64), os.urandom(4 << 20)) for _ in range(2)]
    expected = [encrypt(*job) for job in jobs]
    results: list[list[bytes]] = [[] for _ in jobs]
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        start.wait()
        for _ in range(3):
            results[index].append(encrypt(*jobs[index]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (job, want) in enumerate(zip(jobs, expected, strict=True)):
        assert results[index] == [want] * 3
        assert decrypt(job[0], job[1], job[2], want) == job[3]


keys = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
messages = st.binary(max_size=300)


@given(key=keys, nonce=nonces, ad=messages, pt=messages)
def test_round_trip_property(key: bytes, nonce: bytes, ad: bytes, pt: bytes) -> None:
    ct = encrypt(key, nonce, ad, pt)
    assert len(ct) == len(pt) + TAG_SIZE
    assert decrypt(key, nonce, ad, ct) == pt


@given(key=keys, nonce=nonces, ad=messages, pt=messages, data=st.data())
def test_any_bit_flip_is_rejected_property(
    key: bytes, nonce: bytes, ad: bytes, pt: bytes, data: st.DataObject
) -> None:
    ct = encrypt(key, nonce, ad, pt)
    bit = data.draw(st.integers(min_value=0, max_value=8 * len(ct) - 1), label="bit")
    with pytest.raises(AuthenticationError):
        decrypt(key, nonce, ad, flip_bit(ct, bit))


def _build_portable(tmp: Path) -> ModuleType:
    """The extension built again with ASCON_PORTABLE: only the baseline code path, which the
    loader does not choose on an x86-64 processor with BMI2, and the memset wiping fallback."""
    source = Path(pqlink.__file__).parent / "_ascon.c"
    ext = Extension(
        "pqlink._ascon",
        sources=[str(source)],
        # and with the memset fallback for wiping, which glibc builds would never compile
        define_macros=[("ASCON_PORTABLE", "1"), ("ASCON_NO_EXPLICIT_BZERO", "1")],
        extra_compile_args=["-O3", "-std=c99", "-fno-strict-aliasing"],
    )
    cmd = build_ext(Distribution({"ext_modules": [ext]}))
    cmd.build_lib = str(tmp / "lib")
    cmd.build_temp = str(tmp / "obj")
    cmd.ensure_finalized()
    cmd.run()
    spec = importlib.util.spec_from_file_location("pqlink._ascon", cmd.get_ext_fullpath(ext.name))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)  # not put into sys.modules
    spec.loader.exec_module(module)
    return module


def test_portable_build_reproduces_the_vectors(tmp_path: Path) -> None:
    portable = _build_portable(tmp_path)
    assert portable.IMPLEMENTATION == "portable"
    for v in kat_vectors():
        assert portable.encrypt(v.key, v.nonce, v.ad, v.pt) == v.ct, f"Count = {v.count}"
        assert portable.decrypt(v.key, v.nonce, v.ad, v.ct) == v.pt, f"Count = {v.count}"
    with pytest.raises(AuthenticationError):
        portable.decrypt(KEY, NONCE, b"", flip_bit(kat(16, 0).ct, 3))
    # longer inputs than the vectors have, against the installed build
    for size in (33, 255, 4095, 4096, 70_001):
        key, nonce, ad, pt = os.urandom(16), os.urandom(16), os.urandom(size // 3), os.urandom(size)
        ct = encrypt(key, nonce, ad, pt)
        assert portable.encrypt(key, nonce, ad, pt) == ct
        assert portable.decrypt(key, nonce, ad, ct) == pt
