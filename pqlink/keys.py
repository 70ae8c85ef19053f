"""Typed wrappers over `cryptography` for ML-DSA signatures, ML-KEM-768 and the hybrid
X25519 + ML-KEM-768 KEM (X-Wing combiner): one class per key type, bytes in, bytes out."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem, x25519

from pqlink._errors import DecodeError, ErrorReason, SignatureError


class SigAlg(enum.IntEnum):
    """ML-DSA parameter sets (FIPS 204); the value is the wire code."""

    ML_DSA_44 = 1
    ML_DSA_65 = 2

    @property
    def label(self) -> str:
        return "ML-DSA-44" if self is SigAlg.ML_DSA_44 else "ML-DSA-65"

    @property
    def public_key_size(self) -> int:
        return 1312 if self is SigAlg.ML_DSA_44 else 1952

    @property
    def signature_size(self) -> int:
        return 2420 if self is SigAlg.ML_DSA_44 else 3309

    @classmethod
    def from_label(cls, label: str) -> SigAlg:
        for alg in cls:
            if alg.label == label:
                return alg
        raise ValueError(f"unknown signature algorithm {label!r}: expected ML-DSA-44 or ML-DSA-65")

    @classmethod
    def from_wire(cls, code: int) -> SigAlg:
        try:
            return cls(code)
        except ValueError:
            raise DecodeError(
                f"unknown signature algorithm code {code}", reason=ErrorReason.UNKNOWN_SIG_ALG
            ) from None


_MLDSA_PRIVATE: dict[SigAlg, type[mldsa.MLDSA44PrivateKey] | type[mldsa.MLDSA65PrivateKey]] = {
    SigAlg.ML_DSA_44: mldsa.MLDSA44PrivateKey,
    SigAlg.ML_DSA_65: mldsa.MLDSA65PrivateKey,
}
_MLDSA_PUBLIC: dict[SigAlg, type[mldsa.MLDSA44PublicKey] | type[mldsa.MLDSA65PublicKey]] = {
    SigAlg.ML_DSA_44: mldsa.MLDSA44PublicKey,
    SigAlg.ML_DSA_65: mldsa.MLDSA65PublicKey,
}


class SigningKey:
    """An ML-DSA private key, kept as its 32-byte seed (FIPS 204 ξ)."""

    __slots__ = ("_key", "_seed", "alg")

    def __init__(self, alg: SigAlg, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"ML-DSA seed must be 32 bytes, got {len(seed)}")
        self.alg = alg
        self._seed = bytes(seed)
        self._key = _MLDSA_PRIVATE[alg].from_seed_bytes(self._seed)

    @classmethod
    def generate(cls, alg: SigAlg) -> SigningKey:
        key = _MLDSA_PRIVATE[alg].generate()
        return cls(alg, key.private_bytes_raw())

    def seed_bytes(self) -> bytes:
        return self._seed

    def public_key(self) -> VerifyKey:
        return VerifyKey(self.alg, self._key.public_key().public_bytes_raw())

    def sign(self, data: bytes, context: bytes) -> bytes:
        """Sign with an ML-DSA context string that separates each message kind."""
        return self._key.sign(data, context)

    def __repr__(self) -> str:
        return f"SigningKey({self.alg.label}, <secret>)"


class VerifyKey:
    """An ML-DSA public key."""

    __slots__ = ("_key", "alg", "raw")

    def __init__(self, alg: SigAlg, raw: bytes) -> None:
        if len(raw) != alg.public_key_size:
            raise ValueError(
                f"{alg.label} public key must be {alg.public_key_size} bytes, got {len(raw)}"
            )
        self.alg = alg
        self.raw = bytes(raw)
        self._key = _MLDSA_PUBLIC[alg].from_public_bytes(self.raw)

    def verify(self, signature: bytes, data: bytes, context: bytes) -> None:
        """Raise SignatureError unless `signature` is valid over `data` in `context`."""
        if len(signature) != self.alg.signature_size:
            raise SignatureError(
                f"{self.alg.label} signature must be {self.alg.signature_size} bytes, "
                f"got {len(signature)}",
                reason=ErrorReason.BAD_SIGNATURE_LENGTH,
            )
        try:
            self._key.verify(signature, data, context)
        except InvalidSignature:
            raise SignatureError(f"{self.alg.label} signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.alg == self.alg and other.raw == self.raw

    def __hash__(self) -> int:
        return hash((self.alg, self.raw))


# --- KEMs ---------------------------------------------------------------------------------

MLKEM768_PUBLIC_KEY_SIZE = 1184
MLKEM768_CIPHERTEXT_SIZE = 1088
X25519_SIZE = 32
HYBRID_PUBLIC_KEY_SIZE = MLKEM768_PUBLIC_KEY_SIZE + X25519_SIZE
HYBRID_CIPHERTEXT_SIZE = MLKEM768_CIPHERTEXT_SIZE + X25519_SIZE
_XWING_LABEL = b"\\.//^\\"


@dataclass(frozen=True, slots=True)
class Encapsulation:
    """What an encapsulation gives the sender: the shared secret and the ciphertext to send."""

    shared_secret: bytes
    ciphertext: bytes


class MlKem768PublicKey:
    """An ML-KEM-768 (FIPS 203) encapsulation key."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != MLKEM768_PUBLIC_KEY_SIZE:
            raise DecodeError(
                f"ML-KEM-768 public key must be {MLKEM768_PUBLIC_KEY_SIZE} bytes, got {len(raw)}",
                reason=ErrorReason.BAD_KEY,
            )
        self.raw = bytes(raw)
        try:
            self._key = mlkem.MLKEM768PublicKey.from_public_bytes(self.raw)
        except ValueError as exc:
            raise DecodeError(
                f"ML-KEM-768 public key rejected: {exc}", reason=ErrorReason.BAD_KEY
            ) from None

    def encapsulate(self) -> Encapsulation:
        shared, ct = self._key.encapsulate()
        return Encapsulation(shared, ct)


class MlKem768PrivateKey:
    """An ML-KEM-768 decapsulation key, kept as its 64-byte seed (d || z)."""

    __slots__ = ("_key", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 64:
            raise ValueError(f"ML-KEM-768 seed must be 64 bytes, got {len(seed)}")
        self._seed = bytes(seed)
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(self._seed)

    @classmethod
    def generate(cls) -> MlKem768PrivateKey:
        return cls(mlkem.MLKEM768PrivateKey.generate().private_bytes_raw())

    def public_key(self) -> MlKem768PublicKey:
        return MlKem768PublicKey(self._key.public_key().public_bytes_raw())

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != MLKEM768_CIPHERTEXT_SIZE:
            raise DecodeError(
                f"ML-KEM-768 ciphertext must be {MLKEM768_CIPHERTEXT_SIZE} bytes, "
                f"got {len(ciphertext)}",
                reason=ErrorReason.BAD_KEY,
            )
        # ML-KEM decapsulation never fails: a bad ciphertext yields an unrelated secret
        # (implicit rejection), which the AEAD or key confirmation then rejects.
        return self._key.decapsulate(ciphertext)


def xwing_combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The X-Wing combiner (draft-connolly-cfrg-xwing-kem-06 and later): label last."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + _XWING_LABEL).digest()


class HybridPublicKey:
    """Hybrid X25519 + ML-KEM-768 public key, laid out as X-Wing does: pk_M || pk_X."""

    __slots__ = ("_mlkem", "_x25519", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != HYBRID_PUBLIC_KEY_SIZE:
            raise DecodeError(
                f"hybrid public key must be {HYBRID_PUBLIC_KEY_SIZE} bytes, got {len(raw)}",
                reason=ErrorReason.BAD_KEY,
            )
        self.raw = bytes(raw)
        self._mlkem = MlKem768PublicKey(self.raw[:MLKEM768_PUBLIC_KEY_SIZE])
        self._x25519 = x25519.X25519PublicKey.from_public_bytes(self.raw[MLKEM768_PUBLIC_KEY_SIZE:])

    @property
    def mlkem(self) -> MlKem768PublicKey:
        return self._mlkem

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def encapsulate(self) -> Encapsulation:
        """X-Wing encapsulation: ct = ct_M || ct_X, ss = SHA3-256(ss_M||ss_X||ct_X||pk_X||label)."""
        m = self._mlkem.encapsulate()
        eph = x25519.X25519PrivateKey.generate()
        ct_x = eph.public_key().public_bytes_raw()
        pk_x = self.raw[MLKEM768_PUBLIC_KEY_SIZE:]
        try:
            ss_x = eph.exchange(self._x25519)
        except ValueError:
            raise DecodeError(
                "X25519 public key is a low-order point", reason=ErrorReason.BAD_KEY
            ) from None
        return Encapsulation(xwing_combine(m.shared_secret, ss_x, ct_x, pk_x), m.ciphertext + ct_x)


class HybridPrivateKey:
    """Hybrid X25519 + ML-KEM-768 private key, kept as its two seeds."""

    __slots__ = ("_mlkem", "_pk_x", "_x25519")

    def __init__(self, mlkem_seed: bytes, x25519_secret: bytes) -> None:
        if len(x25519_secret) != X25519_SIZE:
            raise ValueError(f"X25519 private key must be 32 bytes, got {len(x25519_secret)}")
        self._mlkem = MlKem768PrivateKey(mlkem_seed)
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(bytes(x25519_secret))
        self._pk_x = self._x25519.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> HybridPrivateKey:
        return cls(
            mlkem.MLKEM768PrivateKey.generate().private_bytes_raw(),
            x25519.X25519PrivateKey.generate().private_bytes_raw(),
        )

    @classmethod
    def from_xwing_seed(cls, seed: bytes) -> HybridPrivateKey:
        """The key an X-Wing 32-byte decapsulation key expands to (SHAKE256 to 96 bytes:
        ML-KEM-768 d || z, then the X25519 secret), so X-Wing's test vectors apply."""
        if len(seed) != 32:
            raise ValueError(f"X-Wing seed must be 32 bytes, got {len(seed)}")
        expanded = hashlib.shake_256(seed).digest(96)
        return cls(expanded[:64], expanded[64:])

    @property
    def mlkem(self) -> MlKem768PrivateKey:
        return self._mlkem

    def seeds(self) -> tuple[bytes, bytes]:
        return self._mlkem._seed, self._x25519.private_bytes_raw()

    def public_key(self) -> HybridPublicKey:
        return HybridPublicKey(self._mlkem.public_key().raw + self._pk_x)

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) != HYBRID_CIPHERTEXT_SIZE:
            raise DecodeError(
                f"hybrid ciphertext must be {HYBRID_CIPHERTEXT_SIZE} bytes, got {len(ciphertext)}",
                reason=ErrorReason.BAD_KEY,
            )
        ss_m = self._mlkem.decapsulate(ciphertext[:MLKEM768_CIPHERTEXT_SIZE])
        ct_x = ciphertext[MLKEM768_CIPHERTEXT_SIZE:]
        try:
            ss_x = self._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
        except ValueError:
            raise DecodeError(
                "X25519 ciphertext is a low-order point", reason=ErrorReason.BAD_KEY
            ) from None
        return xwing_combine(ss_m, ss_x, ct_x, self._pk_x)

    def __repr__(self) -> str:
        return "HybridPrivateKey(<secret>)"
