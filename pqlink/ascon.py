"""Ascon (NIST SP 800-232): AEAD128 for records and envelopes, Hash256, XOF128 and CXOF128.

A zero-overhead re-export of the C extension pqlink._ascon; see its stub for the signatures."""

from pqlink._ascon import (
    CXOF_MAX_CUSTOMIZATION,
    HASH256_SIZE,
    IMPLEMENTATION,
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    cxof128,
    cxof128_accumulate,
    decrypt,
    encrypt,
    hash256,
    xof128,
)

__all__ = [
    "CXOF_MAX_CUSTOMIZATION",
    "HASH256_SIZE",
    "IMPLEMENTATION",
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "cxof128",
    "cxof128_accumulate",
    "decrypt",
    "encrypt",
    "hash256",
    "xof128",
]
