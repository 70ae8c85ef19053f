"""The rhythm task's model: the committed rhythm_mlp asset passes the gates the vitals asset
passes (builtins only, a variable initializer, loss falls in the light runtime), its NumPy twin
reproduces it, class-balanced sampling draws every class alike, and the gateway's tasks pair
each model with its windows."""

from __future__ import annotations

import hashlib
import json
import math
from types import ModuleType

import numpy as np
import pytest

from gateway.rhythm import N_FEATURES
from gateway.tasks import TASKS
from gateway.trainer import (
    F32,
    I32,
    LiteRtTrainer,
    NumpyTrainer,
    TrainOptions,
    _balanced_batch_indices,
    fit,
    flatten,
    init_weights_path,
    load_initial_weights,
    unflatten,
)
from wire.model import (
    DEFAULT_MODEL_PATH,
    RHYTHM_LAYOUT,
    RHYTHM_MODEL_PATH,
    VITALS_LAYOUT,
    WEIGHT_NAMES,
    MlpLayout,
)

from .test_trainer import _litert_module, _max_diff, _op_names


@pytest.fixture(scope="module")
def schema() -> ModuleType:
    return _litert_module("ai_edge_litert.schema_py_generated")


@pytest.fixture
def lite() -> LiteRtTrainer:
    _litert_module("ai_edge_litert.interpreter")
    return LiteRtTrainer(RHYTHM_MODEL_PATH)


@pytest.fixture
def twin() -> NumpyTrainer:
    with np.load(init_weights_path(RHYTHM_MODEL_PATH), allow_pickle=False) as npz:
        return NumpyTrainer([npz[name] for name in WEIGHT_NAMES])


def _three_blobs(n: int, seed: int = 0) -> tuple[F32, I32]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    centres = rng.normal(0, 1.5, (3, N_FEATURES))
    x = (centres[y] + rng.normal(0, 0.6, (n, N_FEATURES))).astype(np.float32)
    return x, y


def test_layout_matches_the_rhythm_features() -> None:
    assert MlpLayout(N_FEATURES, (32, 16), 3) == RHYTHM_LAYOUT
    assert RHYTHM_LAYOUT.parameter_count == 18 * 32 + 32 + 32 * 16 + 16 + 16 * 3 + 3 == 1187
    assert VITALS_LAYOUT.parameter_count == 1106
    assert (TASKS["rhythm"].model_path, TASKS["vitals"].model_path) == (
        RHYTHM_MODEL_PATH,
        DEFAULT_MODEL_PATH,
    )


def test_asset_has_only_builtin_ops_and_a_variable_initializer(schema: ModuleType) -> None:
    model = schema.Model.GetRootAs(RHYTHM_MODEL_PATH.read_bytes(), 0)
    ops = _op_names(schema, model)
    assert not [op for op in ops if "Flex" in op or op.startswith("CUSTOM")], ops
    assert "CALL_ONCE" in ops


def test_asset_metadata_matches_the_files() -> None:
    meta = json.loads(RHYTHM_MODEL_PATH.with_suffix(".json").read_text())
    data = RHYTHM_MODEL_PATH.read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["model"] == "rhythm_mlp"
    assert meta["feature_count"] == N_FEATURES
    assert meta["class_count"] == 3
    assert meta["parameter_count"] == RHYTHM_LAYOUT.parameter_count
    assert [(layer["name"], tuple(layer["shape"])) for layer in meta["layers"]] == list(
        RHYTHM_LAYOUT.weight_shapes
    )
    init = init_weights_path(RHYTHM_MODEL_PATH)
    assert meta["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()


def test_litert_starts_from_the_init_and_learns_three_classes(
    lite: LiteRtTrainer, twin: NumpyTrainer
) -> None:
    assert lite.layout == RHYTHM_LAYOUT
    assert _max_diff(lite.get_weights(), twin.get_weights()) == 0.0
    x, y = _three_blobs(32)
    losses = [lite.train_step(x, y, 0.05) for _ in range(100)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]


def test_numpy_twin_agrees_with_litert_over_twenty_steps(
    lite: LiteRtTrainer, twin: NumpyTrainer
) -> None:
    rng = np.random.default_rng(4)
    x, y = _three_blobs(640, seed=2)
    for step in range(20):
        idx = rng.choice(640, 32, replace=False)
        assert lite.train_step(x[idx], y[idx], 0.05) == pytest.approx(
            twin.train_step(x[idx], y[idx], 0.05), abs=1e-5
        ), step
    assert _max_diff(lite.get_weights(), twin.get_weights()) < 1e-5


def test_labels_and_shapes_are_checked_against_the_layout(twin: NumpyTrainer) -> None:
    x, y = _three_blobs(8)
    twin.train_step(x, y, 0.05)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got 0\.\.3"):
        twin.train_step(x, np.array([0, 1, 2, 3, 0, 1, 2, 0]), 0.05)
    with pytest.raises(ValueError, match=r"shape \(n, 18\)"):
        twin.train_step(np.zeros((8, 16), np.float32), y, 0.05)
    flat = flatten(twin.get_weights(), RHYTHM_LAYOUT)
    assert flat.shape == (1187,)
    assert _max_diff(unflatten(flat, RHYTHM_LAYOUT), twin.get_weights()) == 0.0
    with pytest.raises(ValueError, match=r"shape \(1187,\)"):
        unflatten(np.zeros(1188, np.float32), RHYTHM_LAYOUT)
    with pytest.raises(ValueError, match="expected 6 weight arrays"):
        MlpLayout.of(twin.get_weights()[:5])


def test_initial_weights_load_for_either_model() -> None:
    assert MlpLayout.of(load_initial_weights(RHYTHM_MODEL_PATH)) == RHYTHM_LAYOUT
    assert MlpLayout.of(load_initial_weights(DEFAULT_MODEL_PATH)) == VITALS_LAYOUT


def test_balanced_batches_draw_each_class_alike() -> None:
    y = np.array([0] * 900 + [1] * 30 + [2] * 70, dtype=np.int32)
    rng = np.random.default_rng(0)
    drawn = np.concatenate([b for _ in range(20) for b in _balanced_batch_indices(y, 32, rng)])
    shares = np.bincount(y[drawn], minlength=3) / len(drawn)
    assert np.abs(shares - 1 / 3).max() < 0.02
    batches = list(_balanced_batch_indices(y, 32, rng))
    assert [len(b) for b in batches] == [32] * 32  # ceil(1000 / 32) full batches


def test_balanced_training_finds_the_rare_class(twin: NumpyTrainer) -> None:
    x, y = _three_blobs(3000, seed=9)
    keep = (y != 1) | (np.arange(len(y)) % 30 == 0)  # class 1 becomes ~1% of the windows
    x, y = x[keep], y[keep]
    initial = twin.get_weights()
    recall = {}
    for balanced in (False, True):
        twin.set_weights(initial)
        fit(twin, x, y, TrainOptions(epochs=1, learning_rate=0.01, seed=1, balanced=balanced))
        predicted = twin.predict_logits(x).argmax(axis=1)
        recall[balanced] = float(np.mean(predicted[y == 1] == 1))
    assert recall[True] > 0.9
    assert recall[True] > recall[False]


def test_restricted_softmax_leaves_absent_classes_alone(
    lite: LiteRtTrainer, twin: NumpyTrainer
) -> None:
    x, y = _three_blobs(640, seed=6)
    keep = y != 1
    x, y = x[keep], y[keep]
    before = twin.get_weights()
    rng = np.random.default_rng(8)
    present = [True, False, True]
    for _ in range(20):
        idx = rng.choice(len(y), 32, replace=False)
        assert lite.train_step(x[idx], y[idx], 0.05, present) == pytest.approx(
            twin.train_step(x[idx], y[idx], 0.05, present), abs=1e-5
        )
    after = twin.get_weights()
    assert _max_diff(lite.get_weights(), after) < 1e-5
    # no gradient reaches the absent class's output weights; the others moved
    assert np.array_equal(after[4][:, 1], before[4][:, 1])
    assert after[5][1] == before[5][1]
    assert not np.array_equal(after[4][:, 0], before[4][:, 0])


def test_restricted_fit_masks_the_classes_the_windows_lack(twin: NumpyTrainer) -> None:
    x, y = _three_blobs(200, seed=7)
    x, y = x[y != 2], y[y != 2]
    before = twin.get_weights()
    fit(twin, x, y, TrainOptions(epochs=2, restricted_softmax=True, seed=3))
    assert np.array_equal(twin.get_weights()[4][:, 2], before[4][:, 2])
    twin.set_weights(before)
    fit(twin, x, y, TrainOptions(epochs=2, seed=3))
    assert not np.array_equal(twin.get_weights()[4][:, 2], before[4][:, 2])


def test_present_flags_are_checked(twin: NumpyTrainer) -> None:
    x, y = _three_blobs(8, seed=1)
    with pytest.raises(ValueError, match="present needs 3 flags, got 2"):
        twin.train_step(x, y, 0.05, [True, True])
    with pytest.raises(ValueError, match="not among the present classes"):
        twin.train_step(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), 0.05, [True, False, True])


def test_the_vitals_model_cannot_restrict_its_softmax() -> None:
    _litert_module("ai_edge_litert.interpreter")
    vitals = LiteRtTrainer(DEFAULT_MODEL_PATH)
    x = np.zeros((4, 16), np.float32)
    y = np.zeros(4, np.int32)
    assert math.isfinite(vitals.train_step(x, y, 0.05, [True, True]))
    with pytest.raises(ValueError, match="cannot restrict the softmax"):
        vitals.train_step(x, y, 0.05, [True, False])
