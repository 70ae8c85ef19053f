"""t-of-n Shamir secret sharing of 32-byte secrets over GF(2^521 - 1), with typed errors.

Secure aggregation shares each client's self-mask seed and pair-key seed this way."""

from __future__ import annotations

import functools
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pqlink._errors import LocalProtocolError, RemoteProtocolError

#: The Mersenne prime 2^521 - 1: every 256-bit secret is a field element, and a wrong set of
#: shares recovers a value below 2^256 only with probability 2^-265.
PRIME = (1 << 521) - 1
SECRET_SIZE = 32
VALUE_SIZE = 66  # ceil(521 / 8)
SHARE_SIZE = 2 + VALUE_SIZE
#: Share indices are the evaluation points 1..MAX_SHARES (0 would be the secret itself).
MAX_SHARES = 0xFFFF


class ShamirParameterError(LocalProtocolError):
    """The caller asked for an impossible sharing (threshold or count out of range, bad secret)."""


class InvalidShareError(RemoteProtocolError):
    """A share is malformed, repeated, out of range, or the shares are not of one secret."""


class NotEnoughSharesError(RemoteProtocolError):
    """Fewer shares than the threshold: nothing can be recovered, and nothing is revealed."""


@dataclass(frozen=True, slots=True)
class Share:
    """One point (index, value) of the sharing polynomial."""

    index: int
    value: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_SHARES:
            raise InvalidShareError(f"share index {self.index} outside 1..{MAX_SHARES}")
        if not 0 <= self.value < PRIME:
            raise InvalidShareError(f"share {self.index}: value is not a field element")

    def to_bytes(self) -> bytes:
        return struct.pack(">H", self.index) + self.value.to_bytes(VALUE_SIZE, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_SIZE:
            raise InvalidShareError(f"share must be {SHARE_SIZE} bytes, got {len(data)}")
        (index,) = struct.unpack_from(">H", data)
        return cls(index, int.from_bytes(data[2:], "big"))

    def __repr__(self) -> str:
        return f"Share(index={self.index}, <secret>)"


def split_secret(
    secret: bytes,
    threshold: int,
    count: int,
    *,
    indices: Sequence[int] | None = None,
    coefficients: Sequence[int] | None = None,
) -> tuple[Share, ...]:
    """`count` shares of `secret`; any `threshold` of them recover it, fewer reveal nothing.

    The shares sit at `indices` (distinct, in 1..MAX_SHARES; default 1..count), so that a
    holder's own id can be its share's index. `coefficients` (a_1..a_{t-1}) fixes the
    polynomial for known-answer tests; by default they are drawn uniformly with `secrets`."""
    if len(secret) != SECRET_SIZE:
        raise ShamirParameterError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}")
    if not 1 <= count <= MAX_SHARES:
        raise ShamirParameterError(f"share count {count} outside 1..{MAX_SHARES}")
    points = list(range(1, count + 1)) if indices is None else list(indices)
    if len(points) != count or len(set(points)) != count:
        raise ShamirParameterError(f"need {count} distinct indices")
    if not all(1 <= x <= MAX_SHARES for x in points):
        raise ShamirParameterError(f"share indices must lie in 1..{MAX_SHARES}")
    if not 1 <= threshold <= count:
        raise ShamirParameterError(f"threshold {threshold} outside 1..{count}")
    if coefficients is None:
        coefficients = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    elif len(coefficients) != threshold - 1 or not all(0 <= a < PRIME for a in coefficients):
        raise ShamirParameterError(f"need {threshold - 1} coefficients in 0..p-1")
    poly = [int.from_bytes(secret, "big"), *coefficients]
    shares = []
    for x in points:
        y = 0
        for a in reversed(poly):  # Horner
            y = (y * x + a) % PRIME
        shares.append(Share(x, y))
    return tuple(shares)


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """The Lagrange weights that interpolate at 0 from these points. They depend on the
    indices only, and one unmasking recovers many seeds from the same holders: cached.

    w_i = prod_{j != i} x_j / prod_{j != i} (x_j - x_i) = P / (x_i prod_{j != i} (x_j - x_i)),
    with P the product of all points. The denominators are products of small integers, exact
    without reduction; all of them are inverted with one modular inversion (Montgomery's
    trick): a field inversion costs as much as hundreds of multiplications."""
    product = 1
    for x in indices:
        product *= x
    dens = []
    for i, x_i in enumerate(indices):
        den = x_i
        for j, x_j in enumerate(indices):
            if i != j:
                den *= x_j - x_i
        dens.append(den % PRIME)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)  # of the product of every denominator
    weights = [0] * len(indices)
    for i in range(len(indices) - 1, -1, -1):
        weights[i] = product * inverse * prefix[i] % PRIME
        inverse = inverse * dens[i] % PRIME
    return tuple(weights)


def recover_secret(shares: Iterable[Share], threshold: int) -> bytes:
    """The secret from at least `threshold` shares with distinct indices.

    The first `threshold` shares are interpolated at 0; a result that is not a 256-bit value
    means a share was garbled or the shares belong to different secrets. Shares are not
    authenticated: a share crafted to shift the result goes unnoticed here, so callers that
    face active peers check the result against a commitment."""
    if threshold < 1:
        raise ShamirParameterError(f"threshold {threshold} must be at least 1")
    chosen: list[Share] = []
    seen: set[int] = set()
    for share in shares:
        if share.index in seen:
            raise InvalidShareError(f"share index {share.index} given twice")
        seen.add(share.index)
        if len(chosen) < threshold:
            chosen.append(share)
    if len(chosen) < threshold:
        raise NotEnoughSharesError(f"{len(chosen)} shares, threshold {threshold}")
    weights = _lagrange_at_zero(tuple(share.index for share in chosen))
    secret = sum(share.value * w for share, w in zip(chosen, weights, strict=True)) % PRIME
    if secret >> (8 * SECRET_SIZE):
        raise InvalidShareError("shares do not interpolate to a 32-byte secret")
    return secret.to_bytes(SECRET_SIZE, "big")
