"""Secure-aggregation wire messages field by field: the frame header and the announcement's
canonical JSON rebuilt by hand, every count and number field refused with its name when it is
not one, the round and body limits probed at their exact value and one past it, and the
announced-adverts length prefix checked against the bytes that follow it."""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import pytest

from pqlink import DecodeError
from pqlink.secagg import InputEncoding, RoundConfig
from wire.secagg import (
    MAX_FRAME_BODY,
    AnnouncedAdverts,
    SecAggFrame,
    SecAggKind,
    SecureRoundAnnouncement,
)

SEED = bytes(range(32))
U64_LIMIT = 18446744073709551616  # 2**64
#: magic "ISA1", kind (one byte), round (eight bytes, big-endian)
HEAD_SIZE = 13


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _announcement(weight_cap: int = 0, round_: int = 9) -> SecureRoundAnnouncement:
    return SecureRoundAnnouncement(
        round=round_,
        graph_seed=SEED,
        participants={"gw-b": 2, "gw-a": 1, "gw-c": 3},
        degree=2,
        threshold=1,
        min_survivors=2,
        dimension=4,
        clip=1.5,
        precision_bits=12,
        modulus_bits=16,
        noise_std=0.5,
        weight_cap=weight_cap,
    )


def _doc() -> dict[str, Any]:
    """The announcement above as a JSON document, written out by hand."""
    return {
        "round": 9,
        "graph_seed": SEED.hex(),
        "participants": {"gw-a": 1, "gw-b": 2, "gw-c": 3},
        "degree": 2,
        "threshold": 1,
        "min_survivors": 2,
        "dimension": 4,
        "clip": 1.5,
        "precision_bits": 12,
        "modulus_bits": 16,
        "noise_std": 0.5,
        "weight_cap": 0,
    }


def _decode(doc: dict[str, Any]) -> SecureRoundAnnouncement:
    return SecureRoundAnnouncement.decode(json.dumps(doc).encode())


# ---- frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("round_", [0, 1, U64_LIMIT - 1])
def test_a_frame_is_magic_kind_and_big_endian_round_before_the_body(round_: int) -> None:
    frame = SecAggFrame(SecAggKind.SHARES, round_, b"body")
    data = frame.encode()
    assert data == b"ISA1" + bytes([4]) + round_.to_bytes(8, "big") + b"body"
    assert SecAggFrame.decode(data) == frame


@pytest.mark.parametrize("round_", [-1, U64_LIMIT])
def test_a_frame_round_outside_u64_is_refused(round_: int) -> None:
    with pytest.raises(ValueError, match=_exactly(f"round {round_} is not a u64")):
        SecAggFrame(SecAggKind.ADVERT, round_, b"").encode()


def test_a_frame_body_of_exactly_the_limit_encodes_and_decodes() -> None:
    body = bytes(MAX_FRAME_BODY)
    data = SecAggFrame(SecAggKind.MASKED_INPUT, 5, body).encode()
    assert len(data) == HEAD_SIZE + 64 * 1024 * 1024
    decoded = SecAggFrame.decode(data)
    assert (decoded.kind, decoded.round, len(decoded.body)) == (
        SecAggKind.MASKED_INPUT,
        5,
        MAX_FRAME_BODY,
    )


def test_a_frame_body_one_byte_over_the_limit_is_refused_both_ways() -> None:
    body = bytes(MAX_FRAME_BODY + 1)
    with pytest.raises(
        ValueError,
        match=_exactly(f"frame body of {MAX_FRAME_BODY + 1} bytes over {MAX_FRAME_BODY}"),
    ):
        SecAggFrame(SecAggKind.MASKED_INPUT, 5, body).encode()
    data = b"ISA1" + bytes([19]) + (5).to_bytes(8, "big") + body
    with pytest.raises(DecodeError, match=_exactly("secure-aggregation frame: body too large")):
        SecAggFrame.decode(data)


@pytest.mark.parametrize("kind", [0, 3, 17, 255])
def test_a_frame_of_an_unknown_kind_names_it(kind: int) -> None:
    data = b"ISA1" + bytes([kind]) + (1).to_bytes(8, "big")
    with pytest.raises(
        DecodeError, match=_exactly(f"secure-aggregation frame: unknown kind {kind}")
    ):
        SecAggFrame.decode(data)


# ---- the announcement ------------------------------------------------------------------


def test_the_announcement_encodes_as_compact_json_with_sorted_keys() -> None:
    want = (
        '{"clip":1.5,"degree":2,"dimension":4,"graph_seed":"' + SEED.hex() + '",'
        '"min_survivors":2,"modulus_bits":16,"noise_std":0.5,'
        '"participants":{"gw-a":1,"gw-b":2,"gw-c":3},"precision_bits":12,"round":9,'
        '"threshold":1,"weight_cap":0}'
    )
    assert _announcement().encode() == want.encode()


@pytest.mark.parametrize("weight_cap", [0, 1, 10])
@pytest.mark.parametrize("round_", [0, U64_LIMIT - 1])
def test_the_announcement_round_trips_every_field(weight_cap: int, round_: int) -> None:
    a = _announcement(weight_cap, round_)
    b = SecureRoundAnnouncement.decode(a.encode())
    assert b == a
    assert b.weight_cap == weight_cap
    assert b.round == round_


def test_a_hand_written_announcement_decodes_with_numbers_as_floats() -> None:
    doc = _doc()
    doc["clip"] = 2  # an integer is a number too
    doc["weight_cap"] = 7
    a = _decode(doc)
    assert a.clip == 2.0
    assert isinstance(a.clip, float)
    assert a.weight_cap == 7
    assert a.participants == {"gw-a": 1, "gw-b": 2, "gw-c": 3}
    assert a.graph_seed == SEED


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("round", -1),
        ("degree", -1),
        ("weight_cap", -1),
        ("threshold", 1.0),
        ("dimension", "4"),
        ("min_survivors", True),
        ("precision_bits", None),
        ("modulus_bits", [16]),
    ],
)
def test_a_count_that_is_not_a_non_negative_integer_is_named(key: str, value: object) -> None:
    doc = _doc()
    doc[key] = value
    with pytest.raises(
        DecodeError, match=_exactly(f"secure round announcement: {key} = {value!r} is not a count")
    ):
        _decode(doc)


def test_a_missing_count_is_named() -> None:
    doc = _doc()
    del doc["weight_cap"]
    with pytest.raises(
        DecodeError, match=_exactly("secure round announcement: weight_cap = None is not a count")
    ):
        _decode(doc)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("clip", math.nan),
        ("clip", math.inf),
        ("noise_std", -math.inf),
        ("noise_std", math.nan),
        ("clip", True),
        ("noise_std", "0.5"),
        ("clip", None),
    ],
)
def test_a_number_that_is_not_finite_or_not_a_number_is_named(key: str, value: object) -> None:
    doc = _doc()
    doc[key] = value
    with pytest.raises(
        DecodeError,
        match=_exactly(f"secure round announcement: {key} = {value!r} is not a number"),
    ):
        _decode(doc)


@pytest.mark.parametrize(
    "participants",
    [
        None,
        [],
        ["gw-a", "gw-b", "gw-c"],
        {"gw-a": "1", "gw-b": 2, "gw-c": 3},
        {"gw-a": 1.0, "gw-b": 2, "gw-c": 3},
        {"gw-a": True, "gw-b": 2, "gw-c": 3},
    ],
)
def test_participants_must_map_names_to_integer_ids(participants: object) -> None:
    doc = _doc()
    doc["participants"] = participants
    with pytest.raises(
        DecodeError,
        match=_exactly("secure round announcement: participants is not a name map"),
    ):
        _decode(doc)


def test_an_announcement_with_an_unknown_key_is_refused_naming_it() -> None:
    doc = _doc()
    doc["zeta"] = 1
    doc["extra"] = "x"
    with pytest.raises(
        DecodeError,
        match=_exactly("secure round announcement: unknown keys ['extra', 'zeta']"),
    ):
        _decode(doc)


def test_an_announcement_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(DecodeError, match=_exactly("secure round announcement: not an object")):
        SecureRoundAnnouncement.decode(b"[1, 2]")


@pytest.mark.parametrize("data", [b"{", b"", b"\xff"])
def test_bytes_that_are_not_json_are_a_decode_error_of_the_announcement(data: bytes) -> None:
    with pytest.raises(DecodeError, match=r"^secure round announcement: \S"):
        SecureRoundAnnouncement.decode(data)


def test_a_graph_seed_that_is_not_hex_is_a_decode_error_of_the_announcement() -> None:
    doc = _doc()
    doc["graph_seed"] = "zz"
    with pytest.raises(DecodeError, match=r"^secure round announcement: .*fromhex"):
        _decode(doc)


def test_parameters_that_do_not_fit_together_are_a_decode_error_naming_the_check() -> None:
    doc = _doc()
    doc["threshold"] = 3  # above the degree of 2
    with pytest.raises(
        DecodeError, match=_exactly("secure round announcement: threshold 3 outside 1..degree")
    ):
        _decode(doc)


def test_the_round_config_carries_every_announced_parameter() -> None:
    want = RoundConfig(9, SEED, (1, 2, 3), 2, 1, 2, InputEncoding(4, 1.5, 12, 16, 0.5))
    assert _announcement().round_config() == want


def test_a_weighted_round_config_has_one_more_coordinate_and_a_root_two_wider_clip() -> None:
    config = _announcement(weight_cap=10).round_config()
    assert config.encoding == InputEncoding(5, math.sqrt(2.0) * 1.5, 12, 16, 0.5)
    assert config.participants == (1, 2, 3)


def test_name_of_finds_a_participant_and_names_a_missing_id() -> None:
    a = _announcement()
    assert [a.name_of(u) for u in (1, 2, 3)] == ["gw-a", "gw-b", "gw-c"]
    with pytest.raises(KeyError) as missing:
        a.name_of(4)
    assert missing.value.args == (4,)


# ---- announced adverts -----------------------------------------------------------------


@pytest.mark.parametrize("adverts", [b"", b"\x01", b"adverts of the neighbours"])
def test_announced_adverts_are_a_length_prefixed_announcement_then_the_adverts(
    adverts: bytes,
) -> None:
    a = _announcement()
    head = a.encode()
    data = AnnouncedAdverts(a, adverts).encode()
    assert data == struct.pack(">I", len(head)) + head + adverts
    assert AnnouncedAdverts.decode(data) == AnnouncedAdverts(a, adverts)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_announced_adverts_shorter_than_the_length_prefix_are_truncated(size: int) -> None:
    with pytest.raises(
        DecodeError, match=_exactly(f"announced adverts of {size} bytes are truncated")
    ):
        AnnouncedAdverts.decode(b"\x00" * size)


def test_announced_adverts_of_only_a_length_prefix_read_the_announcement_length() -> None:
    with pytest.raises(
        DecodeError,
        match=_exactly("announced adverts: announcement of 5 bytes is truncated"),
    ):
        AnnouncedAdverts.decode(b"\x00\x00\x00\x05")


def test_an_announcement_length_one_past_the_data_is_truncated() -> None:
    head = _announcement().encode()
    n = len(head) + 1
    with pytest.raises(
        DecodeError,
        match=_exactly(f"announced adverts: announcement of {n} bytes is truncated"),
    ):
        AnnouncedAdverts.decode(struct.pack(">I", n) + head)
