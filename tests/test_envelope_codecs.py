"""Checks the two envelope codecs a deployment picks from at wiring time: the sealed one
(pqlink envelopes, and global-model broadcast deliveries opened with the gateway's epoch-key
cache) with every metadata field carried through, and the crypto-off baseline's unsealed
frames with their exact byte layout, size limit and each malformed-frame refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pqlink import ContentType, DecodeError, ErrorReason, Registry, open_envelope, peek_envelope
from pqlink.broadcast import EpochKeyCache, join_delivery, new_epoch, peek_broadcast, seal_broadcast
from wire.envelopes import EnvelopeCodec, Opened, SealedCodec, UnsealedCodec, envelope_codec

from .conftest import Parties


def _update(codec: EnvelopeCodec, parties: Parties, payload: bytes = b"update", **kw: Any) -> bytes:
    """`payload` as a model update from the gateway to the aggregator, round 5 unless `kw`
    says otherwise."""
    kw.setdefault("round", 5)
    kw.setdefault("content_type", ContentType.MODEL_UPDATE)
    return codec.seal(parties.gateway, [parties.aggregator.public], payload, **kw)


# --- choosing a codec -----------------------------------------------------------------------


def test_the_crypto_off_switch_picks_the_unsealed_codec() -> None:
    assert type(envelope_codec(True)) is UnsealedCodec
    assert type(envelope_codec(False)) is SealedCodec


# --- sealed envelopes -----------------------------------------------------------------------


def test_sealed_envelope_carries_version_and_sample_count(parties: Parties) -> None:
    frame = _update(SealedCodec(), parties, model_version=4, sample_count=30)
    meta = open_envelope(frame, parties.aggregator, parties.gateway_registry()).metadata
    assert (meta.sender, meta.content_type, meta.round) == ("gw-01", ContentType.MODEL_UPDATE, 5)
    assert (meta.model_version, meta.sample_count) == (4, 30)


def test_sealed_envelope_defaults_to_version_and_sample_count_zero(parties: Parties) -> None:
    frame = SealedCodec().seal(
        parties.aggregator,
        [parties.gateway.public],
        b"announce",
        content_type=ContentType.ROUND_ANNOUNCEMENT,
        round=2,
    )
    meta = peek_envelope(frame)
    assert (meta.round, meta.model_version, meta.sample_count) == (2, 0, 0)


def test_sealed_codec_opens_an_envelope_into_its_metadata_and_payload(parties: Parties) -> None:
    frame = _update(SealedCodec(), parties, model_version=4, sample_count=30)
    envelope_id = peek_envelope(frame).envelope_id
    assert len(envelope_id) == 16
    opened = SealedCodec().open(frame, parties.aggregator, parties.gateway_registry())
    assert opened == Opened("gw-01", ContentType.MODEL_UPDATE, 5, 4, 30, envelope_id, b"update")


def test_sealed_codec_peeks_the_round_of_an_envelope(parties: Parties) -> None:
    frame = _update(SealedCodec(), parties, round=12)
    assert SealedCodec().peek_round(frame) == 12


# --- sealed global-model broadcasts, as a gateway keeps them ---------------------------------


def test_sealed_codec_opens_a_broadcast_delivery_with_its_broadcast_id(
    parties: Parties,
) -> None:
    epoch = new_epoch([parties.gateway.public, parties.other_gateway.public])
    body = seal_broadcast(
        parties.aggregator,
        epoch,
        b"global model",
        content_type=ContentType.GLOBAL_MODEL,
        round=7,
        model_version=3,
    ).body
    frame = join_delivery(body, epoch.entries["gw-01"])
    broadcast_id = peek_broadcast(body).broadcast_id
    opened = SealedCodec().open(frame, parties.gateway, parties.aggregator_registry())
    # a broadcast counts no samples: that field is zero
    assert opened == Opened(
        "aggregator", ContentType.GLOBAL_MODEL, 7, 3, 0, broadcast_id, b"global model"
    )


def test_gateway_codec_unwraps_each_key_epoch_once(parties: Parties) -> None:
    epoch = new_epoch([parties.gateway.public])
    entry = epoch.entries["gw-01"]
    codec = SealedCodec()
    assert isinstance(codec.epoch_keys, EpochKeyCache)
    assert len(codec.epoch_keys) == 0
    for round_ in (1, 2, 3):
        body = seal_broadcast(
            parties.aggregator,
            epoch,
            b"model %d" % round_,
            content_type=ContentType.GLOBAL_MODEL,
            round=round_,
        ).body
        opened = codec.open(
            join_delivery(body, entry), parties.gateway, parties.aggregator_registry()
        )
        assert (opened.round, opened.payload) == (round_, b"model %d" % round_)
    assert len(codec.epoch_keys) == 1
    assert (codec.epoch_keys.misses, codec.epoch_keys.hits) == (1, 2)


def test_broadcast_delivery_body_size_limit_is_inclusive(parties: Parties) -> None:
    epoch = new_epoch([parties.gateway.public])
    body = seal_broadcast(
        parties.aggregator, epoch, b"x" * 100, content_type=ContentType.GLOBAL_MODEL, round=1
    ).body
    frame = join_delivery(body, epoch.entries["gw-01"])
    senders = parties.aggregator_registry()
    opened = SealedCodec().open(frame, parties.gateway, senders, max_size=len(body))
    assert opened.payload == b"x" * 100
    with pytest.raises(DecodeError, match=f"broadcast of {len(body)} bytes exceeds"):
        SealedCodec().open(frame, parties.gateway, senders, max_size=len(body) - 1)


# --- unsealed frames (the crypto-off baseline) -----------------------------------------------

#: The metadata of an update from gw-01 for round 5 at version 4 with 30 samples, as compact
#: JSON in the key order the unsealed codec writes.
META_5 = b'{"sender":"gw-01","type":1,"round":5,"version":4,"samples":30}'


def _frame(meta: bytes, payload: bytes = b"payload", length: int | None = None) -> bytes:
    """UNSEALED | u32 length of the JSON metadata | metadata | payload."""
    n = len(meta) if length is None else length
    return b"UNSEALED" + n.to_bytes(4, "big") + meta + payload


def test_unsealed_frame_is_the_payload_after_its_compact_json_metadata(
    parties: Parties,
) -> None:
    frame = _update(UnsealedCodec(), parties, b"payload", model_version=4, sample_count=30)
    assert len(META_5) == 62
    assert frame == b"UNSEALED\x00\x00\x00\x3e" + META_5 + b"payload"


def test_unsealed_frame_defaults_to_version_and_sample_count_zero(parties: Parties) -> None:
    frame = UnsealedCodec().seal(
        parties.aggregator,
        [parties.gateway.public],
        b"",
        content_type=ContentType.GLOBAL_MODEL,
        round=9,
    )
    meta = b'{"sender":"aggregator","type":2,"round":9,"version":0,"samples":0}'
    assert frame == _frame(meta, b"")


def test_unsealed_codec_opens_its_own_frames(parties: Parties) -> None:
    codec = UnsealedCodec()
    payload = bytes(range(256))
    frame = _update(
        codec,
        parties,
        payload,
        content_type=ContentType.MASKED_INPUT,
        round=2**40,
        model_version=7,
        sample_count=1,
    )
    opened = codec.open(frame, parties.aggregator, Registry())
    assert opened == Opened("gw-01", ContentType.MASKED_INPUT, 2**40, 7, 1, b"", payload)


def test_unsealed_codec_opens_a_hand_built_frame(parties: Parties) -> None:
    # whitespace in the metadata is valid JSON; an unsealed frame has no envelope id
    meta = b'{"round": 6, "samples": 11, "version": 2, "type": 3, "sender": "gw-02"}'
    opened = UnsealedCodec().open(_frame(meta, b"\x00body"), parties.aggregator, Registry())
    assert opened == Opened("gw-02", ContentType.ROUND_ANNOUNCEMENT, 6, 2, 11, b"", b"\x00body")


def test_unsealed_frame_may_carry_an_empty_payload(parties: Parties) -> None:
    opened = UnsealedCodec().open(_frame(META_5, b""), parties.aggregator, Registry())
    assert (opened.round, opened.payload) == (5, b"")


def test_unsealed_size_limit_is_inclusive(parties: Parties) -> None:
    frame = _frame(META_5)
    assert len(frame) == 12 + 62 + 7
    opened = UnsealedCodec().open(frame, parties.aggregator, Registry(), max_size=81)
    assert opened.payload == b"payload"
    with pytest.raises(DecodeError) as err:
        UnsealedCodec().open(frame, parties.aggregator, Registry(), max_size=80)
    assert err.value.reason is ErrorReason.TOO_LARGE
    assert str(err.value) == "unsealed frame of 81 bytes exceeds 80"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"UNSEALED",
        b"UNSEALED\x00\x00\x00",  # one byte short of the metadata length
        b"unsealed\x00\x00\x00\x02{}",
        b"\x01UNSEALED\x00\x00\x00\x02{}",
    ],
)
def test_a_frame_without_the_unsealed_header_is_refused(parties: Parties, frame: bytes) -> None:
    codec = UnsealedCodec()
    for call in (
        lambda: codec.open(frame, parties.aggregator, Registry()),
        lambda: codec.peek_round(frame),
    ):
        with pytest.raises(DecodeError) as err:
            call()
        assert err.value.reason is ErrorReason.MALFORMED
        assert str(err.value) == "not an unsealed benchmark frame"


def test_a_sealed_envelope_is_not_an_unsealed_frame(parties: Parties) -> None:
    frame = _update(SealedCodec(), parties)
    with pytest.raises(DecodeError, match=r"^not an unsealed benchmark frame$"):
        UnsealedCodec().peek_round(frame)


def test_metadata_length_past_the_frame_end_is_truncation(parties: Parties) -> None:
    # the frame ends with its metadata; a length one byte longer claims a byte that is not there
    frame = _frame(META_5, b"", length=63)
    for call in (
        lambda: UnsealedCodec().open(frame, parties.aggregator, Registry()),
        lambda: UnsealedCodec().peek_round(frame),
    ):
        with pytest.raises(DecodeError) as err:
            call()
        assert err.value.reason is ErrorReason.TRUNCATED
        assert str(err.value) == (
            "unsealed frame: truncated in metadata (need 63 bytes at offset 12, frame has 74)"
        )


@pytest.mark.parametrize(
    ("meta", "detail"),
    [
        (b"", "unsealed frame: Expecting value"),  # the shortest frame: its header alone
        (b'{"round":5', "unsealed frame: Expecting ',' delimiter"),
        (b"[5]", "unsealed frame: metadata is not an object"),
        (b"5", "unsealed frame: metadata is not an object"),
    ],
)
def test_metadata_that_is_not_a_json_object_is_refused(
    parties: Parties, meta: bytes, detail: str
) -> None:
    frame = _frame(meta, b"")
    for call in (
        lambda: UnsealedCodec().open(frame, parties.aggregator, Registry()),
        lambda: UnsealedCodec().peek_round(frame),
    ):
        with pytest.raises(DecodeError) as err:
            call()
        assert err.value.reason is ErrorReason.MALFORMED
        assert str(err.value).startswith(detail), str(err.value)


def test_deeply_nested_metadata_is_refused_not_a_crash(parties: Parties) -> None:
    frame = _frame(b"[" * 100_000 + b"]" * 100_000, b"")
    with pytest.raises(DecodeError, match=r"^unsealed frame: "):
        UnsealedCodec().peek_round(frame)


@pytest.mark.parametrize(
    ("meta", "detail"),
    [
        ({"type": 1, "round": 4, "version": 0, "samples": 1}, "unsealed frame: 'sender'"),
        ({"sender": "g", "round": 4, "version": 0, "samples": 1}, "unsealed frame: 'type'"),
        ({"sender": "g", "type": 1, "version": 0, "samples": 1}, "unsealed frame: 'round'"),
        ({"sender": "g", "type": 1, "round": 4, "samples": 1}, "unsealed frame: 'version'"),
        ({"sender": "g", "type": 1, "round": 4, "version": 0}, "unsealed frame: 'samples'"),
        (
            {"sender": "g", "type": 9, "round": 4, "version": 0, "samples": 1},
            "unsealed frame: 9 is not a valid ContentType",
        ),
        (
            {"sender": "g", "type": 1, "round": 4, "version": "v2", "samples": 1},
            "unsealed frame: invalid literal for int()",
        ),
        (
            {"sender": "g", "type": 1, "round": 4, "version": None, "samples": 1},
            "unsealed frame: int() argument must be",
        ),
    ],
)
def test_unsealed_metadata_field_missing_or_invalid_is_named(
    parties: Parties, meta: dict[str, object], detail: str
) -> None:
    frame = _frame(json.dumps(meta).encode())
    with pytest.raises(DecodeError) as err:
        UnsealedCodec().open(frame, parties.aggregator, Registry())
    assert err.value.reason is ErrorReason.MALFORMED
    assert str(err.value).startswith(detail), str(err.value)


def test_unsealed_codec_peeks_the_round() -> None:
    assert UnsealedCodec().peek_round(_frame(META_5)) == 5
    assert UnsealedCodec().peek_round(_frame(b'{"round":0}')) == 0


@pytest.mark.parametrize("meta", [b"{}", b'{"Round":5}', b'{"round":"5"}', b'{"round":null}'])
def test_unsealed_peek_needs_an_integer_round(meta: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        UnsealedCodec().peek_round(_frame(meta))
    assert err.value.reason is ErrorReason.MALFORMED
    assert str(err.value) == "unsealed frame: no round"
