"""How a model update becomes secure aggregation's input: L2 clip, stochastic quantisation,
distributed DP noise, integers modulo 2^k; and the masks, expanded with Ascon-CXOF128."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pqlink._secagg_codec import word_bytes
from pqlink._secagg_graph import SecAggParameterError
from pqlink.ascon import cxof128, cxof128_accumulate

U64Vector = npt.NDArray[np.uint64]
_MASK_CUSTOMIZATION = b"iomt-secagg mask v1 "
_NOISE_CUSTOMIZATION = b"iomt-secagg noise v1"


def modulus_bits_for(
    clients: int, precision_bits: int, *, noise_std: float = 0.0, dimension: int = 1, eta: int = 30
) -> int:
    """k such that the sum of `clients` inputs never wraps modulo 2^k.

    Each quantised coordinate lies in [-(2^b - 1), 2^b - 1], so n of them sum to at most
    M = n (2^b - 1) in magnitude; distributed noise of standard deviation sigma per client adds
    a Gaussian of standard deviation sigma sqrt(n), bounded by tau sigma sqrt(n) with
    tau = sqrt(2 ln(2 d 2^eta)) on all d coordinates except with probability 2^-eta. The signed
    sum needs 2M + 1 residues: k = ceil(log2(2 M + 1))."""
    if clients < 1 or not 1 <= precision_bits <= 52:
        raise SecAggParameterError("need clients >= 1 and precision bits in 1..52")
    bound = clients * ((1 << precision_bits) - 1)
    if noise_std > 0.0:
        tau = math.sqrt(2.0 * (math.log(2.0 * dimension) + eta * math.log(2.0)))
        bound += math.ceil(tau * noise_std * math.sqrt(clients))
    k = (2 * bound).bit_length()  # ceil(log2(N)) is (N - 1).bit_length() for N = 2M + 1
    if k > 64:
        raise SecAggParameterError(f"{k} bits needed, over 64: lower the precision")
    return k


@dataclass(frozen=True, slots=True)
class InputEncoding:
    """Clip to L2 norm `clip`, scale so that |coordinate| <= 2^precision_bits - 1, round
    stochastically (unbiased), add rounded Gaussian noise of `noise_std` quantisation units,
    reduce modulo 2^modulus_bits."""

    dimension: int
    clip: float
    precision_bits: int
    modulus_bits: int
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.dimension <= 1 << 26:
            raise SecAggParameterError(f"dimension {self.dimension} outside 1..2^26")
        if not (self.clip > 0.0 and math.isfinite(self.clip)):
            raise SecAggParameterError(f"clip {self.clip} must be positive and finite")
        if not 1 <= self.precision_bits < self.modulus_bits <= 64:
            raise SecAggParameterError("need 1 <= precision bits < modulus bits <= 64")
        if not (self.noise_std >= 0.0 and math.isfinite(self.noise_std)):
            raise SecAggParameterError(f"noise std {self.noise_std} must be finite and >= 0")

    @property
    def scale(self) -> float:
        return ((1 << self.precision_bits) - 1) / self.clip

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one client's quantised input: the clipped norm, scaled, plus what
        stochastic rounding can add (under 1 per coordinate)."""
        return self.clip * self.scale + math.sqrt(self.dimension)

    def quantise(self, update: npt.ArrayLike, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """The clipped update as integers of magnitude <= 2^precision_bits - 1, no noise."""
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.shape != (self.dimension,):
            raise SecAggParameterError(f"update has {x.size} values, expected {self.dimension}")
        if not np.all(np.isfinite(x)):
            raise SecAggParameterError("update holds a NaN or an infinity")
        norm = float(np.linalg.norm(x))
        if norm > self.clip:
            x = x * (self.clip / norm)
        scaled = np.clip(
            x * self.scale, -((1 << self.precision_bits) - 1), (1 << self.precision_bits) - 1
        )
        low = np.floor(scaled)
        up = rng.random(self.dimension) < (scaled - low)
        return (low + up).astype(np.int64)

    def noise(self, rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
        """This client's share of the distributed noise, rounded to integers. Without `rng`
        (the default, and what `encode` uses) the Gaussians come from a fresh 256-bit
        `secrets` seed through Ascon-CXOF128, not from a statistical generator whose state
        could be inferred; `rng` is for reproducible tests."""
        if self.noise_std == 0.0:
            return np.zeros(self.dimension, dtype=np.int64)
        if rng is not None:
            gauss = rng.normal(0.0, 1.0, self.dimension)
        else:
            gauss = _standard_gaussians(self.dimension)
        return np.rint(gauss * self.noise_std).astype(np.int64)

    def to_ring(self, values: npt.NDArray[np.int64]) -> U64Vector:
        """Signed integers as residues modulo 2^k (two's complement, then the low k bits)."""
        return values.astype(np.uint64) & np.uint64(_low_mask(self.modulus_bits))

    def encode(self, update: npt.ArrayLike, rng: np.random.Generator) -> U64Vector:
        """Quantise with `rng` for the rounding coins, add noise from the secret stream."""
        return self.to_ring(self.quantise(update, rng) + self.noise())

    def signed_sum(self, total: U64Vector) -> npt.NDArray[np.int64]:
        """The sum modulo 2^k read back as signed integers (it never wrapped, by choice of k)."""
        # Move bit k-1 to the sign bit, then shift back arithmetically: sign extension.
        shift = np.uint64(64 - self.modulus_bits)
        moved = np.left_shift(np.asarray(total, dtype=np.uint64), shift)
        return np.right_shift(moved.view(np.int64), np.int64(64 - self.modulus_bits))

    def decode_sum(self, total: U64Vector) -> npt.NDArray[np.float64]:
        return self.signed_sum(total).astype(np.float64) / self.scale


def distributed_noise_std(
    encoding_sensitivity: float, noise_multiplier: float, min_survivors: int
) -> float:
    """Per-client noise standard deviation (quantisation units) such that the sum over any
    `min_survivors` clients carries Gaussian noise of standard deviation z * sensitivity: the
    variances add, so each contributes (z * sensitivity)^2 / t_min. A round with fewer
    survivors aborts before anything is unmasked."""
    if min_survivors < 1 or noise_multiplier < 0.0:
        raise SecAggParameterError("need min_survivors >= 1 and a noise multiplier >= 0")
    return noise_multiplier * encoding_sensitivity / math.sqrt(min_survivors)


def _standard_gaussians(count: int) -> npt.NDArray[np.float64]:
    """Box-Muller over 53-bit uniforms in (0, 1) from Ascon-CXOF128 of a fresh secret seed."""
    pairs = (count + 1) // 2
    raw = cxof128(secrets.token_bytes(32), _NOISE_CUSTOMIZATION, 16 * pairs)
    words = np.frombuffer(raw, dtype="<u8")
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(uniform[0::2]))
    angle = 2.0 * math.pi * uniform[1::2]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def _low_mask(bits: int) -> int:
    return (1 << bits) - 1


def expand_mask(
    seed: bytes, round_id: int, purpose: bytes, dimension: int, modulus_bits: int
) -> U64Vector:
    """`dimension` uniform residues modulo 2^k from Ascon-CXOF128 of the seed, customised by
    round and purpose (self mask or pair mask) so that no two masks share a stream."""
    width = word_bytes(modulus_bits)
    z = _MASK_CUSTOMIZATION + purpose + round_id.to_bytes(8, "big")
    raw = cxof128(seed, z, width * dimension)
    words = np.frombuffer(raw, dtype="<u4" if width == 4 else "<u8").astype(np.uint64)
    # 2^k divides 2^32 or 2^64, so the low k bits of a uniform word are uniform.
    return words & np.uint64(_low_mask(modulus_bits))


def accumulate_masks(
    total: U64Vector,
    seeds: list[bytes],
    signs: list[int],
    *,
    round_id: int,
    purpose: bytes,
    modulus_bits: int,
) -> None:
    """Add (+1) or subtract (-1) the masks `expand_mask` gives for `seeds` into `total` in
    place, modulo 2^64 (reduce modulo 2^k once at the end: 2^k divides 2^64). One C call for
    all of them: the same words as expand_mask, without a vector per mask."""
    if total.dtype != np.uint64 or not total.flags.c_contiguous:
        raise ValueError("total must be a contiguous uint64 vector")
    z = _MASK_CUSTOMIZATION + purpose + round_id.to_bytes(8, "big")
    cxof128_accumulate(total.data, seeds, z, signs, word_bytes(modulus_bits))
