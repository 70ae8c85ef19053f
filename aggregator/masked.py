"""Secure mode of the crypto workers: open each sealed masked input, check it, and fold the
masked vectors of one round into a partial sum modulo 2^k; no worker sees an unmasked update."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.errors import AggregatorError
from aggregator.partials import Rejection
from pqlink import ContentType, DecodeError, Identity, PqlinkError, Registry
from pqlink.secagg import MaskedVector, SecAggError, open_masked_input
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.reasons import Reason, reason_for
from wire.secagg import SecAggFrame, SecAggKind

_LEN = struct.Struct(">I")
U64 = np.ndarray[tuple[int], np.dtype[np.uint64]]


class MaskedPartialError(AggregatorError):
    """A masked partial sum is malformed."""


@dataclass(frozen=True, slots=True)
class MaskedPartial:
    """The sum modulo 2^k of some gateways' masked inputs for one round, with who they are
    (envelope sender and the protocol id its input claims: the coordinator checks the pair)."""

    worker: str
    round: int
    senders: tuple[tuple[str, int], ...]
    modulus_bits: int
    total: U64 | None
    rejections: tuple[Rejection, ...] = ()

    def encode(self) -> bytes:
        header = {
            "worker": self.worker,
            "round": self.round,
            "senders": [list(s) for s in self.senders],
            "modulus_bits": self.modulus_bits,
            "rejections": [[r.reason, r.gateway, r.round, r.detail] for r in self.rejections],
        }
        blob = json.dumps(header, separators=(",", ":")).encode()
        body = b"" if self.total is None else self.total.astype("<u8").tobytes()
        return _LEN.pack(len(blob)) + blob + body

    @classmethod
    def decode(cls, data: bytes) -> MaskedPartial:
        try:
            (n,) = _LEN.unpack_from(data)
            header = json.loads(data[4 : 4 + n])
            body = data[4 + n :]
            if len(body) % 8:
                raise MaskedPartialError(f"masked partial body of {len(body)} bytes")
            bits = int(header["modulus_bits"])
            total = np.frombuffer(body, "<u8").astype(np.uint64) if body else None
            return cls(
                str(header["worker"]),
                int(header["round"]),
                tuple((str(g), int(u)) for g, u in header["senders"]),
                bits,
                total,
                tuple(
                    Rejection(Reason(str(r[0])), r[1], r[2], str(r[3]))
                    for r in header["rejections"]
                ),
            )
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise MaskedPartialError(f"malformed masked partial: {exc}") from None


@dataclass(frozen=True, slots=True)
class CheckedMasked:
    outcome: tuple[str, MaskedVector] | Rejection


class MaskedFolder:
    """The sans-IO secure half of a crypto worker: sealed masked inputs in, partials out."""

    def __init__(
        self,
        name: str,
        identity: Identity,
        gateways: Registry,
        *,
        max_envelope_bytes: int = 64 * 1024 * 1024,
        codec: EnvelopeCodec | None = None,
    ) -> None:
        self.name = name
        self.identity = identity
        self.gateways = gateways
        self.max_envelope_bytes = max_envelope_bytes
        self.codec = codec or SealedCodec()

    def check(self, frame: bytes) -> CheckedMasked:
        try:
            opened = self.codec.open(
                frame, self.identity, self.gateways, max_size=self.max_envelope_bytes
            )
        except PqlinkError as exc:
            return CheckedMasked(Rejection(reason_for(exc), None, None, str(exc)))
        who, rnd = opened.sender, opened.round
        if opened.content_type is not ContentType.MASKED_INPUT:
            return CheckedMasked(Rejection(Reason.WRONG_TYPE, who, rnd, opened.content_type.name))
        try:
            inner = SecAggFrame.decode(opened.payload)
            if inner.kind is not SecAggKind.MASKED_INPUT or inner.round != rnd:
                raise DecodeError(f"{inner.kind.name} of round {inner.round} in a masked input")
            masked = open_masked_input(inner.body)
        except (DecodeError, SecAggError) as exc:
            return CheckedMasked(Rejection(Reason.MALFORMED, who, rnd, str(exc)))
        if masked.round_id != rnd:
            return CheckedMasked(Rejection(Reason.MALFORMED, who, rnd, "round differs"))
        return CheckedMasked((who, masked))

    def fold(self, checked: Sequence[CheckedMasked]) -> list[MaskedPartial]:
        """One partial per (round, ring, length); a gateway twice in a batch counts once."""
        groups: dict[tuple[int, int, int], dict[str, MaskedVector]] = {}
        rejections: list[Rejection] = []
        for item in checked:
            if isinstance(item.outcome, Rejection):
                rejections.append(item.outcome)
                continue
            who, m = item.outcome
            group = groups.setdefault((m.round_id, m.modulus_bits, m.vector.size), {})
            if who in group:
                rejections.append(Rejection(Reason.DUPLICATE, who, m.round_id, "twice in a batch"))
                continue
            group[who] = m
        out: list[MaskedPartial] = []
        for (rnd, bits, _), group in sorted(groups.items()):
            ring = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
            total = np.zeros_like(next(iter(group.values())).vector)
            for m in group.values():
                total += m.vector  # wraps modulo 2^64, and 2^k divides 2^64
            total &= ring
            senders = tuple(sorted((who, m.sender) for who, m in group.items()))
            out.append(MaskedPartial(self.name, rnd, senders, bits, total))
        if rejections:
            if out:
                first = out[0]
                out[0] = MaskedPartial(
                    first.worker,
                    first.round,
                    first.senders,
                    first.modulus_bits,
                    first.total,
                    tuple(rejections),
                )
            else:
                out.append(MaskedPartial(self.name, -1, (), 0, None, tuple(rejections)))
        return out
