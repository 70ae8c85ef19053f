"""The message a crypto worker sends the coordinator: a partial sum over the updates it
validated (or the individual updates, for robust rules), plus the rejections it saw."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.errors import AggregatorError
from aggregator.strategies import Contribution, Vector
from wire.reasons import Reason

_LEN = struct.Struct(">I")


class PartialError(AggregatorError):
    """A partial message is malformed."""


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    gateway: str | None
    round: int | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Partial:
    worker: str
    round: int
    contributors: tuple[tuple[str, int], ...]  # (gateway, samples)
    weighted_sum: Vector | None  # sum of samples * delta, when not individual
    individual: tuple[Contribution, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def total_weight(self) -> int:
        return sum(n for _, n in self.contributors)

    def encode(self) -> bytes:
        header = {
            "worker": self.worker,
            "round": self.round,
            "contributors": [list(c) for c in self.contributors],
            "has_sum": self.weighted_sum is not None,
            "individual": [c.gateway for c in self.individual],
            "rejections": [[r.reason, r.gateway, r.round, r.detail] for r in self.rejections],
            "metrics": self.metrics,
        }
        blob = json.dumps(header, separators=(",", ":")).encode()
        vectors = [] if self.weighted_sum is None else [self.weighted_sum]
        vectors += [c.delta for c in self.individual]
        return _LEN.pack(len(blob)) + blob + b"".join(v.astype("<f4").tobytes() for v in vectors)

    @classmethod
    def decode(cls, data: bytes, parameter_count: int) -> Partial:
        try:
            (n,) = _LEN.unpack_from(data)
            header = json.loads(data[4 : 4 + n])
            body = data[4 + n :]
            contributors = tuple((str(g), int(s)) for g, s in header["contributors"])
            individual_names = [str(g) for g in header["individual"]]
            count = int(bool(header["has_sum"])) + len(individual_names)
            if len(body) != 4 * parameter_count * count:
                raise PartialError(
                    f"partial body of {len(body)} bytes does not hold {count} vectors"
                )
            vectors = [
                np.frombuffer(
                    body[i * 4 * parameter_count : (i + 1) * 4 * parameter_count], "<f4"
                ).astype(np.float32)
                for i in range(count)
            ]
            weighted_sum = vectors.pop(0) if header["has_sum"] else None
            samples = dict(contributors)
            individual = tuple(
                Contribution(g, samples.get(g, 0), v)
                for g, v in zip(individual_names, vectors, strict=True)
            )
            rejections = tuple(
                Rejection(Reason(str(r[0])), r[1], r[2], str(r[3])) for r in header["rejections"]
            )
            return cls(
                str(header["worker"]),
                int(header["round"]),
                contributors,
                weighted_sum,
                individual,
                rejections,
                dict(header.get("metrics", {})),
            )
        except (KeyError, TypeError, ValueError, RecursionError, struct.error, IndexError) as exc:
            raise PartialError(f"malformed partial: {exc}") from None


def make_partial(  # noqa: PLR0917 -- mirrors the Partial fields
    worker: str,
    round_: int,
    contributions: Sequence[Contribution],
    individual: bool,
    rejections: Sequence[Rejection] = (),
    metrics: dict[str, Any] | None = None,
) -> Partial:
    contributors = tuple((c.gateway, c.samples) for c in contributions)
    weighted_sum: Vector | None = None
    if contributions and not individual:
        weighted_sum = np.zeros_like(contributions[0].delta)
        for c in contributions:
            weighted_sum += np.float32(c.samples) * c.delta
    return Partial(
        worker,
        round_,
        contributors,
        weighted_sum,
        tuple(contributions) if individual else (),
        tuple(rejections),
        metrics or {},
    )
