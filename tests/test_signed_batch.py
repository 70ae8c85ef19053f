"""Signed batches (pqlink.signed_batch): one signature over distinct payloads for distinct
recipients; each recipient opens only its own, and any change to it is refused by type."""

from __future__ import annotations

import pytest

from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    LocalProtocolError,
    Registry,
    Role,
    SignatureError,
    UnknownPeerError,
)
from pqlink.signed_batch import (
    MAX_RECIPIENTS,
    NotInBatchError,
    is_batch_item,
    open_batch_item,
    sign_batch,
)


@pytest.fixture(scope="module")
def sender() -> tuple[Identity, Registry]:
    agg = Identity.generate("aggregator", Role.AGGREGATOR)
    registry = Registry()
    registry.enroll(agg.public)
    return agg, registry


def _items(n: int) -> list[tuple[str, bytes]]:
    return [(f"gw{i:03d}", f"payload of {i} ".encode() * (i + 1)) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 50])
def test_every_recipient_opens_its_own_payload(sender: tuple[Identity, Registry], n: int) -> None:
    agg, registry = sender
    items = _items(n)
    frames = sign_batch(agg, items, content_type=ContentType.SECAGG, round=12)
    assert sorted(frames) == sorted(name for name, _ in items)
    for name, payload in items:
        assert is_batch_item(frames[name])
        opened = open_batch_item(frames[name], name, registry)
        assert (opened.payload, opened.round, opened.recipient) == (payload, 12, name)
        assert opened.content_type is ContentType.SECAGG
        assert opened.sender.name == agg.name


def test_a_frame_opened_by_another_recipient_is_refused(
    sender: tuple[Identity, Registry],
) -> None:
    agg, registry = sender
    frames = sign_batch(agg, _items(4), content_type=ContentType.SECAGG, round=1)
    with pytest.raises(NotInBatchError, match="addressed to 'gw000'"):
        open_batch_item(frames["gw000"], "gw001", registry)


def test_a_changed_payload_is_not_the_one_signed(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    items = _items(4)
    frames = sign_batch(agg, items, content_type=ContentType.SECAGG, round=1)
    frame = bytearray(frames["gw002"])
    at = bytes(frame).index(items[2][1])
    frame[at] ^= 0x01  # same length, one bit of the payload
    with pytest.raises(NotInBatchError, match="not the one it signed"):
        open_batch_item(bytes(frame), "gw002", registry)


def test_a_payload_swapped_between_recipients_is_refused(
    sender: tuple[Identity, Registry],
) -> None:
    """Recipient names are inside the leaves: gw001's (valid) item relabelled for gw000 by
    an attacker who keeps the index and path does not verify."""
    agg, registry = sender
    items = [("gw000", b"A" * 10), ("gw001", b"B" * 10)]
    frames = sign_batch(agg, items, content_type=ContentType.SECAGG, round=1)
    relabelled = frames["gw001"].replace(b"gw001", b"gw000")
    with pytest.raises(NotInBatchError, match="not the one it signed"):
        open_batch_item(relabelled, "gw000", registry)


def test_forged_and_unknown_senders_are_refused(sender: tuple[Identity, Registry]) -> None:
    _agg, registry = sender
    other = Identity.generate("x", Role.AGGREGATOR)
    impostor = Identity("aggregator", Role.AGGREGATOR, other.signing_key, other.kem_key)
    forged = sign_batch(impostor, _items(2), content_type=ContentType.SECAGG, round=1)
    with pytest.raises(SignatureError):
        open_batch_item(forged["gw000"], "gw000", registry)
    stranger = Identity.generate("stranger", Role.AGGREGATOR)
    unknown = sign_batch(stranger, _items(2), content_type=ContentType.SECAGG, round=1)
    with pytest.raises(UnknownPeerError):
        open_batch_item(unknown["gw000"], "gw000", registry)


def test_damaged_frames_raise_decode_errors(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = sign_batch(agg, _items(3), content_type=ContentType.SECAGG, round=1)["gw001"]
    for damaged in (frame[:-1], frame + b"\x00", b"\x08", b"\x05" + frame[1:]):
        with pytest.raises(DecodeError):
            open_batch_item(damaged, "gw001", registry)
    assert not is_batch_item(b"")
    assert not is_batch_item(b"\x05" + frame[1:])


def test_size_limit_at_its_exact_value_and_one_below(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = sign_batch(agg, _items(2), content_type=ContentType.SECAGG, round=1)["gw000"]
    assert open_batch_item(frame, "gw000", registry, max_size=len(frame)).payload
    with pytest.raises(DecodeError, match="over"):
        open_batch_item(frame, "gw000", registry, max_size=len(frame) - 1)


def test_batch_arguments_are_checked(sender: tuple[Identity, Registry]) -> None:
    agg, _ = sender
    with pytest.raises(LocalProtocolError, match="1 to"):
        sign_batch(agg, [], content_type=ContentType.SECAGG, round=1)
    too_many = [(f"g{i}", b"") for i in range(MAX_RECIPIENTS + 1)]
    with pytest.raises(LocalProtocolError, match="1 to"):
        sign_batch(agg, too_many, content_type=ContentType.SECAGG, round=1)
    with pytest.raises(LocalProtocolError, match="twice"):
        sign_batch(agg, [("a", b""), ("a", b"")], content_type=ContentType.SECAGG, round=1)
    with pytest.raises(LocalProtocolError, match="u64"):
        sign_batch(agg, [("a", b"")], content_type=ContentType.SECAGG, round=1 << 64)
    assert sign_batch(agg, [("a", b"")], content_type=ContentType.SECAGG, round=(1 << 64) - 1)
