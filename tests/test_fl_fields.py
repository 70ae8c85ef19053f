"""Federated-learning payloads at their limits: the round settings (defaults, JSON field names,
every numeric bound at its exact value and one past it, types, the secure-aggregation clip),
the byte layout of a model update and a global model written out by hand from the format
(">4sII" head: magic, parameter count, metadata length; float32 weights; compact JSON with
sorted keys), the size limits of both, and decoders that raise nothing but DecodeError."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pqlink import DecodeError, ErrorReason
from wire.feature_scaling import FeatureScaling
from wire.fl import MAX_METADATA, MAX_PARAMETERS, GlobalModel, ModelUpdate, RoundSettings

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: The default settings as a global model carries them, keys sorted, written out by hand.
DEFAULT_SETTINGS_JSON = (
    b'{"batch_size":32,"clip_norm":0.0,"epochs":1,"final":false,"learning_rate":0.05,'
    b'"noise_multiplier":0.0,"precision_bits":16,"prox_mu":0.0,"secure_aggregation":false}'
)
ONE_AND_MINUS_TWO = b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0"  # float32 LE 1.0, -2.0


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _settings(**values: Any) -> RoundSettings:
    """Settings from values of any type, as a decoded object may hold them."""
    return RoundSettings(**values)


def _frame(magic: bytes, count: int, meta: bytes, weights: bytes | None = None) -> bytes:
    """A payload assembled field by field (big-endian head, then weights, then metadata)."""
    body = bytes(4 * count) if weights is None else weights
    return magic + count.to_bytes(4, "big") + len(meta).to_bytes(4, "big") + body + meta


def _global_meta(**overrides: Any) -> bytes:
    meta: dict[str, Any] = {"round": 1, "deadline_ms": 2, "settings": {}}
    meta.update(overrides)
    return json.dumps(meta).encode()


# -- round settings: defaults and JSON -------------------------------------------------------


def test_default_settings_and_their_json_field_names() -> None:
    s = RoundSettings()
    assert (s.epochs, s.batch_size, s.learning_rate, s.prox_mu) == (1, 32, 0.05, 0.0)
    assert (s.clip_norm, s.noise_multiplier, s.final, s.secure_aggregation) == (
        0.0,
        0.0,
        False,
        False,
    )
    assert (s.precision_bits, s.feature_stats, s.feature_bound) == (16, 0, 10.0)
    # the two later settings are left out at their default
    assert s.to_json() == {
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.05,
        "prox_mu": 0.0,
        "clip_norm": 0.0,
        "noise_multiplier": 0.0,
        "final": False,
        "secure_aggregation": False,
        "precision_bits": 16,
    }


def test_later_settings_are_sent_when_not_at_their_default() -> None:
    s = RoundSettings(feature_stats=3, feature_bound=2.5, epochs=4)
    out = s.to_json()
    assert out["feature_stats"] == 3
    assert out["feature_bound"] == 2.5
    assert out["epochs"] == 4
    assert len(out) == 11
    assert "feature_bound" not in RoundSettings(feature_stats=3).to_json()
    assert "feature_stats" not in RoundSettings(feature_bound=2.5).to_json()


def test_settings_from_json_fill_defaults_and_take_every_key() -> None:
    assert RoundSettings.from_json({}) == RoundSettings()
    obj = {
        "epochs": 5,
        "batch_size": 64,
        "learning_rate": 0.5,
        "prox_mu": 1.0,
        "clip_norm": 2.0,
        "noise_multiplier": 0.5,
        "final": True,
        "secure_aggregation": True,
        "precision_bits": 20,
        "feature_stats": 8,
        "feature_bound": 3.0,
    }
    s = RoundSettings.from_json(obj)
    assert s == RoundSettings(5, 64, 0.5, 1.0, 2.0, 0.5, True, True, 20, 8, 3.0)
    assert s.to_json() == obj


@pytest.mark.parametrize("obj", [None, [], "epochs", 1])
def test_settings_that_are_not_an_object_are_a_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError, match=_exactly("round settings: not an object")):
        RoundSettings.from_json(obj)


def test_an_unknown_setting_is_a_decode_error_naming_it() -> None:
    with pytest.raises(DecodeError, match=_exactly("round settings: unknown key 'rounds'")):
        RoundSettings.from_json({"epochs": 2, "rounds": 3})


def test_a_bad_setting_value_is_a_decode_error_with_the_reason() -> None:
    with pytest.raises(
        DecodeError, match=_exactly("round setting epochs = 0: expected a value in [1, 1000]")
    ):
        RoundSettings.from_json({"epochs": 0})
    with pytest.raises(
        DecodeError, match=_exactly("round setting batch_size = '8': expected an integer")
    ):
        RoundSettings.from_json({"batch_size": "8"})


def test_an_integer_beyond_the_float_range_is_out_of_range_not_an_overflow() -> None:
    with pytest.raises(DecodeError, match="expected a value in"):
        RoundSettings.from_json({"epochs": 10**400})
    with pytest.raises(ValueError, match="expected a value in"):
        RoundSettings(learning_rate=10**400)


# -- round settings: bounds ------------------------------------------------------------------

BOUNDS: list[tuple[str, float, float, float, float]] = [
    # name, lowest, highest, one below, one above (next integer or next double)
    ("epochs", 1, 1000, 0, 1001),
    ("batch_size", 1, 4096, 0, 4097),
    ("learning_rate", 1e-6, 10.0, math.nextafter(1e-6, 0), math.nextafter(10.0, 11)),
    ("prox_mu", 0.0, 100.0, -5e-324, math.nextafter(100.0, 101)),
    ("clip_norm", 0.0, 1e6, -5e-324, math.nextafter(1e6, 2e6)),
    ("noise_multiplier", 0.0, 100.0, -5e-324, math.nextafter(100.0, 101)),
    ("precision_bits", 1, 30, 0, 31),
    ("feature_stats", 0, 4096, -1, 4097),
    ("feature_bound", 1e-3, 1e6, math.nextafter(1e-3, 0), math.nextafter(1e6, 2e6)),
]


@pytest.mark.parametrize(("name", "lo", "hi", "below", "above"), BOUNDS)
def test_each_setting_accepts_its_bounds_and_rejects_one_past(
    name: str, lo: float, hi: float, below: float, above: float
) -> None:
    assert getattr(_settings(**{name: lo}), name) == lo
    assert getattr(_settings(**{name: hi}), name) == hi
    for bad in (below, above):
        with pytest.raises(ValueError, match=re.escape(f"round setting {name} = {bad!r}:")):
            _settings(**{name: bad})


def test_the_range_in_the_message_is_inclusive_and_compact() -> None:
    with pytest.raises(
        ValueError,
        match=_exactly("round setting learning_rate = 11: expected a value in [1e-06, 10]"),
    ):
        RoundSettings(learning_rate=11)
    with pytest.raises(
        ValueError,
        match=_exactly("round setting feature_bound = 0.0: expected a value in [0.001, 1e+06]"),
    ):
        RoundSettings(feature_bound=0.0)


@pytest.mark.parametrize("name", ["epochs", "batch_size", "precision_bits", "feature_stats"])
def test_an_integer_setting_rejects_a_float_and_a_bool(name: str) -> None:
    with pytest.raises(
        ValueError, match=_exactly(f"round setting {name} = 2.5: expected an integer")
    ):
        _settings(**{name: 2.5})
    with pytest.raises(
        ValueError, match=_exactly(f"round setting {name} = True: expected an integer")
    ):
        _settings(**{name: True})
    with pytest.raises(
        ValueError, match=_exactly(f"round setting {name} = 2.0: expected an integer")
    ):
        _settings(**{name: 2.0})


@pytest.mark.parametrize(
    "name", ["learning_rate", "prox_mu", "clip_norm", "noise_multiplier", "feature_bound"]
)
def test_a_number_setting_takes_an_int_and_rejects_non_numbers(name: str) -> None:
    assert getattr(_settings(**{name: 1}), name) == 1
    for bad in ("1", True, None, math.nan, math.inf, -math.inf):
        with pytest.raises(
            ValueError, match=_exactly(f"round setting {name} = {bad!r}: expected a number")
        ):
            _settings(**{name: bad})


@pytest.mark.parametrize("name", ["final", "secure_aggregation"])
@pytest.mark.parametrize("bad", [1, 0, "true", None])
def test_a_switch_takes_only_a_bool(name: str, bad: object) -> None:
    with pytest.raises(
        ValueError, match=_exactly(f"round setting {name} = {bad!r}: expected true or false")
    ):
        _settings(**{name: bad, "clip_norm": 1.0})


def test_settings_after_the_switches_are_still_checked() -> None:
    with pytest.raises(ValueError, match="round setting precision_bits = 0:"):
        RoundSettings(final=True, precision_bits=0)
    with pytest.raises(ValueError, match="round setting feature_stats = 4097:"):
        RoundSettings(feature_stats=4097)
    with pytest.raises(ValueError, match=re.escape("round setting feature_bound = 0.0:")):
        RoundSettings(feature_bound=0.0)


def test_secure_aggregation_needs_a_positive_clip() -> None:
    msg = _exactly("round setting secure_aggregation needs clip_norm > 0")
    with pytest.raises(ValueError, match=msg):
        RoundSettings(secure_aggregation=True)
    with pytest.raises(ValueError, match=msg):
        RoundSettings(secure_aggregation=True, clip_norm=0.0)
    for clip in (5e-324, 0.5, 1.0):
        assert RoundSettings(secure_aggregation=True, clip_norm=clip).clip_norm == clip
    assert RoundSettings(clip_norm=0.0).secure_aggregation is False


# -- model update ----------------------------------------------------------------------------


def test_model_update_byte_layout() -> None:
    update = ModelUpdate(ONE_AND_MINUS_TWO, 2, {"loss": 0.25, "energy_mj": 3, "tag": "a b"})
    meta = b'{"energy_mj":3,"loss":0.25,"tag":"a b"}'
    want = b"IMU1" + b"\x00\x00\x00\x02" + bytes([0, 0, 0, len(meta)]) + ONE_AND_MINUS_TWO + meta
    assert update.encode() == want
    back = ModelUpdate.decode(want)
    assert back == update
    assert list(back.metrics) == ["energy_mj", "loss", "tag"]


def test_empty_model_update() -> None:
    want = b"IMU1" + bytes(4) + b"\x00\x00\x00\x02" + b"{}"
    assert ModelUpdate(b"", 0).encode() == want
    assert ModelUpdate.decode(want) == ModelUpdate(b"", 0, {})


@pytest.mark.parametrize(
    "metrics", [{"m": 1}, {"m": 1.5}, {"m": "s"}, {"m": True}, {"m": None}, {}]
)
def test_every_scalar_metric_round_trips(metrics: dict[str, Any]) -> None:
    assert ModelUpdate.decode(ModelUpdate(b"", 0, metrics).encode()).metrics == metrics


def test_a_metric_needs_a_string_key_and_a_scalar() -> None:
    int_key: dict[Any, Any] = {1: 2}
    with pytest.raises(ValueError, match=re.escape("metric 1 = 2: expected a string key")):
        ModelUpdate(b"", 0, int_key).encode()
    with pytest.raises(ValueError, match=re.escape("metric 'm' = [1]: expected a string key")):
        ModelUpdate(b"", 0, {"m": [1]}).encode()
    with pytest.raises(ValueError, match=re.escape("metric 'm' = {}: expected")):
        ModelUpdate(b"", 0, {"m": {}}).encode()


@pytest.mark.parametrize("value", [b"[1]", b"{}", b'{"a":1}'])
def test_a_decoded_nested_metric_is_a_decode_error(value: bytes) -> None:
    frame = _frame(b"IMU1", 0, b'{"ok":1,"m":' + value + b"}")
    with pytest.raises(DecodeError, match=r"^metric 'm' = .*: expected a string key"):
        ModelUpdate.decode(frame)


@pytest.mark.parametrize(("count", "size"), [(1, 0), (1, 8), (0, 4), (2, 7), (-1, 0)])
def test_weights_must_hold_exactly_count_float32(count: int, size: int) -> None:
    with pytest.raises(
        ValueError,
        match=_exactly(f"{size} bytes of weights do not hold {count} float32 parameters"),
    ):
        ModelUpdate(bytes(size), count).encode()


def test_parameter_count_limit_at_its_exact_value_and_one_past() -> None:
    weights = bytes(4 * MAX_PARAMETERS)
    frame = ModelUpdate(weights, MAX_PARAMETERS).encode()
    assert frame[:12] == b"IMU1" + (10_000_000).to_bytes(4, "big") + b"\x00\x00\x00\x02"
    assert len(frame) == 12 + 40_000_000 + 2
    back = ModelUpdate.decode(frame)
    assert back.parameter_count == MAX_PARAMETERS
    assert len(back.delta) == 40_000_000
    del frame, back
    with pytest.raises(ValueError, match="do not hold 10000001 float32"):
        ModelUpdate(weights + bytes(4), MAX_PARAMETERS + 1).encode()


def test_metadata_limit_at_its_exact_value_and_one_past() -> None:
    assert MAX_METADATA == 65536
    # {"m":"xxx..."} is 8 bytes of JSON around the text
    ok = ModelUpdate(b"", 0, {"m": "x" * (65536 - 8)})
    frame = ok.encode()
    assert frame[8:12] == b"\x00\x01\x00\x00"
    assert ModelUpdate.decode(frame) == ok
    with pytest.raises(ValueError, match=_exactly("metadata of 65537 bytes exceeds 65536")):
        ModelUpdate(b"", 0, {"m": "x" * (65536 - 7)}).encode()


# -- decoding: the header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decode", "magic", "what"),
    [(ModelUpdate.decode, b"IMU1", "model update"), (GlobalModel.decode, b"IMG1", "global model")],
)
class TestHeader:
    def test_truncated_below_the_head(self, decode: Any, magic: bytes, what: str) -> None:
        for size in (0, 11):
            with pytest.raises(DecodeError, match=_exactly(f"{what} of {size} bytes is truncated")):
                decode((magic + bytes(8))[:size])

    def test_a_bare_head_is_read_and_its_empty_metadata_rejected(
        self, decode: Any, magic: bytes, what: str
    ) -> None:
        with pytest.raises(
            DecodeError, match=_exactly(f"{what}: metadata is not JSON (JSONDecodeError)")
        ):
            decode(magic + bytes(8))

    def test_metadata_that_is_not_utf8_names_the_error(
        self, decode: Any, magic: bytes, what: str
    ) -> None:
        with pytest.raises(
            DecodeError, match=_exactly(f"{what}: metadata is not JSON (UnicodeDecodeError)")
        ):
            decode(_frame(magic, 0, b"\xff\xfe\xfd"))

    def test_metadata_that_is_not_an_object(self, decode: Any, magic: bytes, what: str) -> None:
        with pytest.raises(DecodeError, match=_exactly(f"{what}: metadata is not an object")):
            decode(_frame(magic, 0, b"[]"))

    def test_wrong_magic(self, decode: Any, magic: bytes, what: str) -> None:
        other = b"IMG1" if magic == b"IMU1" else b"IMU1"
        with pytest.raises(DecodeError, match=_exactly(f"{what}: wrong magic {other!r}")):
            decode(_frame(other, 0, b"{}"))

    def test_count_limit(self, decode: Any, magic: bytes, what: str) -> None:
        # at the limit the head is plausible and only the length is wrong
        with pytest.raises(
            DecodeError, match=_exactly(f"{what}: length 14 does not match its header")
        ):
            decode(magic + (10_000_000).to_bytes(4, "big") + b"\x00\x00\x00\x02{}")
        with pytest.raises(
            DecodeError,
            match=_exactly(f"{what}: implausible sizes (10000001 parameters, 2 B metadata)"),
        ):
            decode(magic + (10_000_001).to_bytes(4, "big") + b"\x00\x00\x00\x02{}")

    def test_metadata_length_limit(self, decode: Any, magic: bytes, what: str) -> None:
        with pytest.raises(
            DecodeError, match=_exactly(f"{what}: length 14 does not match its header")
        ):
            decode(magic + bytes(4) + (65536).to_bytes(4, "big") + b"{}")
        with pytest.raises(
            DecodeError,
            match=_exactly(f"{what}: implausible sizes (0 parameters, 65537 B metadata)"),
        ):
            decode(magic + bytes(4) + (65537).to_bytes(4, "big") + b"{}")

    def test_length_mismatch(self, decode: Any, magic: bytes, what: str) -> None:
        good = _frame(magic, 1, b"{}")
        for bad in (good[:-1], good + b" "):
            with pytest.raises(
                DecodeError, match=_exactly(f"{what}: length {len(bad)} does not match its header")
            ):
                decode(bad)


def test_a_full_metadata_block_decodes() -> None:
    meta = b'{"m":"' + b"x" * (65536 - 8) + b'"}'
    assert len(meta) == MAX_METADATA
    assert ModelUpdate.decode(_frame(b"IMU1", 0, meta)).metrics == {"m": "x" * 65528}


# -- global model ----------------------------------------------------------------------------


def test_global_model_byte_layout_without_scaling() -> None:
    model = GlobalModel(ONE_AND_MINUS_TWO, 2, 3, 5000)
    meta = b'{"deadline_ms":5000,"round":3,"settings":' + DEFAULT_SETTINGS_JSON + b"}"
    want = b"IMG1" + b"\x00\x00\x00\x02" + len(meta).to_bytes(4, "big") + ONE_AND_MINUS_TWO + meta
    assert model.encode() == want
    back = GlobalModel.decode(want)
    assert back == model
    assert (back.round, back.deadline_ms, back.parameter_count) == (3, 5000, 2)
    assert back.weights == ONE_AND_MINUS_TWO
    assert back.feature_scaling is None


def test_global_model_byte_layout_with_scaling_and_later_settings() -> None:
    scaling = FeatureScaling((0.5,), (2.0,), 7)
    rs = RoundSettings(feature_stats=1, feature_bound=2.5)
    model = GlobalModel(b"\x00\x00\x80\x3f", 1, 0, 0, rs, scaling)
    # feature_bound and feature_stats sort between epochs and final
    meta = (
        b'{"deadline_ms":0,'
        b'"feature_scaling":{"count":7,"mean":[0.5],"std":[2.0],"version":1},'
        b'"round":0,"settings":{"batch_size":32,"clip_norm":0.0,"epochs":1,'
        b'"feature_bound":2.5,"feature_stats":1,"final":false,"learning_rate":0.05,'
        b'"noise_multiplier":0.0,"precision_bits":16,"prox_mu":0.0,"secure_aggregation":false}}'
    )
    want = b"IMG1" + b"\x00\x00\x00\x01" + len(meta).to_bytes(4, "big") + b"\x00\x00\x80\x3f" + meta
    assert model.encode() == want
    back = GlobalModel.decode(want)
    assert back == model
    assert back.feature_scaling == scaling
    assert back.settings.feature_stats == 1


def test_global_model_round_and_deadline_are_counts_when_encoding() -> None:
    for rnd, deadline in ((-1, 0), (0, -1)):
        with pytest.raises(
            ValueError, match=_exactly(f"round {rnd} and deadline {deadline} must be >= 0")
        ):
            GlobalModel(b"", 0, rnd, deadline).encode()
    assert GlobalModel.decode(GlobalModel(b"", 0, 0, 0).encode()) == GlobalModel(b"", 0, 0, 0)


def test_global_model_weights_must_match_the_count() -> None:
    with pytest.raises(ValueError, match="4 bytes of weights do not hold 2 float32 parameters"):
        GlobalModel(bytes(4), 2, 1, 1).encode()


def test_global_model_unknown_metadata_is_a_decode_error() -> None:
    with pytest.raises(
        DecodeError, match=_exactly("global model: unknown metadata ['extra', 'zz']")
    ):
        GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(extra=1, zz=2)))


@pytest.mark.parametrize("name", ["round", "deadline_ms"])
@pytest.mark.parametrize("bad", [-1, True, False, 1.0, "1", None, [1]])
def test_global_model_round_and_deadline_must_be_counts(name: str, bad: object) -> None:
    with pytest.raises(
        DecodeError, match=_exactly(f"global model: {name} = {bad!r} is not a count")
    ):
        GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(**{name: bad})))


@pytest.mark.parametrize("name", ["round", "deadline_ms"])
def test_global_model_round_and_deadline_are_required(name: str) -> None:
    meta = json.loads(_global_meta())
    del meta[name]
    with pytest.raises(DecodeError, match=_exactly(f"global model: {name} = None is not a count")):
        GlobalModel.decode(_frame(b"IMG1", 0, json.dumps(meta).encode()))


def test_global_model_decodes_zero_counts_in_their_places() -> None:
    back = GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(round=0, deadline_ms=9)))
    assert (back.round, back.deadline_ms) == (0, 9)
    back = GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(round=9, deadline_ms=0)))
    assert (back.round, back.deadline_ms) == (9, 0)


def test_global_model_settings_are_required_and_checked() -> None:
    with pytest.raises(DecodeError, match=_exactly("global model: metadata lacks settings")):
        GlobalModel.decode(_frame(b"IMG1", 0, b'{"round":1,"deadline_ms":2}'))
    with pytest.raises(DecodeError, match=_exactly("round settings: not an object")):
        GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(settings=None)))
    with pytest.raises(DecodeError, match=_exactly("round settings: unknown key 'x'")):
        GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(settings={"x": 1})))
    back = GlobalModel.decode(
        _frame(b"IMG1", 0, _global_meta(settings={"epochs": 7, "final": True}))
    )
    assert back.settings == RoundSettings(epochs=7, final=True)


def test_global_model_scaling_null_is_absent_and_a_bad_one_is_a_decode_error() -> None:
    back = GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(feature_scaling=None)))
    assert back.feature_scaling is None
    with pytest.raises(DecodeError, match="feature scaling"):
        GlobalModel.decode(_frame(b"IMG1", 0, _global_meta(feature_scaling={"version": 1})))


# -- decoders raise only their typed error ---------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["round", "deadline_ms", "settings", "feature_scaling", "x"])
_SETTING_KEYS = st.sampled_from([b[0] for b in BOUNDS] + ["final", "secure_aggregation", "y"])


def _decoded_or_refused(decode: Callable[[bytes], object], frame: bytes) -> None:
    """`decode(frame)` gives its payload or raises DecodeError as malformed; anything else
    escaping fails the test."""
    reason = None
    try:
        payload = decode(frame)
    except DecodeError as exc:
        reason = exc.reason
    else:
        assert isinstance(payload, GlobalModel | ModelUpdate)
    assert reason in (None, ErrorReason.MALFORMED)


@SETTINGS
@given(
    meta=st.dictionaries(_KEYS, _JSON | st.dictionaries(_SETTING_KEYS, _JSON, max_size=4)),
    count=st.integers(0, 3),
)
def test_global_model_decode_raises_only_decode_error(meta: dict[str, Any], count: int) -> None:
    _decoded_or_refused(GlobalModel.decode, _frame(b"IMG1", count, json.dumps(meta).encode()))


@SETTINGS
@given(data=st.binary(max_size=64), magic=st.sampled_from([b"IMU1", b"IMG1"]))
def test_update_decode_raises_only_decode_error(data: bytes, magic: bytes) -> None:
    _decoded_or_refused(ModelUpdate.decode, magic + data)


@SETTINGS
@given(
    weights=st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]), rnd=st.integers(0, 2**40)
)
def test_global_model_round_trips(weights: bytes, rnd: int) -> None:
    model = GlobalModel(weights, len(weights) // 4, rnd, rnd // 2 + 1)
    assert GlobalModel.decode(model.encode()) == model
    assert struct.unpack_from(">4sII", model.encode())[:2] == (b"IMG1", len(weights) // 4)
