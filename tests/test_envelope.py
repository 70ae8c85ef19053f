"""Sealed envelopes: single and multi recipient, authenticated metadata, every failure mode."""

from __future__ import annotations

import os

import pytest

from pqlink import (
    AuthenticationError,
    ContentType,
    DecodeError,
    Identity,
    LocalProtocolError,
    PqlinkError,
    Registry,
    RevokedPeerError,
    Role,
    SignatureError,
    UnknownPeerError,
    open_envelope,
    peek_envelope,
    seal_envelope,
)
from pqlink.envelope import RECIPIENT_SLOT_SIZE

from .conftest import Parties


def _update(parties: Parties, payload: bytes = b"weights" * 100) -> bytes:
    return seal_envelope(
        parties.gateway,
        [parties.aggregator.public],
        payload,
        content_type=ContentType.MODEL_UPDATE,
        round=7,
        model_version=3,
        sample_count=640,
    )


def _aggregator_view(parties: Parties) -> Registry:
    return parties.gateway_registry()


def test_single_recipient_round_trip_with_metadata(parties: Parties) -> None:
    payload = os.urandom(100 * 1024)
    frame = _update(parties, payload)
    opened = open_envelope(frame, parties.aggregator, _aggregator_view(parties))
    assert opened.payload == payload
    meta = opened.metadata
    assert (meta.sender, meta.round, meta.model_version, meta.sample_count) == ("gw-01", 7, 3, 640)
    assert meta.content_type is ContentType.MODEL_UPDATE
    assert opened.sender == parties.gateway.public
    assert peek_envelope(frame) == meta


def test_multi_recipient_each_opens(parties: Parties) -> None:
    gateways = [parties.gateway, parties.other_gateway]
    frame = seal_envelope(
        parties.aggregator,
        [g.public for g in gateways],
        b"global model",
        content_type=ContentType.GLOBAL_MODEL,
        round=8,
        model_version=4,
    )
    senders = parties.aggregator_registry()
    for gw in gateways:
        assert open_envelope(frame, gw, senders).payload == b"global model"
    outsider = Identity.generate("gw-03", Role.GATEWAY)
    with pytest.raises(DecodeError, match="not addressed"):
        open_envelope(frame, outsider, senders)


def test_every_region_tampered_is_rejected(parties: Parties) -> None:
    frame = _update(parties, b"p" * 300)
    registry = _aggregator_view(parties)
    # fixed header (type..id count), recipient slot, body, signature
    header_len = 4 + 1 + len("gw-01") + 8 + 4 + 8 + 8 + 16 + 2
    slot_end = header_len + RECIPIENT_SLOT_SIZE
    positions = list(range(header_len))  # every header byte
    positions += [header_len, header_len + 40, slot_end - 1]  # fingerprint, KEM ct, wrapped key
    positions += [slot_end, slot_end + 4, slot_end + 100, len(frame) - 3311, len(frame) - 1]
    for pos in positions:
        bad = bytearray(frame)
        bad[pos] ^= 0x01
        with pytest.raises(PqlinkError):
            open_envelope(bytes(bad), parties.aggregator, registry)
    assert open_envelope(frame, parties.aggregator, registry).payload == b"p" * 300


def test_truncation(parties: Parties) -> None:
    frame = _update(parties)
    for n in (0, 1, 10, 60, 1500, len(frame) // 2, len(frame) - 1):
        with pytest.raises(DecodeError):
            open_envelope(frame[:n], parties.aggregator, _aggregator_view(parties))


def test_unenrolled_revoked_and_forged_senders(parties: Parties) -> None:
    frame = _update(parties)
    with pytest.raises(UnknownPeerError):
        open_envelope(frame, parties.aggregator, Registry())
    registry = _aggregator_view(parties)
    registry.revoke("gw-01")
    with pytest.raises(RevokedPeerError):
        open_envelope(frame, parties.aggregator, registry)
    # gw-02 signs but claims to be gw-01: different key, the signature fails
    forger = Identity(
        "gw-01", Role.GATEWAY, parties.other_gateway.signing_key, parties.other_gateway.kem_key
    )
    forged = seal_envelope(
        forger, [parties.aggregator.public], b"evil", content_type=ContentType.MODEL_UPDATE, round=7
    )
    with pytest.raises(SignatureError):
        open_envelope(forged, parties.aggregator, _aggregator_view(parties))


def test_wrong_recipient_key(parties: Parties) -> None:
    frame = _update(parties)
    # An identity with the aggregator's name and signing key but another KEM key
    wrong = Identity(
        "aggregator", Role.AGGREGATOR, parties.aggregator.signing_key, parties.gateway.kem_key
    )
    with pytest.raises((DecodeError, AuthenticationError)):
        open_envelope(frame, wrong, _aggregator_view(parties))


def test_replayed_envelope_opens_identically(parties: Parties) -> None:
    # Envelopes are stateless: a replay opens to the same (sender, round, envelope id), which
    # is what the aggregator's idempotency key is built from.
    frame = _update(parties)
    a = open_envelope(frame, parties.aggregator, _aggregator_view(parties))
    b = open_envelope(frame, parties.aggregator, _aggregator_view(parties))
    assert a.metadata == b.metadata
    assert _update(parties) != frame  # a fresh seal has a fresh envelope id
    assert peek_envelope(_update(parties)).envelope_id != a.metadata.envelope_id


def test_oversized_envelope(parties: Parties) -> None:
    frame = _update(parties, b"z" * 5000)
    with pytest.raises(DecodeError, match="limit"):
        open_envelope(frame, parties.aggregator, _aggregator_view(parties), max_size=4096)


def test_seal_argument_errors(parties: Parties) -> None:
    with pytest.raises(LocalProtocolError):
        seal_envelope(parties.gateway, [], b"", content_type=ContentType.MODEL_UPDATE, round=1)
    with pytest.raises(LocalProtocolError, match="no KEM key"):
        seal_envelope(
            parties.gateway,
            [parties.sensor.public],
            b"",
            content_type=ContentType.MODEL_UPDATE,
            round=1,
        )
    with pytest.raises(LocalProtocolError, match="twice"):
        seal_envelope(
            parties.gateway,
            [parties.aggregator.public, parties.aggregator.public],
            b"",
            content_type=ContentType.MODEL_UPDATE,
            round=1,
        )
    with pytest.raises(ValueError, match="round"):
        seal_envelope(
            parties.gateway,
            [parties.aggregator.public],
            b"",
            content_type=ContentType.MODEL_UPDATE,
            round=-1,
        )
