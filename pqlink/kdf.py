"""HKDF-SHA256 (RFC 5869) over `cryptography`, with a TLS 1.3 style labelled expand.

All pqlink key derivation goes through these three functions."""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

HASH_LEN = 32
_LABEL_PREFIX = b"pqlink1 "


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256: a 32-byte pseudorandom key."""
    return HKDF.extract(hashes.SHA256(), salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label as TLS 1.3 (RFC 8446 §7.1) defines it, with a pqlink label prefix."""
    full = _LABEL_PREFIX + label.encode("ascii")
    if len(full) > 255 or len(context) > 255:
        raise ValueError("label or context longer than 255 bytes")
    info = struct.pack(">H", length) + bytes((len(full),)) + full + bytes((len(context),)) + context
    return hkdf_expand(secret, info, length)
