"""Secure aggregation's key schedule as docs/secure-aggregation.md writes it down, restated
from the primitives (Ascon-Hash256, HKDF-SHA256 with pqlink's Expand-Label, X-Wing keys): the
labels and layouts another implementation must use to take part in a round."""

from __future__ import annotations

import numpy as np

from pqlink import secagg
from pqlink.ascon import hash256
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import HybridPrivateKey

ROUND = 0x0102030405060708
RID = bytes.fromhex("0102030405060708")  # the round id as every context carries it
U, V = 3, 0x0A0B
SEED = bytes(range(32))
SECRET = bytes(range(100, 132))
CT = b"ciphertext"


def _ids(*ids: int) -> bytes:
    return b"".join(i.to_bytes(2, "big") for i in ids)


def test_signature_contexts() -> None:
    assert secagg._advert_context(ROUND, U, SEED) == (
        b"iomt-secagg advert" + RID + _ids(U) + b"graph" + SEED
    )
    assert secagg._advert_context(ROUND, U, None) == (
        b"iomt-secagg advert" + RID + _ids(U) + b"ahead"
    )
    assert secagg._key_shares_context(ROUND, U, SEED) == (
        b"iomt-secagg key shares" + RID + _ids(U) + SEED
    )


def test_commitments() -> None:
    for label in (b"self", b"pair"):
        assert secagg._commitment(label, ROUND, U, SEED) == hash256(
            b"iomt-secagg commit " + label + RID + _ids(U) + SEED
        )


def test_share_key_half_and_pair_seed() -> None:
    direction = RID + _ids(U, V) + hash256(CT)
    assert secagg._share_key(SECRET, ROUND, U, V, CT) == expand_label(
        hkdf_extract(b"iomt-secagg share v2", SECRET), "secagg share", direction, 16
    )
    assert secagg._mask_half(SECRET, ROUND, U, V, CT) == expand_label(
        hkdf_extract(b"iomt-secagg half v2", SECRET), "secagg mask half", direction, 32
    )
    low, high = bytes(32), SEED
    assert secagg._pair_seed(ROUND, U, V, low, high) == expand_label(
        hkdf_extract(b"iomt-secagg pair v2", low + high), "secagg mask", RID + _ids(U, V), 32
    )


def test_mask_key_and_escrow() -> None:
    seed = expand_label(SEED, "secagg mask key", RID + _ids(U), 32)
    assert secagg._mask_key(SEED, ROUND, U).public_key().raw == (
        HybridPrivateKey.from_xwing_seed(seed).public_key().raw
    )
    assert secagg._escrow_key(SEED, ROUND, U, V) == expand_label(
        SEED, "secagg escrow", RID + _ids(U, V), 16
    )
    assert secagg._escrow_ad(ROUND, U, V) == b"iomt-secagg escrow" + RID + _ids(U, V)
    assert secagg._share_ad(ROUND, U, V) == b"iomt-secagg share" + RID + _ids(U, V)


def test_vector_words_follow_the_ring() -> None:
    v = np.array([1, 2**31 + 5], dtype=np.uint64)
    assert secagg._vector_bytes(v, 32) == np.array([1, 2**31 + 5], "<u4").tobytes()
    wide = np.array([1, 2**40 + 5], dtype=np.uint64)
    assert secagg._vector_bytes(wide, 33) == np.array([1, 2**40 + 5], "<u8").tobytes()
