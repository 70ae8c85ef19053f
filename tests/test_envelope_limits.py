"""Envelopes at their exact limits: size, recipient count, body length, every decoder check.

Each malformed envelope is rejected by the named check (exact class and reason) before any
signature is verified, and the limits are probed at their value and one beyond."""

from __future__ import annotations

import pytest

from pqlink import (
    ContentType,
    DecodeError,
    ErrorReason,
    Identity,
    LocalProtocolError,
    PqlinkError,
    Registry,
    Role,
    SigAlg,
    SignatureError,
    open_envelope,
    peek_envelope,
    seal_envelope,
)
from pqlink.envelope import (
    DEFAULT_MAX_ENVELOPE_SIZE,
    MAX_RECIPIENTS,
    RECIPIENT_SLOT_SIZE,
)

from .conftest import Parties


def _raises(exc_type: type[PqlinkError], reason: ErrorReason, call: object, *args: object) -> None:
    with pytest.raises(PqlinkError) as err:
        call(*args)  # type: ignore[operator]
    assert type(err.value) is exc_type, repr(err.value)
    assert err.value.reason is reason, repr(err.value)


def _global(parties: Parties, payload: bytes = b"model") -> bytes:
    return seal_envelope(
        parties.aggregator,
        [parties.gateway.public, parties.other_gateway.public],
        payload,
        content_type=ContentType.GLOBAL_MODEL,
        round=2,
        now=1_800_000_000.0,
    )


def _offsets(frame: bytes) -> dict[str, int]:
    """Where the fields after the fixed header start, from the documented layout."""
    name_len = frame[4]
    count_at = 5 + name_len + 8 + 4 + 8 + 8 + 16
    n = int.from_bytes(frame[count_at : count_at + 2], "big")
    body_len_at = count_at + 2 + n * RECIPIENT_SLOT_SIZE
    body_len = int.from_bytes(frame[body_len_at : body_len_at + 4], "big")
    sig_len_at = body_len_at + 4 + body_len
    return {"count": count_at, "body_len": body_len_at, "sig_len": sig_len_at}


def test_limits_are_the_documented_ones() -> None:
    assert DEFAULT_MAX_ENVELOPE_SIZE == 32 * 1024 * 1024
    assert MAX_RECIPIENTS == 4096
    assert RECIPIENT_SLOT_SIZE == 32 + 1120 + 32


def test_size_limit_exact(parties: Parties) -> None:
    frame = _global(parties)
    assert peek_envelope(frame, max_size=len(frame)).round == 2
    _raises(DecodeError, ErrorReason.TOO_LARGE, peek_envelope, frame, len(frame) - 1)
    assert open_envelope(
        frame, parties.gateway, parties.aggregator_registry(), max_size=len(frame)
    ).payload
    # 32 MiB is read (and found to be garbage after the type byte); one more byte is not
    huge = frame[:1] + bytes(DEFAULT_MAX_ENVELOPE_SIZE)
    _raises(DecodeError, ErrorReason.TOO_LARGE, peek_envelope, huge)
    _raises(DecodeError, ErrorReason.BAD_VERSION, peek_envelope, huge[:DEFAULT_MAX_ENVELOPE_SIZE])


def test_body_length_counts_the_tag(parties: Parties) -> None:
    for payload in (b"", b"x" * 100):
        frame = _global(parties, payload)
        at = _offsets(frame)["body_len"]
        assert int.from_bytes(frame[at : at + 4], "big") == len(payload) + 16
        opened = open_envelope(frame, parties.other_gateway, parties.aggregator_registry())
        assert opened.payload == payload


def test_body_shorter_than_a_tag(parties: Parties) -> None:
    frame = _global(parties, b"")
    o = _offsets(frame)
    cut = frame[: o["body_len"]] + (15).to_bytes(4, "big") + frame[o["body_len"] + 4 + 1 :]
    _raises(DecodeError, ErrorReason.BODY_TOO_SHORT, peek_envelope, cut)


def test_trailing_bytes_after_the_signature(parties: Parties) -> None:
    frame = _global(parties)
    _raises(DecodeError, ErrorReason.TRAILING_BYTES, peek_envelope, frame + b"\0")
    _raises(
        DecodeError,
        ErrorReason.TRAILING_BYTES,
        open_envelope,
        frame + b"\0",
        parties.gateway,
        parties.aggregator_registry(),
    )


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, 0x03, ErrorReason.WRONG_TYPE),
        (1, 0x02, ErrorReason.BAD_VERSION),
        (1, 0x00, ErrorReason.BAD_VERSION),
        (2, 0x00, ErrorReason.UNKNOWN_CONTENT_TYPE),
        (2, 0x06, ErrorReason.UNKNOWN_CONTENT_TYPE),  # one past the highest content type
        (3, 0x03, ErrorReason.UNKNOWN_SIG_ALG),
        (3, 0x01, ErrorReason.BAD_SIGNATURE_LENGTH),  # ML-DSA-44 with a 3309-byte signature
    ],
)
def test_header_fields(parties: Parties, offset: int, value: int, reason: ErrorReason) -> None:
    frame = bytearray(_global(parties))
    frame[offset] = value
    _raises(DecodeError, reason, peek_envelope, bytes(frame))


@pytest.mark.parametrize("count", [0, MAX_RECIPIENTS + 1])
def test_recipient_count_bounds(parties: Parties, count: int) -> None:
    frame = bytearray(_global(parties))
    at = _offsets(bytes(frame))["count"]
    frame[at : at + 2] = count.to_bytes(2, "big")
    _raises(DecodeError, ErrorReason.BAD_COUNT, peek_envelope, bytes(frame))


def test_recipient_count_at_the_maximum_is_read(parties: Parties) -> None:
    frame = bytearray(_global(parties))
    at = _offsets(bytes(frame))["count"]
    frame[at : at + 2] = MAX_RECIPIENTS.to_bytes(2, "big")
    # accepted as a count: the decoder then runs out of slots, not out of patience
    _raises(DecodeError, ErrorReason.TRUNCATED, peek_envelope, bytes(frame))


def test_duplicate_recipient_slot(parties: Parties) -> None:
    frame = bytearray(_global(parties))
    first = _offsets(bytes(frame))["count"] + 2
    second = first + RECIPIENT_SLOT_SIZE
    frame[second : second + 32] = frame[first : first + 32]
    _raises(DecodeError, ErrorReason.DUPLICATE_RECIPIENT, peek_envelope, bytes(frame))


def test_signature_length_field(parties: Parties) -> None:
    frame = bytearray(_global(parties))
    at = _offsets(bytes(frame))["sig_len"]
    assert int.from_bytes(frame[at : at + 2], "big") == 3309
    frame[at : at + 2] = (2420).to_bytes(2, "big")
    _raises(DecodeError, ErrorReason.BAD_SIGNATURE_LENGTH, peek_envelope, bytes(frame))


def test_signature_algorithm_must_be_the_enrolled_one(parties: Parties) -> None:
    # a sensor-grade ML-DSA-44 sender whose name is enrolled with ML-DSA-65
    small = Identity.generate("aggregator", Role.SENSOR, SigAlg.ML_DSA_44)
    frame = seal_envelope(
        small, [parties.gateway.public], b"x", content_type=ContentType.GLOBAL_MODEL, round=1
    )
    assert peek_envelope(frame).sig_alg is SigAlg.ML_DSA_44
    _raises(
        DecodeError,
        ErrorReason.SIG_ALG_MISMATCH,
        open_envelope,
        frame,
        parties.gateway,
        parties.aggregator_registry(),
    )


def test_forged_signature_and_not_addressed(parties: Parties) -> None:
    frame = bytearray(_global(parties))
    frame[-1] ^= 1
    _raises(
        SignatureError,
        ErrorReason.BAD_SIGNATURE,
        open_envelope,
        bytes(frame),
        parties.gateway,
        parties.aggregator_registry(),
    )
    _raises(
        DecodeError,
        ErrorReason.NOT_A_RECIPIENT,
        open_envelope,
        _global(parties),
        parties.aggregator,
        parties.aggregator_registry(),
    )


def test_recipient_without_kem_key(parties: Parties) -> None:
    with pytest.raises(LocalProtocolError) as err:
        seal_envelope(parties.gateway, [parties.sensor.public], b"x", content_type=1, round=1)  # type: ignore[arg-type]
    assert err.value.reason is ErrorReason.BAD_KEY
    reg = Registry()
    reg.enroll(parties.gateway.public)
    frame = seal_envelope(
        parties.gateway, [parties.aggregator.public], b"x", content_type=ContentType(1), round=1
    )
    _raises(LocalProtocolError, ErrorReason.BAD_KEY, open_envelope, frame, parties.sensor, reg)


def test_seal_recipient_count_and_duplicates(parties: Parties) -> None:
    def seal(recipients: list[object]) -> bytes:
        return seal_envelope(
            parties.aggregator,
            recipients,  # type: ignore[arg-type]
            b"x",
            content_type=ContentType.GLOBAL_MODEL,
            round=1,
        )

    _raises(LocalProtocolError, ErrorReason.BAD_COUNT, seal, [])
    _raises(LocalProtocolError, ErrorReason.BAD_COUNT, seal, [parties.gateway.public] * 4097)
    # 4096 passes the count check; listing one gateway twice is then the error
    _raises(
        LocalProtocolError, ErrorReason.DUPLICATE_RECIPIENT, seal, [parties.gateway.public] * 4096
    )


@pytest.mark.parametrize(
    ("field", "bits"), [("round", 64), ("model_version", 32), ("sample_count", 64)]
)
def test_metadata_integer_bounds(parties: Parties, field: str, bits: int) -> None:
    def seal(value: int) -> bytes:
        kwargs = {"round": 0, "model_version": 0, "sample_count": 0, field: value}
        return seal_envelope(
            parties.gateway,
            [parties.aggregator.public],
            b"x",
            content_type=ContentType.MODEL_UPDATE,
            **kwargs,
        )

    assert getattr(peek_envelope(seal((1 << bits) - 1)), field) == (1 << bits) - 1
    assert getattr(peek_envelope(seal(0)), field) == 0
    for bad in (1 << bits, -1):
        with pytest.raises(ValueError, match=f"{field} must be in"):
            seal(bad)


def test_metadata_round_trip_and_created_time(parties: Parties) -> None:
    frame = seal_envelope(
        parties.gateway,
        [parties.aggregator.public],
        b"update",
        content_type=ContentType.MODEL_UPDATE,
        round=9,
        model_version=4,
        sample_count=77,
        now=1234.5678,
    )
    meta = open_envelope(frame, parties.aggregator, parties.gateway_registry()).metadata
    assert meta.sender == "gw-01"
    assert meta.content_type is ContentType.MODEL_UPDATE
    assert (meta.round, meta.model_version, meta.sample_count) == (9, 4, 77)
    assert meta.created_ms == 1234567
    assert meta.sig_alg is SigAlg.ML_DSA_65
    assert meta.recipients == (bytes.fromhex(parties.aggregator.public.fingerprint),)
    assert len(meta.envelope_id) == 16
    assert peek_envelope(memoryview(frame)) == meta


def test_metadata_defaults_are_zero(parties: Parties) -> None:
    frame = seal_envelope(
        parties.aggregator,
        [parties.gateway.public],
        b"x",
        content_type=ContentType.ROUND_ANNOUNCEMENT,
        round=5,
    )
    meta = peek_envelope(frame)
    assert (meta.model_version, meta.sample_count) == (0, 0)
    assert meta.content_type is ContentType.ROUND_ANNOUNCEMENT
