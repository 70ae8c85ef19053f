"""Typing stub of the Ascon-AEAD128 C extension (NIST SP 800-232).

Arguments are positional-only bytes-like objects; key and nonce must be exactly 16 bytes."""

from typing import Final, TypeAlias

_BytesLike: TypeAlias = bytes | bytearray | memoryview

KEY_SIZE: Final[int]
NONCE_SIZE: Final[int]
TAG_SIZE: Final[int]
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
