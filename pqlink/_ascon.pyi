"""Typing stub of the Ascon C extension (NIST SP 800-232): AEAD128, Hash256, XOF128, CXOF128.

Arguments are positional-only bytes-like objects; key and nonce must be exactly 16 bytes."""

from typing import Final, TypeAlias

_BytesLike: TypeAlias = bytes | bytearray | memoryview

KEY_SIZE: Final[int]
NONCE_SIZE: Final[int]
TAG_SIZE: Final[int]
#: Ascon-Hash256's digest size: 32.
HASH256_SIZE: Final[int]
#: The longest CXOF128 customization string in bytes (2048 bits): 256.
CXOF_MAX_CUSTOMIZATION: Final[int]
#: The code path chosen at import: "x86-64 BMI2" or "portable".
IMPLEMENTATION: Final[str]

def encrypt(
    key: _BytesLike, nonce: _BytesLike, associated_data: _BytesLike, plaintext: _BytesLike, /
) -> bytes:
    """Return the ciphertext followed by the 16-byte tag; ValueError on a bad key or nonce size."""

def decrypt(
    key: _BytesLike,
    nonce: _BytesLike,
    associated_data: _BytesLike,
    ciphertext_and_tag: _BytesLike,
    /,
) -> bytes:
    """Return the plaintext; AuthenticationError, releasing nothing, if the tag does not verify."""

def hash256(message: _BytesLike, /) -> bytes:
    """Return the 32-byte Ascon-Hash256 digest of message."""

def xof128(message: _BytesLike, length: int, /) -> bytes:
    """Return `length` bytes of Ascon-XOF128 output; ValueError if length is negative."""

def cxof128(message: _BytesLike, customization: _BytesLike, length: int, /) -> bytes:
    """Return `length` bytes of Ascon-CXOF128 output under a customization string of at most
    256 bytes; ValueError if it is longer or length is negative."""

def cxof128_accumulate(
    total: memoryview | bytearray,
    seeds: list[bytes],
    customization: _BytesLike,
    signs: list[int],
    word_bytes: int,
    /,
) -> None:
    """Add (sign 1) or subtract (sign -1), modulo 2^64, len(total) // 8 little-endian words of
    word_bytes (4 or 8) bytes of Ascon-CXOF128(seed, customization) per seed into total, a
    writable buffer of uint64; ValueError on a bad width, sign or customization."""
