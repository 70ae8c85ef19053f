"""Update validation at its limits: envelope size and sample count at max and max+1, the norm
at its bound, and every rejection with its exact reason, detail, gateway and round."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregator.validation import (
    UpdateRejectedError,
    ValidationLimits,
    ValidUpdate,
    validate_update,
)
from pqlink import ContentType, DecodeError, Identity, Registry, Role, peek_envelope, seal_envelope
from wire.envelopes import UnsealedCodec
from wire.fl import ModelUpdate
from wire.reasons import Reason

from .conftest import Parties

N = 4
DELTA = np.array([3.0, 0.0, -4.0, 0.0], np.float32)  # norm exactly 5
ENVELOPE_CONTEXT = b"pqlink1 envelope"  # the signature context of sealed envelopes


def _payload(delta: np.ndarray = DELTA, count: int | None = None) -> bytes:
    return ModelUpdate(
        delta.astype("<f4").tobytes(), delta.size if count is None else count, {"loss": 0.25}
    ).encode()


def _seal(
    sender: Identity,
    to: Identity,
    payload: bytes,
    *,
    samples: int = 10,
    round_: int = 3,
    content_type: ContentType = ContentType.MODEL_UPDATE,
) -> bytes:
    return seal_envelope(
        sender, [to.public], payload, content_type=content_type, round=round_, sample_count=samples
    )


def _limits(**kw: object) -> ValidationLimits:
    base: dict[str, object] = {
        "parameter_count": N,
        "max_update_norm": 5.0,
        "max_envelope_bytes": 64 * 1024,
        "max_samples": 1000,
    }
    base.update(kw)
    return ValidationLimits(**base)  # type: ignore[arg-type]


def _validate(
    parties: Parties,
    frame: bytes,
    limits: ValidationLimits | None = None,
    codec: UnsealedCodec | None = None,
) -> ValidUpdate:
    return validate_update(
        frame, parties.aggregator, parties.gateway_registry(), limits or _limits(), codec=codec
    )


def _rejected(
    parties: Parties,
    frame: bytes,
    limits: ValidationLimits | None = None,
    registry: Registry | None = None,
    codec: UnsealedCodec | None = None,
) -> UpdateRejectedError:
    with pytest.raises(UpdateRejectedError) as info:
        validate_update(
            frame,
            parties.aggregator,
            registry or parties.gateway_registry(),
            limits or _limits(),
            codec=codec,
        )
    assert type(info.value) is UpdateRejectedError
    return info.value


def _fields(err: UpdateRejectedError) -> tuple[Reason, str, str | None, int | None]:
    assert str(err) == f"{err.reason}: {err.detail}"
    return (err.reason, err.detail, err.gateway, err.round)


def test_default_limits() -> None:
    limits = ValidationLimits(parameter_count=7)
    assert (limits.max_update_norm, limits.max_envelope_bytes, limits.max_samples) == (
        1e3,
        4 * 1024 * 1024,
        10_000_000,
    )


def test_a_valid_update_keeps_every_field(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload(), samples=7, round_=9)
    valid = _validate(parties, frame)
    assert valid.contribution.gateway == "gw-01"
    assert valid.contribution.samples == 7
    assert valid.contribution.delta.dtype == np.float32
    assert valid.contribution.delta.tolist() == DELTA.tolist()
    assert valid.round == 9
    assert valid.envelope_id == peek_envelope(frame).envelope_id
    assert len(valid.envelope_id) == 16
    assert valid.metrics == {"loss": 0.25}


def test_envelope_size_at_the_limit_and_one_over(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    size = len(frame)
    assert _validate(parties, frame, _limits(max_envelope_bytes=size)).round == 3
    err = _rejected(parties, frame, _limits(max_envelope_bytes=size - 1))
    assert _fields(err) == ("oversized", f"{size} bytes > {size - 1}", None, None)


@pytest.mark.parametrize("samples", [1, 999, 1000])
def test_sample_counts_accepted(parties: Parties, samples: int) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload(), samples=samples)
    assert _validate(parties, frame).contribution.samples == samples


@pytest.mark.parametrize("samples", [0, 1001, 2**63])
def test_sample_counts_rejected(parties: Parties, samples: int) -> None:
    # a gateway claiming a huge count would otherwise dominate the weighted average
    frame = _seal(parties.gateway, parties.aggregator, _payload(), samples=samples)
    err = _rejected(parties, frame)
    assert _fields(err) == ("bad_sample_count", str(samples), "gw-01", 3)


def test_norm_at_the_bound_and_just_over(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    assert _validate(parties, frame, _limits(max_update_norm=5.0)).contribution.samples == 10
    err = _rejected(parties, frame, _limits(max_update_norm=4.99))
    assert _fields(err) == ("norm_exceeded", "norm 5 > 4.99", "gw-01", 3)


def test_wrong_shape(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload(np.ones(N + 1, np.float32)))
    err = _rejected(parties, frame)
    assert _fields(err) == ("wrong_shape", f"{N + 1} parameters, expected {N}", "gw-01", 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(parties: Parties, bad: float) -> None:
    delta = np.array([0.0, bad, 0.0, 0.0], np.float32)
    err = _rejected(parties, _seal(parties.gateway, parties.aggregator, _payload(delta)))
    assert _fields(err) == ("non_finite", "NaN or infinity in the update", "gw-01", 3)


def test_wrong_content_type(parties: Parties) -> None:
    frame = _seal(
        parties.gateway, parties.aggregator, _payload(), content_type=ContentType.GLOBAL_MODEL
    )
    err = _rejected(parties, frame)
    assert _fields(err) == ("wrong_type", "GLOBAL_MODEL", "gw-01", 3)


def test_authentic_but_unparseable_payload(parties: Parties) -> None:
    err = _rejected(parties, _seal(parties.gateway, parties.aggregator, b"not an update"))
    with pytest.raises(DecodeError) as decoder:
        ModelUpdate.decode(b"not an update")
    assert _fields(err) == ("malformed", str(decoder.value), "gw-01", 3)


def test_revoked_gateway(parties: Parties) -> None:
    registry = parties.gateway_registry()
    registry.revoke("gw-01")
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    err = _rejected(parties, frame, registry=registry)
    assert (err.reason, err.gateway, err.round) == ("revoked", None, None)


def test_unenrolled_gateway(parties: Parties) -> None:
    frame = _seal(Identity.generate("gw-77", Role.GATEWAY), parties.aggregator, _payload())
    err = _rejected(parties, frame)
    assert (err.reason, err.gateway, err.round) == ("unenrolled", None, None)


def test_forged_signature(parties: Parties) -> None:
    impostor = Identity(
        "gw-01", Role.GATEWAY, parties.other_gateway.signing_key, parties.other_gateway.kem_key
    )
    err = _rejected(parties, _seal(impostor, parties.aggregator, _payload()))
    assert (err.reason, err.gateway, err.round) == (Reason.BAD_SIGNATURE, None, None)


def test_signed_but_undecryptable_body_is_tampered(parties: Parties) -> None:
    # an enrolled gateway (or its stolen key) signs a body that does not authenticate
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    signed = bytearray(frame[: -(2 + parties.gateway.signing_key.alg.signature_size)])
    signed[-1] ^= 1
    signature = parties.gateway.signing_key.sign(bytes(signed), ENVELOPE_CONTEXT)
    forged = bytes(signed) + len(signature).to_bytes(2, "big") + signature
    err = _rejected(parties, forged)
    assert (err.reason, err.gateway, err.round) == ("tampered", None, None)


def test_truncated_envelope_is_malformed(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    err = _rejected(parties, frame[:-10])
    assert (err.reason, err.gateway, err.round) == ("malformed", None, None)


def _unsealed(meta: dict[str, object], payload: bytes | None = None) -> bytes:
    blob = json.dumps(meta).encode()
    body = _payload() if payload is None else payload
    return b"UNSEALED" + len(blob).to_bytes(4, "big") + blob + body


def test_unsealed_baseline_frame(parties: Parties) -> None:
    frame = _unsealed({"sender": "gw-05", "type": 1, "round": 4, "version": 0, "samples": 12})
    valid = _validate(parties, frame, codec=UnsealedCodec())
    assert (valid.contribution.gateway, valid.contribution.samples) == ("gw-05", 12)
    assert (valid.round, valid.envelope_id, valid.metrics) == (4, b"", {"loss": 0.25})
    assert valid.contribution.delta.tolist() == DELTA.tolist()


@pytest.mark.parametrize(
    ("meta", "detail"),
    [
        ({"type": 1, "round": 4, "version": 0, "samples": 12}, "unsealed frame: 'sender'"),
        ({"sender": "gw-05", "type": 1, "round": "four", "version": 0, "samples": 12}, None),
        ({"sender": "gw-05", "type": 1, "round": 4, "version": 0, "samples": None}, None),
    ],
)
def test_unsealed_frame_with_bad_metadata(
    parties: Parties, meta: dict[str, object], detail: str | None
) -> None:
    err = _rejected(parties, _unsealed(meta), codec=UnsealedCodec())
    assert (err.reason, err.gateway, err.round) == ("malformed", None, None)
    assert err.detail.startswith("unsealed frame: ")
    if detail is not None:
        assert err.detail == detail


def test_sealed_frame_is_not_an_unsealed_one(parties: Parties) -> None:
    frame = _seal(parties.gateway, parties.aggregator, _payload())
    err = _rejected(parties, frame, codec=UnsealedCodec())
    assert (err.reason, err.detail) == ("malformed", "not an unsealed benchmark frame")


def test_unsealed_frame_is_still_checked(parties: Parties) -> None:
    frame = _unsealed({"sender": "gw-05", "type": 1, "round": 4, "version": 0, "samples": 1001})
    err = _rejected(parties, frame, codec=UnsealedCodec())
    assert _fields(err) == ("bad_sample_count", "1001", "gw-05", 4)


def test_a_limit_above_the_envelope_default_is_honoured(parties: Parties) -> None:
    # the aggregator's own limit, not pqlink's 32 MiB default, bounds what it opens
    count = 8 * 1024 * 1024 + 1024
    delta = np.zeros(count, np.float32)
    frame = _seal(parties.gateway, parties.aggregator, _payload(delta))
    assert len(frame) > 32 * 1024 * 1024
    limits = _limits(parameter_count=count, max_envelope_bytes=len(frame))
    assert _validate(parties, frame, limits).contribution.delta.size == count
