"""Decode errors name the frame, the field and the offset where a frame is cut short.

Cutting a valid frame at the start of each field of the documented layout must report exactly
that field, so an operator reading a log line knows which part of a frame was missing."""

from __future__ import annotations

import pytest

from pqlink import (
    ContentType,
    DecodeError,
    ErrorReason,
    HandshakeInitiator,
    HandshakeResponder,
    parse_init,
    parse_response,
    peek_envelope,
    seal_envelope,
)

from .conftest import Parties
from .frame_cuts import check_cuts, signed_header

T0 = 1_800_000_000.0


def test_init_fields(parties: Parties) -> None:
    frame = HandshakeInitiator(parties.sensor, parties.gateway.public).start(now=T0)
    layout = [
        ("type", 1),
        ("version count", 1),
        ("version", 1),
        ("suite count", 1),
        ("suite", 2),
        ("initiator id length", 1),
        ("initiator id", 13),
        ("responder id length", 1),
        ("responder id", 5),
        ("signature algorithm", 1),
        ("timestamp", 8),
        ("random", 16),
        ("key share", 1216),
        ("signature length", 2),
        ("signature", 2420),
    ]
    check_cuts(parse_init, frame, "handshake init", layout)


def test_response_fields(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry())
    frame = responder.respond(init.start(now=T0), now=T0).response
    layout = [
        ("type", 1),
        ("version", 1),
        ("suite", 2),
        ("responder id length", 1),
        ("responder id", 5),
        ("random", 16),
        ("KEM ciphertext", 1120),
        ("signature length", 2),
        ("signature", 3309),
        ("finished", 32),
    ]
    check_cuts(parse_response, frame, "handshake response", layout)


def test_envelope_fields(parties: Parties) -> None:
    frame = seal_envelope(
        parties.gateway,
        [parties.aggregator.public],
        b"abc",
        content_type=ContentType.MODEL_UPDATE,
        round=1,
    )
    layout = [
        *signed_header(5),
        ("model version", 4),
        ("sample count", 8),
        ("created", 8),
        ("envelope id", 16),
        ("recipient count", 2),
        ("recipient fingerprint", 32),
        ("recipient KEM ciphertext", 1120),
        ("wrapped key", 32),
        ("body length", 4),
        ("body", 3 + 16),
        ("signature length", 2),
        ("signature", 3309),
    ]
    check_cuts(peek_envelope, frame, "envelope", layout)


def test_identifier_and_trailing_messages(parties: Parties) -> None:
    frame = bytearray(HandshakeInitiator(parties.sensor, parties.gateway.public).start(now=T0))
    frame[7] = ord("!")  # inside the initiator id
    with pytest.raises(DecodeError, match=r"^handshake init: initiator id is not a valid") as err:
        parse_init(bytes(frame))
    assert err.value.reason is ErrorReason.BAD_IDENTIFIER
    good = HandshakeInitiator(parties.sensor, parties.gateway.public).start(now=T0)
    with pytest.raises(DecodeError, match=r"^handshake init: 2 unexpected trailing bytes$"):
        parse_init(good + b"\0\0")
