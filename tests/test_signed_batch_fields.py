"""Signed batch item frames field by field: the documented layout and leaf hash rebuilt by hand,
a frame cut short naming the field and offset, and every header, index, path and argument
limit probed at its exact value and one past it with the exact error and reason."""

from __future__ import annotations

import hashlib
import re

import pytest

from pqlink import (
    ContentType,
    DecodeError,
    ErrorReason,
    Identity,
    LocalProtocolError,
    Registry,
    Role,
    signed_batch,
)
from pqlink.signed_batch import (
    MAX_RECIPIENTS,
    NotInBatchError,
    is_batch_item,
    open_batch_item,
    sign_batch,
)

from .frame_cuts import check_cuts, signed_header

SENDER = "aggregator"
SIG = 3309  # ML-DSA-65, what Identity.generate gives an aggregator
#: Header: type, version, content type, signature algorithm, sender id, round, batch id,
#: recipient count, tree root.
HEADER_SIZE = 4 + 1 + len(SENDER) + 8 + 16 + 2 + 32
BATCH_ID_AT = 4 + 1 + len(SENDER) + 8


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def sender() -> tuple[Identity, Registry]:
    agg = Identity.generate(SENDER, Role.AGGREGATOR)
    registry = Registry()
    registry.enroll(agg.public)
    return agg, registry


def _items(n: int) -> list[tuple[str, bytes]]:
    return [(f"gw{i:03d}", bytes([0x41 + i]) * (3 + i)) for i in range(n)]


def _sign(agg: Identity, n: int, round_: int = 5) -> dict[str, bytes]:
    return sign_batch(agg, _items(n), content_type=ContentType.SECAGG, round=round_)


def _leaf(batch_id: bytes, index: int, recipient: str, payload: bytes) -> bytes:
    """The leaf hash exactly as the module docstring writes it."""
    name = recipient.encode()
    return hashlib.sha256(
        b"\x00pqlink batch leaf"
        + batch_id
        + bytes((index >> 8, index & 0xFF))
        + bytes((len(name),))
        + name
        + hashlib.sha256(payload).digest()
    ).digest()


def _tree_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 tree hash: split at the largest power of two below n, nodes 0x01 | l | r."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _tree_root(leaves[:k]) + _tree_root(leaves[k:])).digest()


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_header_and_tree_root_follow_the_documented_layout(
    sender: tuple[Identity, Registry], n: int
) -> None:
    agg, registry = sender
    items = _items(n)
    frames = sign_batch(agg, items, content_type=ContentType.MASKED_INPUT, round=0x0102030405)
    batch_id = frames["gw000"][BATCH_ID_AT : BATCH_ID_AT + 16]
    root = _tree_root(
        [_leaf(batch_id, i, name, payload) for i, (name, payload) in enumerate(items)]
    )
    want_header = (
        bytes((0x08, 1, 5, 2, len(SENDER)))
        + SENDER.encode()
        + bytes((0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05))
        + batch_id
        + bytes((0, n))
        + root
    )
    for i, (name, payload) in enumerate(items):
        frame = frames[name]
        assert frame[:HEADER_SIZE] == want_header  # one header, signed once, in every frame
        body = frame[HEADER_SIZE:]
        assert body[:2] == bytes((0, i))
        assert body[2 : 3 + len(name)] == bytes((len(name),)) + name.encode()
        rest = body[3 + len(name) :]
        assert rest[:4] == len(payload).to_bytes(4, "big")
        assert rest[4 : 4 + len(payload)] == payload
        opened = open_batch_item(frame, name, registry)
        assert opened.batch_id == batch_id
        assert opened.content_type is ContentType.MASKED_INPUT
        assert opened.round == 0x0102030405


def test_every_frame_of_a_batch_carries_the_same_fresh_batch_id(
    sender: tuple[Identity, Registry],
) -> None:
    agg, registry = sender
    first = _sign(agg, 3)
    ids = {open_batch_item(first[name], name, registry).batch_id for name in first}
    assert len(ids) == 1
    (batch_id,) = ids
    assert len(batch_id) == 16
    assert batch_id == first["gw002"][BATCH_ID_AT : BATCH_ID_AT + 16]
    again = open_batch_item(_sign(agg, 3)["gw000"], "gw000", registry).batch_id
    assert again != batch_id


def test_a_frame_cut_short_names_the_field_and_offset(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = _sign(agg, 3)["gw001"]  # index 1 of 3: two path hashes
    layout = [
        *signed_header(len(SENDER)),
        ("batch id", 16),
        ("recipient count", 2),
        ("tree root", 32),
        ("index", 2),
        ("recipient id length", 1),
        ("recipient id", 5),
        ("payload length", 4),
        ("payload", 4),
        ("path length", 1),
        ("path hash", 32),
        ("path hash", 32),
        ("signature length", 2),
        ("signature", SIG),
    ]
    check_cuts(lambda raw: open_batch_item(raw, "gw001", registry), frame, "batch item", layout)


def test_the_type_byte_is_checked_first_and_exactly(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = _sign(agg, 2)["gw000"]
    for code in (0x07, 0x09, 0x00):
        other = bytes((code,)) + frame[1:]
        assert not is_batch_item(other)
        with pytest.raises(DecodeError, match=_exactly("frame is not a batch item")) as err:
            open_batch_item(other, "gw000", registry)
        assert err.value.reason is ErrorReason.WRONG_TYPE
    # the type byte alone is a claim, as is the whole frame
    assert is_batch_item(b"\x08")
    assert is_batch_item(frame)
    assert not is_batch_item(b"")


def test_only_version_1_is_read(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = _sign(agg, 2)["gw000"]
    for version in (0, 2):
        other = frame[:1] + bytes((version,)) + frame[2:]
        with pytest.raises(
            DecodeError, match=_exactly("batch item version is not supported")
        ) as err:
            open_batch_item(other, "gw000", registry)
        assert err.value.reason is ErrorReason.BAD_VERSION


def test_a_signature_algorithm_other_than_the_enrolled_one_is_refused(
    sender: tuple[Identity, Registry],
) -> None:
    agg, registry = sender
    frame = _sign(agg, 2)["gw000"]
    assert frame[3] == 2  # ML-DSA-65
    claimed_44 = frame[:3] + b"\x01" + frame[4:]
    with pytest.raises(
        DecodeError, match=_exactly("'aggregator' is enrolled with ML-DSA-65")
    ) as err:
        open_batch_item(claimed_44, "gw000", registry)
    assert err.value.reason is ErrorReason.SIG_ALG_MISMATCH


def _with_path(frame: bytes, payload_len: int, name: str, hashes: bytes, depth: int) -> bytes:
    """`frame` with its audit path (length byte and hashes) replaced."""
    at = HEADER_SIZE + 2 + 1 + len(name) + 4 + payload_len
    old_depth = frame[at]
    tail = frame[at + 1 + 32 * old_depth :]
    return frame[:at] + bytes((depth,)) + hashes + tail


def test_a_path_of_at_most_sixteen_hashes_is_read(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    frame = _sign(agg, 2)["gw000"]  # payload of 3 bytes, one path hash
    # 16 hashes: read in full, then refused only because a batch of 2 is one level deep
    sixteen = _with_path(frame, 3, "gw000", b"\x11" * 32 * 16, 16)
    with pytest.raises(
        DecodeError, match=_exactly("index 0 or path of 16 outside a batch of 2")
    ) as err:
        open_batch_item(sixteen, "gw000", registry)
    assert err.value.reason is ErrorReason.MALFORMED
    # 17: refused by its length byte, before any hash is read
    seventeen = _with_path(frame, 3, "gw000", b"", 17)
    with pytest.raises(DecodeError, match=_exactly("audit path of 17 hashes")) as err:
        open_batch_item(seventeen, "gw000", registry)
    assert err.value.reason is ErrorReason.BAD_COUNT


def test_a_path_shorter_than_the_tree_is_deep_is_refused(
    sender: tuple[Identity, Registry],
) -> None:
    agg, registry = sender
    frame = _sign(agg, 2)["gw000"]
    no_path = _with_path(frame, 3, "gw000", b"", 0)
    with pytest.raises(
        DecodeError, match=_exactly("index 0 or path of 0 outside a batch of 2")
    ) as err:
        open_batch_item(no_path, "gw000", registry)
    assert err.value.reason is ErrorReason.MALFORMED


def test_an_index_equal_to_the_recipient_count_is_refused(
    sender: tuple[Identity, Registry],
) -> None:
    """The index is outside the signed header: index 2 of a batch of 2, whose path length (1)
    would fit the tree, is a malformed frame, not a payload that fails to verify."""
    agg, registry = sender
    frame = _sign(agg, 2)["gw001"]
    assert frame[HEADER_SIZE : HEADER_SIZE + 2] == b"\x00\x01"
    assert open_batch_item(frame, "gw001", registry).payload == b"B" * 4  # index 1: the last
    moved = frame[:HEADER_SIZE] + b"\x00\x02" + frame[HEADER_SIZE + 2 :]
    with pytest.raises(
        DecodeError, match=_exactly("index 2 or path of 1 outside a batch of 2")
    ) as err:
        open_batch_item(moved, "gw001", registry)
    assert err.value.reason is ErrorReason.MALFORMED


def test_the_index_is_part_of_the_leaf(sender: tuple[Identity, Registry]) -> None:
    """A valid frame moved to another position of the same tree (with that position's path)
    does not verify: the index is hashed into the leaf."""
    agg, registry = sender
    frames = _sign(agg, 4)
    frame = frames["gw000"]
    moved = frame[:HEADER_SIZE] + b"\x00\x01" + frame[HEADER_SIZE + 2 :]
    with pytest.raises(NotInBatchError, match="not the one it signed"):
        open_batch_item(moved, "gw000", registry)


def test_round_zero_and_the_largest_u64_are_rounds(sender: tuple[Identity, Registry]) -> None:
    agg, registry = sender
    for round_ in (0, (1 << 64) - 1):
        frame = _sign(agg, 1, round_)["gw000"]
        assert open_batch_item(frame, "gw000", registry).round == round_
    for bad in (-1, 1 << 64):
        with pytest.raises(LocalProtocolError, match=_exactly(f"round must be a u64, got {bad}")):
            _sign(agg, 1, bad)


def test_the_recipient_count_limit_is_inclusive(
    sender: tuple[Identity, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to MAX_RECIPIENTS recipients (a u16 count) sign; one more is refused."""
    assert MAX_RECIPIENTS == 0xFFFF
    agg, registry = sender
    monkeypatch.setattr(signed_batch, "MAX_RECIPIENTS", 5)
    frames = _sign(agg, 5)
    assert open_batch_item(frames["gw004"], "gw004", registry).payload == b"E" * 7
    with pytest.raises(
        LocalProtocolError, match=_exactly("a batch needs 1 to 5 recipients")
    ) as err:
        _sign(agg, 6)
    assert err.value.reason is ErrorReason.BAD_COUNT
    with pytest.raises(LocalProtocolError, match=_exactly("a batch needs 1 to 5 recipients")):
        _sign(agg, 0)
