"""Key wrappers, labelled HKDF expansion and the wire codec at their limits.

Covers the size checks and error reasons of the ML-DSA, ML-KEM-768 and hybrid X-Wing keys,
the 255-byte bounds and length encoding of `expand_label` (checked against HKDF written by
hand with hmac), and the identifier and trailing-data handling of Reader/Writer."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from pqlink._codec import Reader, Writer, check_identifier
from pqlink._errors import DecodeError, ErrorReason, SignatureError
from pqlink.kdf import expand_label
from pqlink.keys import (
    HybridPrivateKey,
    HybridPublicKey,
    MlKem768PrivateKey,
    MlKem768PublicKey,
    SigAlg,
    SigningKey,
    VerifyKey,
)

_XWING_LABEL = b"\\.//^\\"


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256, written out."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _expected_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"pqlink1 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),))
    return _hkdf_expand(secret, info + context, length)


# --- kdf ------------------------------------------------------------------------------------


def test_expand_label_accepts_a_255_byte_label_and_context() -> None:
    secret = bytes(range(32))
    label = "x" * 247  # with the 8-byte prefix: exactly 255 bytes
    context = bytes(range(255))
    got = expand_label(secret, label, context, 48)
    assert got == _expected_label(secret, label.encode(), context, 48)


def test_expand_label_rejects_a_256_byte_label() -> None:
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        expand_label(bytes(32), "x" * 248, b"", 32)


def test_expand_label_rejects_a_256_byte_context() -> None:
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        expand_label(bytes(32), "k", bytes(256), 32)


def test_expand_label_encodes_the_largest_length_unsigned() -> None:
    secret = b"\x07" * 32
    assert expand_label(secret, "big", b"ctx", 8160) == _expected_label(
        secret, b"big", b"ctx", 8160
    )


@pytest.mark.parametrize("length", [8161, 40000, 65535])
def test_expand_label_rejects_lengths_past_the_hkdf_limit(length: int) -> None:
    with pytest.raises(ValueError, match="larger than 8160"):
        expand_label(bytes(32), "big", b"", length)


def test_expand_label_rejects_a_non_ascii_label() -> None:
    with pytest.raises(UnicodeEncodeError):
        expand_label(bytes(32), "clé", b"", 32)


# --- codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dévice", "gw\u00a0one", "\ud800"])
def test_check_identifier_rejects_non_ascii_with_a_plain_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="is invalid") as info:
        check_identifier(name)
    assert type(info.value) is ValueError


def test_check_identifier_returns_the_ascii_bytes() -> None:
    assert check_identifier("gw-1.a_b:c") == b"gw-1.a_b:c"


def test_reader_rest_returns_the_remaining_bytes_and_consumes_them() -> None:
    frame = Writer().u8(7).identifier("dev-1").raw(b"tail\x00\xff").getvalue()
    reader = Reader(frame, "test frame")
    assert reader.u8("kind") == 7
    assert reader.identifier("device") == "dev-1"
    assert reader.rest() == b"tail\x00\xff"
    assert reader.offset == len(frame)
    reader.end()
    assert reader.rest() == b""


def test_reader_rest_on_a_fresh_reader_is_the_whole_frame() -> None:
    reader = Reader(b"\x01\x02\x03", "test frame")
    assert reader.rest() == b"\x01\x02\x03"
    with pytest.raises(DecodeError) as info:
        reader.u8("after")
    assert info.value.reason is ErrorReason.TRUNCATED
    assert "offset 3" in str(info.value)


# --- keys -----------------------------------------------------------------------------------


def _hybrid() -> HybridPrivateKey:
    return HybridPrivateKey.from_xwing_seed(bytes(range(32)))


@pytest.mark.parametrize("size", [1183, 1185])
def test_mlkem_public_key_size_is_checked_with_bad_key(size: int) -> None:
    with pytest.raises(DecodeError) as info:
        MlKem768PublicKey(bytes(size))
    assert info.value.reason is ErrorReason.BAD_KEY


@pytest.mark.parametrize("size", [1215, 1217])
def test_hybrid_public_key_size_is_checked_with_bad_key(size: int) -> None:
    raw = _hybrid().public_key().raw
    assert len(raw) == 1216
    padded = (raw + b"\x00")[:size]
    with pytest.raises(DecodeError) as info:
        HybridPublicKey(padded)
    assert info.value.reason is ErrorReason.BAD_KEY


@pytest.mark.parametrize("size", [1087, 1089])
def test_mlkem_ciphertext_size_is_checked_with_bad_key(size: int) -> None:
    with pytest.raises(DecodeError) as info:
        _hybrid().mlkem.decapsulate(bytes(size))
    assert info.value.reason is ErrorReason.BAD_KEY


@pytest.mark.parametrize("size", [1119, 1121])
def test_hybrid_ciphertext_size_is_checked_with_bad_key(size: int) -> None:
    with pytest.raises(DecodeError) as info:
        _hybrid().decapsulate(bytes(size))
    assert info.value.reason is ErrorReason.BAD_KEY


def test_hybrid_decapsulation_matches_the_xwing_combiner() -> None:
    key = _hybrid()
    pk = key.public_key()
    enc = pk.encapsulate()
    assert len(enc.ciphertext) == 1120
    ss_m = key.mlkem.decapsulate(enc.ciphertext[:1088])
    ct_x = enc.ciphertext[1088:]
    x_secret = hashlib.shake_256(bytes(range(32))).digest(96)[64:]
    ss_x = x25519.X25519PrivateKey.from_private_bytes(x_secret).exchange(
        x25519.X25519PublicKey.from_public_bytes(ct_x)
    )
    expected = hashlib.sha3_256(ss_m + ss_x + ct_x + pk.raw[1184:] + _XWING_LABEL).digest()
    assert enc.shared_secret == expected
    assert key.decapsulate(enc.ciphertext) == expected


def test_hybrid_public_key_equality_and_hash() -> None:
    pk = _hybrid().public_key()
    same = HybridPublicKey(bytes(pk.raw))
    other = HybridPrivateKey.from_xwing_seed(b"\x01" * 32).public_key()
    assert pk == same
    assert hash(pk) == hash(same)
    assert pk != other
    assert hash(pk) != hash(other)
    assert pk != pk.raw
    assert pk != "not a key"
    assert len({pk, same, other}) == 2


def test_hybrid_private_key_repr_hides_the_secret() -> None:
    key = _hybrid()
    assert repr(key) == "HybridPrivateKey(<secret>)"
    mlkem_seed, x_secret = key.seeds()
    assert mlkem_seed.hex() not in repr(key)
    assert x_secret.hex() not in repr(key)


def test_mlkem_generate_gives_a_working_64_byte_seed_key() -> None:
    first = MlKem768PrivateKey.generate()
    second = MlKem768PrivateKey.generate()
    assert len(first._seed) == 64
    assert first._seed != second._seed
    again = MlKem768PrivateKey(first._seed)
    assert again.public_key().raw == first.public_key().raw
    enc = first.public_key().encapsulate()
    assert len(enc.ciphertext) == 1088
    assert first.decapsulate(enc.ciphertext) == enc.shared_secret


@pytest.mark.parametrize(
    ("alg", "size"), [(SigAlg.ML_DSA_44, 2419), (SigAlg.ML_DSA_44, 2421), (SigAlg.ML_DSA_65, 3308)]
)
def test_signature_length_is_checked_with_its_own_reason(alg: SigAlg, size: int) -> None:
    vk = SigningKey(alg, bytes(32)).public_key()
    with pytest.raises(SignatureError) as info:
        vk.verify(bytes(size), b"data", b"ctx")
    assert info.value.reason is ErrorReason.BAD_SIGNATURE_LENGTH


def test_bad_signature_names_the_algorithm() -> None:
    sk = SigningKey(SigAlg.ML_DSA_44, bytes(32))
    vk = sk.public_key()
    sig = sk.sign(b"data", b"ctx")
    vk.verify(sig, b"data", b"ctx")
    with pytest.raises(SignatureError) as info:
        vk.verify(sig, b"other", b"ctx")
    assert info.value.reason is ErrorReason.BAD_SIGNATURE
    assert str(info.value) == "ML-DSA-44 signature does not verify"


def test_verify_key_equality_and_hash() -> None:
    vk = SigningKey(SigAlg.ML_DSA_44, bytes(32)).public_key()
    same = VerifyKey(SigAlg.ML_DSA_44, bytes(vk.raw))
    other = SigningKey(SigAlg.ML_DSA_44, b"\x01" * 32).public_key()
    assert vk == same
    assert hash(vk) == hash(same)
    assert vk != other
    assert hash(vk) != hash(other)
    assert len({vk, same, other}) == 2
