"""Secure-aggregation messages between gateways and the coordinator: a typed frame around the
pqlink.secagg protocol bytes, and the announcement that fixes one secure round's parameters."""

from __future__ import annotations

import enum
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pqlink import DecodeError
from pqlink.secagg import InputEncoding, RoundConfig, SecAggParameterError
from wire.weighting import SampleWeighting

_MAGIC = b"ISA1"
_HEAD = struct.Struct(">4sBQ")  # magic, kind, round
MAX_FRAME_BODY = 64 * 1024 * 1024


class SecAggKind(enum.IntEnum):
    """What a frame carries; the direction is part of the kind."""

    # coordinator -> gateway
    ANNOUNCEMENT = 1  # SecureRoundAnnouncement (JSON)
    ADVERTS = 2  # bundle of neighbours' adverts
    # 3 carried the ciphertexts of the former separate key-agreement stage
    SHARES = 4  # bundle of neighbours' keys and shares for this gateway
    UNMASK_REQUEST = 5
    ABORTED = 6  # the round stopped: discard its state, reveal nothing more
    # AnnouncedAdverts: the announcement with the neighbours' adverts, every participant
    # having sent its advert ahead, with its answer to the previous round's unmasking request
    ANNOUNCED_ADVERTS = 7
    # gateway -> coordinator
    ADVERT = 16
    # 17 carried the former separate key agreement
    SHARE_KEYS = 18  # per neighbour: encapsulations, sealed shares, escrowed half
    MASKED_INPUT = 19
    UNMASK_RESPONSE = 20


#: Gateway messages that carry their sender's own ML-DSA signature and nothing secret: they
#: travel as bare frames (the signature inside says who sent them), all others in envelopes.
SELF_SIGNED_KINDS: Final = frozenset({SecAggKind.ADVERT, SecAggKind.SHARE_KEYS})


def is_bare_frame(data: bytes) -> bool:
    """Whether a message claims to be a bare frame rather than an envelope (nothing checked)."""
    return data[: len(_MAGIC)] == _MAGIC


@dataclass(frozen=True, slots=True)
class SecAggFrame:
    """One message of one secure round. Down, inside a signed batch (pqlink.signed_batch);
    up, inside a sealed envelope, or bare for the SELF_SIGNED_KINDS; either way a signature
    says who sent it."""

    kind: SecAggKind
    round: int
    body: bytes

    def encode(self) -> bytes:
        if not 0 <= self.round < 1 << 64:
            raise ValueError(f"round {self.round} is not a u64")
        if len(self.body) > MAX_FRAME_BODY:
            raise ValueError(f"frame body of {len(self.body)} bytes over {MAX_FRAME_BODY}")
        return _HEAD.pack(_MAGIC, self.kind, self.round) + self.body

    @classmethod
    def decode(cls, data: bytes) -> SecAggFrame:
        if len(data) < _HEAD.size:
            raise DecodeError(f"secure-aggregation frame of {len(data)} bytes is truncated")
        magic, kind, round_ = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise DecodeError(f"secure-aggregation frame: wrong magic {magic!r}")
        if len(data) - _HEAD.size > MAX_FRAME_BODY:
            raise DecodeError("secure-aggregation frame: body too large")
        try:
            return cls(SecAggKind(kind), round_, data[_HEAD.size :])
        except ValueError:
            raise DecodeError(f"secure-aggregation frame: unknown kind {kind}") from None


@dataclass(frozen=True, slots=True)
class SecureRoundAnnouncement:
    """Everything a gateway needs to join one secure round: the participants by name with
    their protocol ids, the graph and threshold, and the input encoding (clip, precision,
    ring bits, per-gateway noise). A gateway checks every name against the registry of gateway
    identities it was given at enrolment before it takes part.

    `dimension` and `clip` are the model's; with `weight_cap` > 0 the round is sample-weighted
    (wire.weighting): the masked vector has one more coordinate and is clipped at sqrt(2) C."""

    round: int
    graph_seed: bytes
    participants: Mapping[str, int]
    degree: int
    threshold: int
    min_survivors: int
    dimension: int
    clip: float
    precision_bits: int
    modulus_bits: int
    noise_std: float
    weight_cap: int = 0

    @property
    def weighting(self) -> SampleWeighting | None:
        return SampleWeighting(self.weight_cap) if self.weight_cap else None

    @property
    def encoded_dimension(self) -> int:
        w = self.weighting
        return self.dimension if w is None else w.encoding_dimension(self.dimension)

    @property
    def encoded_clip(self) -> float:
        w = self.weighting
        return self.clip if w is None else w.encoding_clip(self.clip)

    def round_config(self) -> RoundConfig:
        """The pqlink round configuration; SecAggParameterError if the values do not fit."""
        encoding = InputEncoding(
            self.encoded_dimension,
            self.encoded_clip,
            self.precision_bits,
            self.modulus_bits,
            self.noise_std,
        )
        return RoundConfig(
            self.round,
            self.graph_seed,
            tuple(sorted(self.participants.values())),
            self.degree,
            self.threshold,
            self.min_survivors,
            encoding,
        )

    def name_of(self, client_id: int) -> str:
        for name, u in self.participants.items():
            if u == client_id:
                return name
        raise KeyError(client_id)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "round": self.round,
            "graph_seed": self.graph_seed.hex(),
            "participants": dict(sorted(self.participants.items())),
            "degree": self.degree,
            "threshold": self.threshold,
            "min_survivors": self.min_survivors,
            "dimension": self.dimension,
            "clip": self.clip,
            "precision_bits": self.precision_bits,
            "modulus_bits": self.modulus_bits,
            "noise_std": self.noise_std,
            "weight_cap": self.weight_cap,
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> SecureRoundAnnouncement:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise DecodeError("secure round announcement: not an object")
            ints = {}
            for key in ("round", "degree", "threshold", "min_survivors", "dimension"):
                ints[key] = _count(doc, key)
            ints["precision_bits"] = _count(doc, "precision_bits")
            ints["modulus_bits"] = _count(doc, "modulus_bits")
            ints["weight_cap"] = _count(doc, "weight_cap")
            floats = {key: _number(doc, key) for key in ("clip", "noise_std")}
            people = doc.get("participants")
            if not isinstance(people, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in people.items()
            ):
                raise DecodeError("secure round announcement: participants is not a name map")
            seed = bytes.fromhex(str(doc.get("graph_seed")))
            unknown = set(doc) - {*ints, *floats, "participants", "graph_seed"}
            if unknown:
                raise DecodeError(f"secure round announcement: unknown keys {sorted(unknown)}")
            out = cls(
                round=ints["round"],
                graph_seed=seed,
                participants=dict(people),
                degree=ints["degree"],
                threshold=ints["threshold"],
                min_survivors=ints["min_survivors"],
                dimension=ints["dimension"],
                clip=floats["clip"],
                precision_bits=ints["precision_bits"],
                modulus_bits=ints["modulus_bits"],
                noise_std=floats["noise_std"],
                weight_cap=ints["weight_cap"],
            )
            out.round_config()  # validates ranges, ids and threshold together
        except SecAggParameterError as exc:
            raise DecodeError(f"secure round announcement: {exc}") from None
        except ValueError as exc:
            raise DecodeError(f"secure round announcement: {exc}") from None
        return out


_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class AnnouncedAdverts:
    """A pipelined round's opening, to one gateway: the announcement and the bundle of its
    neighbours' adverts (pqlink.secagg bytes), which they made ahead of the round."""

    announcement: SecureRoundAnnouncement
    adverts: bytes

    def encode(self) -> bytes:
        head = self.announcement.encode()
        return _LENGTH.pack(len(head)) + head + self.adverts

    @classmethod
    def decode(cls, data: bytes) -> AnnouncedAdverts:
        if len(data) < _LENGTH.size:
            raise DecodeError(f"announced adverts of {len(data)} bytes are truncated")
        (n,) = _LENGTH.unpack_from(data)
        if n > len(data) - _LENGTH.size:
            raise DecodeError(f"announced adverts: announcement of {n} bytes is truncated")
        end = _LENGTH.size + n
        return cls(SecureRoundAnnouncement.decode(data[_LENGTH.size : end]), data[end:])


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DecodeError(f"secure round announcement: {key} = {value!r} is not a count")
    return value


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DecodeError(f"secure round announcement: {key} = {value!r} is not a number")
    return float(value)
