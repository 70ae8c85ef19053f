"""Property tests: every decoder, fed random or mutated frames, raises a pqlink error and
nothing else, and no mutated frame is ever accepted."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.partials import Partial, PartialError
from pqlink import (
    ContentType,
    DecodeError,
    HandshakeInitiator,
    HandshakeResponder,
    PqlinkError,
    open_envelope,
    parse_init,
    parse_response,
    peek_envelope,
    peek_session_id,
    seal_envelope,
)
from pqlink.delivery import DeliveryAck
from wire.fl import GlobalModel, ModelUpdate
from wire.vitals import VitalsSample

from .conftest import Parties

TOPIC = b"iomt/rec/wearable-0001"
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def mutations(draw: st.DrawFn, frame: bytes) -> bytes:
    """A frame changed by flips, overwrites, truncation, insertion or deletion (never equal)."""
    data = bytearray(frame)
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
    if kind == "flip":
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
    elif kind == "set":
        pos = draw(st.integers(0, len(data) - 1))
        value = draw(st.integers(0, 255).filter(lambda v: v != data[pos]))
        data[pos] = value
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    elif kind == "delete":
        pos = draw(st.integers(0, len(data) - 1))
        del data[pos : pos + draw(st.integers(1, 32))]
    else:
        pos = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[pos : pos + len(chunk)] = chunk
    result = bytes(data)
    if result == frame:
        result = frame + b"\0"
    return result


DECODERS: dict[str, Callable[[bytes], object]] = {
    "init": parse_init,
    "response": parse_response,
    "envelope": peek_envelope,
    "record": peek_session_id,
    "vitals": VitalsSample.decode,
    "model_update": ModelUpdate.decode,
    "global_model": GlobalModel.decode,
    "delivery_ack": DeliveryAck.decode,
}


def _outcome(decoder: Callable[[bytes], object], data: bytes) -> str:
    """'rejected' for a pqlink error; any other exception propagates and fails the test."""
    try:
        decoder(data)
    except PqlinkError:
        return "rejected"
    return "decoded"


@pytest.mark.parametrize("name", sorted(DECODERS))
@SETTINGS
@given(data=st.binary(max_size=5000))
def test_random_bytes_raise_only_pqlink_errors(name: str, data: bytes) -> None:
    assert _outcome(DECODERS[name], data) in {"decoded", "rejected"}


@st.composite
def prefixed_garbage(draw: st.DrawFn) -> bytes:
    """Random bodies behind a valid type byte, so decoders get past the first check."""
    return bytes([draw(st.integers(1, 4))]) + draw(st.binary(min_size=0, max_size=6000))


@pytest.mark.parametrize("name", sorted(DECODERS))
@SETTINGS
@given(data=prefixed_garbage())
def test_typed_garbage_raises_only_pqlink_errors(name: str, data: bytes) -> None:
    assert _outcome(DECODERS[name], data) in {"decoded", "rejected"}


@SETTINGS
@given(data=st.data())
def test_mutated_init_is_never_accepted(parties: Parties, data: st.DataObject) -> None:
    frame = HandshakeInitiator(parties.sensor, parties.gateway.public).start()
    bad = data.draw(mutations(frame))
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry())
    with pytest.raises(PqlinkError):
        responder.respond(bad)


@SETTINGS
@given(data=st.data())
def test_mutated_response_is_never_accepted(parties: Parties, data: st.DataObject) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry())
    response = responder.respond(init.start()).response
    bad = data.draw(mutations(response))
    with pytest.raises(PqlinkError):
        init.receive(bad)


@SETTINGS
@given(data=st.data(), payload=st.binary(max_size=512))
def test_mutated_record_is_never_accepted(
    parties: Parties, data: st.DataObject, payload: bytes
) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    result = HandshakeResponder(parties.gateway, parties.sensor_registry()).respond(init.start())
    client = init.receive(result.response)
    frame = client.seal(payload, TOPIC)
    bad = data.draw(mutations(frame))
    with pytest.raises(PqlinkError):
        result.session.open(bad, TOPIC)
    assert result.session.open(frame, TOPIC) == payload


@SETTINGS
@given(data=st.data())
def test_mutated_envelope_is_never_accepted(parties: Parties, data: st.DataObject) -> None:
    frame = seal_envelope(
        parties.gateway,
        [parties.aggregator.public],
        b"update" * 20,
        content_type=ContentType.MODEL_UPDATE,
        round=1,
    )
    bad = data.draw(mutations(frame))
    with pytest.raises(PqlinkError):
        open_envelope(bad, parties.aggregator, parties.gateway_registry())


def _nested(magic: bytes, depth: int) -> bytes:
    blob = b"[" * depth + b"]" * depth
    return struct.pack(">4sII", magic, 0, len(blob)) + blob


@pytest.mark.parametrize(
    ("decoder", "magic"), [(ModelUpdate.decode, b"IMU1"), (GlobalModel.decode, b"IMG1")]
)
def test_deeply_nested_metadata_is_a_decode_error(
    decoder: Callable[[bytes], object], magic: bytes
) -> None:
    # 30,000 levels fit in the 64 KiB metadata limit and blow the JSON parser's recursion
    # limit: that must be the typed error, not a RecursionError that kills a worker.
    with pytest.raises(DecodeError, match="not JSON"):
        decoder(_nested(magic, 30_000))


@SETTINGS
@given(data=st.binary(max_size=3000), count=st.integers(0, 64))
def test_partial_sums_raise_only_their_typed_error(data: bytes, count: int) -> None:
    """'rejected' for PartialError; any other exception propagates and fails the test."""
    try:
        Partial.decode(data, count)
    except PartialError:
        outcome = "rejected"
    else:
        outcome = "decoded"
    assert outcome in {"decoded", "rejected"}


def test_deeply_nested_partial_header_is_a_partial_error() -> None:
    blob = b"[" * 30_000 + b"]" * 30_000
    with pytest.raises(PartialError):
        Partial.decode(struct.pack(">I", len(blob)) + blob, 4)
