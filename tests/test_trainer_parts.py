"""The trainer's parts one by one: the MLP layout's limits, class-balanced batches, the restricted
softmax, the ReLU derivative at 0, dtype conversion, layouts other than the vitals one, the
option checks' exact messages, the runtime fallback, FedProx/clipping/noise at their boundaries
and the initial-weights fallback; each on both backends where the backends share the behaviour."""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.trainer import (
    F32,
    I32,
    LiteRtTrainer,
    NumpyTrainer,
    RuntimeUnavailableError,
    Trainer,
    TrainingDivergedError,
    TrainOptions,
    _balanced_batch_indices,
    _batch_indices,
    evaluate,
    fit,
    flatten,
    init_weights_path,
    load_initial_weights,
    make_trainer,
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

from .test_trainer import _hide_runtimes, _litert_module, _max_diff


def _npz_weights(model: Path) -> list[F32]:
    with np.load(init_weights_path(model), allow_pickle=False) as npz:
        return [npz[name] for name in WEIGHT_NAMES]


def _litert(model: Path) -> LiteRtTrainer:
    _litert_module("ai_edge_litert.interpreter")
    return LiteRtTrainer(model)


def _trainer(kind: str, model: Path) -> Trainer:
    if kind == "numpy":
        return NumpyTrainer(_npz_weights(model))
    return _litert(model)


@pytest.fixture(params=["numpy", "litert"])
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def _zeros(layout: MlpLayout) -> list[F32]:
    return [np.zeros(shape, np.float32) for _, shape in layout.weight_shapes]


def _windows(n: int, features: int, seed: int = 0) -> F32:
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def _rhythm_data(n: int, seed: int = 0) -> tuple[F32, I32]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = (rng.normal(size=(n, 18)) + y[:, None] * np.linspace(1.0, 0.1, 18)).astype(np.float32)
    return x, y


# ---------------------------------------------------------------------------------------------
# The layout


@pytest.mark.parametrize(
    ("features", "hidden", "classes", "count"),
    [(1, (1, 1), 2, 1 + 1 + 1 + 1 + 2 + 2), (16, (32, 16), 2, 1106), (18, (32, 16), 3, 1187)],
)
def test_layout_accepts_one_unit_per_layer_and_two_classes(
    features: int, hidden: tuple[int, int], classes: int, count: int
) -> None:
    layout = MlpLayout(features, hidden, classes)
    assert layout.parameter_count == count
    assert layout.weight_shapes[0] == ("w1", (features, hidden[0]))


@pytest.mark.parametrize(
    ("features", "hidden", "classes"),
    [
        (0, (32, 16), 2),
        (16, (0, 16), 2),
        (16, (32, 0), 2),
        (16, (32, 16), 1),
        (0, (32, 16), 3),
    ],
)
def test_layout_refuses_an_empty_layer_or_a_single_class(
    features: int, hidden: tuple[int, int], classes: int
) -> None:
    with pytest.raises(ValueError, match="needs >= 1 unit per layer and >= 2 classes"):
        MlpLayout(features, hidden, classes)


def test_layout_of_reads_the_weight_shapes() -> None:
    assert MlpLayout.of(_npz_weights(DEFAULT_MODEL_PATH)) == VITALS_LAYOUT
    assert MlpLayout.of(_npz_weights(RHYTHM_MODEL_PATH)) == RHYTHM_LAYOUT
    assert MlpLayout.of(_zeros(MlpLayout(3, (4, 5), 6))) == MlpLayout(3, (4, 5), 6)


@pytest.mark.parametrize("index", [0, 2, 4])
def test_layout_of_refuses_a_weight_matrix_that_is_not_2d(index: int) -> None:
    weights = _zeros(VITALS_LAYOUT)
    weights[index] = weights[index].reshape(-1)
    with pytest.raises(ValueError, match="must be 2-D"):
        MlpLayout.of(weights)


def test_layout_of_refuses_objects_without_a_shape() -> None:
    weights: list[Any] = [[[0.0, 0.0]], [0.0], [[0.0]], [0.0], [[0.0, 0.0]], [0.0, 0.0]]
    with pytest.raises(ValueError, match=r"must be 2-D, got \(\), \(\), \(\)"):
        MlpLayout.of(weights)
    with pytest.raises(ValueError, match="expected 6 weight arrays"):
        MlpLayout.of(weights[:5])


# ---------------------------------------------------------------------------------------------
# Class-balanced batches


@pytest.mark.parametrize(("n", "batch"), [(1, 32), (5, 32), (32, 32), (33, 32), (70, 32)])
def test_balanced_batches_have_a_fixed_size_and_one_per_window_batch(n: int, batch: int) -> None:
    y = (np.arange(n) % 2).astype(np.int32)
    batches = list(_balanced_batch_indices(y, batch, np.random.default_rng(0)))
    assert len(batches) == math.ceil(n / batch)
    assert all(len(b) == batch for b in batches)
    drawn = np.concatenate(batches)
    assert drawn.min() >= 0
    assert drawn.max() < n


def test_balanced_batches_draw_every_class_alike() -> None:
    # 990 windows of class 0 and 10 of class 1: 1000 draws, each class with probability 1/2
    y = np.array([0] * 990 + [1] * 10, np.int32)
    batches = list(_balanced_batch_indices(y, 100, np.random.default_rng(3)))
    drawn = np.concatenate(batches)
    assert len(batches) == 10
    assert drawn.shape == (1000,)
    minority = int((y[drawn] == 1).sum())
    # binomial(1000, 1/2): std 15.8, so 400..600 is beyond 6 sigma
    assert 400 <= minority <= 600
    # with replacement: 500 draws among 10 windows repeat them
    assert len(set(drawn[y[drawn] == 1].tolist())) <= 10


class _Recorder(NumpyTrainer):
    """A NumPy trainer that records the labels of every batch it trains on."""

    def __init__(self, initial_weights: list[F32]) -> None:
        super().__init__(initial_weights)
        self.batches: list[I32] = []
        self.masks: list[F32] = []

    def _train_batch(self, x: F32, y: I32, lr: np.float32, mask: F32) -> float:
        self.batches.append(y.copy())
        self.masks.append(mask.copy())
        return super()._train_batch(x, y, lr, mask)


def _skewed(n_major: int, n_minor: int) -> tuple[F32, I32]:
    y = np.array([0] * n_major + [1] * n_minor, np.int32)
    return _windows(len(y), 16, seed=4), y


def test_fit_balanced_draws_the_rare_class_as_often_as_the_common_one() -> None:
    x, y = _skewed(95, 5)
    trainer = _Recorder(_npz_weights(DEFAULT_MODEL_PATH))
    result = fit(trainer, x, y, TrainOptions(epochs=4, batch_size=10, balanced=True))
    assert result.steps == 4 * 10
    labels = np.concatenate(trainer.batches)
    assert labels.shape == (400,)
    assert all(len(b) == 10 for b in trainer.batches)
    # binomial(400, 1/2): std 10
    assert 140 <= int((labels == 1).sum()) <= 260


def test_fit_unbalanced_visits_every_window_once_per_epoch() -> None:
    x, y = _skewed(95, 5)
    trainer = _Recorder(_npz_weights(DEFAULT_MODEL_PATH))
    fit(trainer, x, y, TrainOptions(epochs=4, batch_size=10))
    labels = np.concatenate(trainer.batches)
    assert labels.shape == (400,)
    assert int((labels == 1).sum()) == 4 * 5


def test_batches_pad_a_short_epoch_with_distinct_windows() -> None:
    # 33 windows in batches of 32: the second batch is the leftover window and 31 others
    batches = list(_batch_indices(33, 32, np.random.default_rng(1)))
    assert len(batches) == 2
    assert len(set(batches[1].tolist())) == 32


# ---------------------------------------------------------------------------------------------
# The restricted softmax


def _logit_weights(layout: MlpLayout, b3: list[float]) -> list[F32]:
    """Weights whose logits are `b3` for every window."""
    weights = _zeros(layout)
    weights[5] = np.array(b3, np.float32)
    return weights


def test_restricted_softmax_leaves_absent_classes_out_of_the_loss(kind: str) -> None:
    trainer = _trainer(kind, RHYTHM_MODEL_PATH)
    x = _windows(4, 18)
    y = np.zeros(4, np.int32)
    trainer.set_weights(_logit_weights(RHYTHM_LAYOUT, [2.0, 0.0, 5.0]))
    restricted = trainer.train_step(x, y, 0.1, [True, True, False])
    assert restricted == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-5)
    trainer.set_weights(_logit_weights(RHYTHM_LAYOUT, [2.0, 0.0, 5.0]))
    full = trainer.train_step(x, y, 0.1)
    assert full == pytest.approx(math.log(1 + math.exp(-2.0) + math.exp(3.0)), abs=1e-5)
    # the absent class's logit is untouched by the restricted step
    trainer.set_weights(_logit_weights(RHYTHM_LAYOUT, [2.0, 0.0, 5.0]))
    trainer.train_step(x, y, 0.1, [True, True, False])
    assert trainer.get_weights()[5][2] == pytest.approx(5.0, abs=1e-6)
    assert trainer.get_weights()[5][0] > 2.0


def test_present_flags_are_checked(kind: str) -> None:
    trainer = _trainer(kind, RHYTHM_MODEL_PATH)
    x = _windows(4, 18)
    y = np.array([0, 1, 0, 1], np.int32)
    before = trainer.get_weights()
    with pytest.raises(ValueError, match="present needs 3 flags, got 2"):
        trainer.train_step(x, y, 0.1, [True, True])
    with pytest.raises(ValueError, match="present needs 3 flags, got 4"):
        trainer.train_step(x, y, 0.1, [True, True, True, True])
    with pytest.raises(ValueError, match="a label of the batch is not among the present"):
        trainer.train_step(x, y, 0.1, [True, False, True])
    assert _max_diff(trainer.get_weights(), before) == 0.0
    assert math.isfinite(trainer.train_step(x, y, 0.1, [True, True, False]))


def test_vitals_runtime_model_cannot_restrict_the_softmax() -> None:
    trainer = _litert(DEFAULT_MODEL_PATH)
    x = _windows(4, 16)
    y = np.zeros(4, np.int32)
    trainer.set_weights(_zeros(VITALS_LAYOUT))
    assert trainer.train_step(x, y, 0.1, [True, True]) == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="cannot restrict the softmax"):
        trainer.train_step(x, y, 0.1, [True, False])


def test_fit_restricted_to_one_present_class_changes_nothing(kind: str) -> None:
    # a single present class has probability 1: zero loss, zero gradient
    trainer = _trainer(kind, RHYTHM_MODEL_PATH)
    x = _windows(40, 18, seed=2)
    y = np.full(40, 1, np.int32)
    g = _npz_weights(RHYTHM_MODEL_PATH)
    restricted = fit(trainer, x, y, TrainOptions(epochs=2, restricted_softmax=True), g)
    assert restricted.update_norm == 0.0
    assert _max_diff(restricted.weights, g) == 0.0
    plain = fit(trainer, x, y, TrainOptions(epochs=2), g)
    assert plain.update_norm > 0.01


def test_fit_restricted_passes_the_present_classes() -> None:
    x = _windows(20, 16, seed=5)
    y = np.array([0, 1] * 10, np.int32)
    trainer = _Recorder(_npz_weights(DEFAULT_MODEL_PATH))
    fit(trainer, x, y, TrainOptions(restricted_softmax=True))
    assert [m.tolist() for m in trainer.masks] == [[1.0, 1.0]]
    assert trainer.masks[0].dtype == np.float32


def test_train_step_mask_is_float32_for_the_runtime() -> None:
    # the rhythm model's train signature takes a float32 mask even when no class is left out
    trainer = _litert(RHYTHM_MODEL_PATH)
    x, y = _rhythm_data(32)
    trainer.set_weights(_zeros(RHYTHM_LAYOUT))
    assert trainer.train_step(x, y, 0.1) == pytest.approx(math.log(3), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The backward pass: ReLU has derivative 0 at 0


def test_a_layer_at_exactly_zero_passes_no_gradient(kind: str) -> None:
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    weights = _zeros(VITALS_LAYOUT)
    # w3: opposite columns, so a gradient through a live layer 2 would not cancel out
    weights[4] = np.tile(np.array([0.5, -0.5], np.float32), (16, 1))
    trainer.set_weights(weights)
    x = _windows(4, 16)
    y = np.array([0, 1, 0, 0], np.int32)
    assert trainer.train_step(x, y, 0.1) == pytest.approx(math.log(2), abs=1e-6)
    after = trainer.get_weights()
    # h2 = relu(0) = 0: only b3 moves, by -lr * mean(softmax - onehot) = -0.1 * (-0.25, 0.25)
    assert _max_diff(after[:5], weights[:5]) == 0.0
    assert np.allclose(after[5], [0.025, -0.025], atol=1e-7)


def test_first_layer_at_exactly_zero_passes_no_gradient(kind: str) -> None:
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    weights = _zeros(VITALS_LAYOUT)
    weights[2] = np.full((32, 16), 0.5, np.float32)  # w2
    weights[3] = np.full(16, 1.0, np.float32)  # b2: layer 2 is active
    weights[4] = np.tile(np.array([0.5, -0.5], np.float32), (16, 1))  # w3
    trainer.set_weights(weights)
    x = _windows(4, 16)
    y = np.array([0, 1, 1, 1], np.int32)
    trainer.train_step(x, y, 0.1)
    after = trainer.get_weights()
    assert _max_diff(after[:2], weights[:2]) == 0.0  # z1 = 0 everywhere
    assert np.abs(after[3] - weights[3]).max() > 1e-4  # b2 gets a gradient


# ---------------------------------------------------------------------------------------------
# Conversions


def test_integer_features_are_accepted(kind: str) -> None:
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    x = np.arange(48, dtype=np.int64).reshape(3, 16) % 5 - 2
    assert np.array_equal(trainer.predict_logits(x), trainer.predict_logits(x.astype(np.float32)))
    assert trainer.predict_logits(x.astype(np.int32)).dtype == np.float32


def test_float64_weights_are_stored_as_float32(kind: str) -> None:
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    weights64 = [w.astype(np.float64) + 0.1 for w in _npz_weights(DEFAULT_MODEL_PATH)]
    trainer.set_weights(weights64)
    assert [w.dtype for w in trainer.get_weights()] == [np.dtype(np.float32)] * 6
    assert trainer.get_flat().dtype == np.float32
    flat64 = flatten(weights64).astype(np.float64) * 2
    trainer.set_flat(flat64)
    assert [w.dtype for w in trainer.get_weights()] == [np.dtype(np.float32)] * 6
    assert trainer.get_flat().dtype == np.float32
    assert np.array_equal(trainer.get_flat(), flat64.astype(np.float32))


def test_flatten_and_unflatten_return_float32() -> None:
    weights64 = [w.astype(np.float64) for w in _npz_weights(DEFAULT_MODEL_PATH)]
    assert flatten(weights64).dtype == np.float32
    assert [w.dtype for w in unflatten(flatten(weights64).astype(np.float64))] == [
        np.dtype(np.float32)
    ] * 6


# ---------------------------------------------------------------------------------------------
# A layout other than the vitals one reaches every public function


def test_rhythm_layout_through_every_function(kind: str) -> None:
    trainer = _trainer(kind, RHYTHM_MODEL_PATH)
    assert trainer.layout == RHYTHM_LAYOUT
    g = _npz_weights(RHYTHM_MODEL_PATH)
    flat = flatten(g, RHYTHM_LAYOUT)
    assert flat.shape == (1187,)
    assert _max_diff(unflatten(flat, RHYTHM_LAYOUT), g) == 0.0
    trainer.set_weights(g)
    trainer.set_flat(flat * 2)
    assert np.array_equal(trainer.get_flat(), flat * 2)
    trainer.set_flat(flat)
    x, y = _rhythm_data(64)
    assert trainer.predict_logits(x).shape == (64, 3)
    loss, accuracy = evaluate(trainer, x, y)
    assert math.isfinite(loss)
    assert 0.0 <= accuracy <= 1.0
    assert math.isfinite(trainer.train_step(x, y, 0.05))
    result = fit(trainer, x, y, TrainOptions(epochs=2), g)
    assert [w.shape for w in result.weights] == [s for _, s in RHYTHM_LAYOUT.weight_shapes]
    assert result.loss_before == pytest.approx(evaluate(NumpyTrainer(g), x, y)[0], abs=1e-5)
    with pytest.raises(ValueError, match="1187"):
        trainer.set_flat(flatten(_npz_weights(DEFAULT_MODEL_PATH)))


def test_numpy_trainer_checks_weights_against_a_given_layout() -> None:
    with pytest.raises(ValueError, match=r"'w1' must have shape \(18, 32\)"):
        NumpyTrainer(_npz_weights(DEFAULT_MODEL_PATH), RHYTHM_LAYOUT)
    trainer = NumpyTrainer(_npz_weights(RHYTHM_MODEL_PATH), RHYTHM_LAYOUT)
    assert trainer.layout == RHYTHM_LAYOUT


# ---------------------------------------------------------------------------------------------
# The loss of very confident logits


def test_evaluate_is_exact_for_logits_beyond_exp_range(kind: str) -> None:
    # logit 0 = 1000·x0 for x0 >= 0, logit 1 = 0: exp(1000) overflows, the log-softmax must not
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    weights = _zeros(VITALS_LAYOUT)
    weights[0][0, 0] = 1.0
    weights[2][0, 0] = 1.0
    weights[4][0, 0] = 1000.0
    trainer.set_weights(weights)
    x = np.zeros((2, 16), np.float32)
    x[0, 0] = 1.0
    # row 0: logits (1000, 0), label 0, loss ~0; row 1: logits (0, 0), label 1, loss log 2
    loss, accuracy = evaluate(trainer, x, np.array([0, 1], np.int32))
    assert loss == pytest.approx(math.log(2) / 2, rel=1e-9)
    assert accuracy == 0.5
    loss, accuracy = evaluate(trainer, x[:1], np.array([1], np.int32))
    assert loss == pytest.approx(1000.0, rel=1e-9)
    assert accuracy == 0.0


# ---------------------------------------------------------------------------------------------
# TrainOptions: exact messages and limits


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("seed", -1, "seed must be an integer >= 0, got -1"),
        ("learning_rate", 0.0, "learning_rate must be a finite number > 0, got 0.0"),
        ("prox_mu", -0.5, "prox_mu must be a finite number >= 0, got -0.5"),
        ("clip_norm", 0.0, "clip_norm must be a finite number > 0, got 0.0"),
        ("noise_multiplier", -1.0, "noise_multiplier must be a finite number >= 0, got -1.0"),
    ],
)
def test_train_options_messages(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainOptions(**{field: value})


def test_train_options_accept_their_limits() -> None:
    options = TrainOptions(
        epochs=1, batch_size=1, prox_mu=0.0, noise_multiplier=0.0, seed=0, clip_norm=1e-9
    )
    assert (options.epochs, options.batch_size, options.seed) == (1, 1, 0)
    assert options.noise_std == 0.0
    assert TrainOptions().noise_std == 0.0


# ---------------------------------------------------------------------------------------------
# FedProx, clipping and noise at their boundaries


def test_fedprox_step_is_the_proximal_operator(kind: str) -> None:
    # one step over the whole batch: w = (w_sgd + lr·mu·w_g) / (1 + lr·mu)
    x, y = _skewed(20, 12)
    g = _npz_weights(DEFAULT_MODEL_PATH)
    reference = NumpyTrainer(g)
    reference.train_step(x, y, 0.1)
    sgd = flatten(reference.get_weights()).astype(np.float64)
    anchor = flatten(g).astype(np.float64)
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    options = TrainOptions(batch_size=32, learning_rate=0.1, prox_mu=0.5)
    result = fit(trainer, x, y, options, g)
    assert result.steps == 1
    expected = (sgd + 0.05 * anchor) / 1.05
    assert np.abs(flatten(result.weights) - expected).max() < 1e-5
    assert np.abs(sgd - expected).max() > 1e-4


def test_clip_norm_equal_to_the_update_norm_does_not_clip(kind: str) -> None:
    x, y = _skewed(40, 24)
    g = _npz_weights(DEFAULT_MODEL_PATH)
    trainer = _trainer(kind, DEFAULT_MODEL_PATH)
    free = fit(trainer, x, y, TrainOptions(epochs=2, seed=3), g)
    norm = free.update_norm
    assert norm > 0.0
    at = fit(trainer, x, y, TrainOptions(epochs=2, seed=3, clip_norm=norm), g)
    assert not at.clipped
    assert _max_diff(at.weights, free.weights) == 0.0
    above = fit(trainer, x, y, TrainOptions(epochs=2, seed=3, clip_norm=norm * 10), g)
    assert not above.clipped
    assert _max_diff(above.weights, free.weights) == 0.0
    below = fit(trainer, x, y, TrainOptions(epochs=2, seed=3, clip_norm=norm / 2), g)
    assert below.clipped
    delta = flatten(below.weights).astype(np.float64) - flatten(g)
    assert np.linalg.norm(delta) == pytest.approx(norm / 2, rel=1e-4)


def test_noise_is_added_to_the_trained_update() -> None:
    x, y = _skewed(40, 24)
    g = _npz_weights(DEFAULT_MODEL_PATH)
    trainer = NumpyTrainer(g)
    clean = fit(trainer, x, y, TrainOptions(epochs=2, clip_norm=100.0), g)
    noisy = fit(trainer, x, y, TrainOptions(epochs=2, clip_norm=100.0, noise_multiplier=1e-6), g)
    assert noisy.noise_std == pytest.approx(1e-4)
    update = flatten(clean.weights).astype(np.float64) - flatten(g)
    assert np.abs(update).max() > 0.01
    # the noise (std 1e-4) stays within 6 sigma of the trained weights
    assert _max_diff(noisy.weights, clean.weights) < 6e-4
    assert _max_diff(noisy.weights, clean.weights) > 0.0


def test_weights_that_overflow_float32_are_a_divergence() -> None:
    x, y = _skewed(10, 6)
    trainer = NumpyTrainer(_npz_weights(DEFAULT_MODEL_PATH))
    options = TrainOptions(clip_norm=1.0, noise_multiplier=1e39)
    with np.errstate(over="ignore"), pytest.raises(TrainingDivergedError, match="not finite"):
        fit(trainer, x, y, options)


# ---------------------------------------------------------------------------------------------
# Runtimes and the initial weights


def _fake_module(name: str, interpreter: Any) -> ModuleType:
    module = ModuleType(name)
    module.Interpreter = interpreter  # type: ignore[attr-defined]
    return module


def test_tflite_runtime_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _litert_module("ai_edge_litert.interpreter").Interpreter
    _hide_runtimes(monkeypatch)
    monkeypatch.setitem(sys.modules, "tflite_runtime", ModuleType("tflite_runtime"))
    monkeypatch.setitem(
        sys.modules,
        "tflite_runtime.interpreter",
        _fake_module("tflite_runtime.interpreter", real),
    )
    trainer = LiteRtTrainer(DEFAULT_MODEL_PATH)
    assert trainer.backend == "tflite-runtime"
    assert make_trainer(DEFAULT_MODEL_PATH).backend == "tflite-runtime"
    assert _max_diff(trainer.get_weights(), _npz_weights(DEFAULT_MODEL_PATH)) == 0.0


def test_no_runtime_names_both_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_runtimes(monkeypatch)
    with pytest.raises(RuntimeUnavailableError) as info:
        LiteRtTrainer(DEFAULT_MODEL_PATH)
    assert "ai_edge_litert.interpreter:" in str(info.value)
    assert "tflite_runtime.interpreter:" in str(info.value)


def _install_interpreter(
    monkeypatch: pytest.MonkeyPatch,
    hide: tuple[str, ...] = (),
    wrap: Callable[[str, Any], Any] | None = None,
) -> None:
    """Serve the real runtime's interpreter with some signatures hidden or runners wrapped."""
    real = _litert_module("ai_edge_litert.interpreter").Interpreter

    class Filtered:
        def __init__(self, model_path: str, num_threads: int) -> None:
            self._real = real(model_path=model_path, num_threads=num_threads)

        def get_signature_list(self) -> dict[str, Any]:
            signatures: dict[str, Any] = self._real.get_signature_list()
            return {k: v for k, v in signatures.items() if k not in hide}

        def get_signature_runner(self, name: str) -> Any:
            runner = self._real.get_signature_runner(name)
            return wrap(name, runner) if wrap is not None else runner

    importlib.import_module("ai_edge_litert")
    monkeypatch.setitem(
        sys.modules,
        "ai_edge_litert.interpreter",
        _fake_module("ai_edge_litert.interpreter", Filtered),
    )


def test_a_model_without_a_required_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_interpreter(monkeypatch, hide=("infer",))
    with pytest.raises(ValueError, match=r"lacks the signatures \['infer'\]"):
        LiteRtTrainer(DEFAULT_MODEL_PATH)


def test_a_model_without_a_weight_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def drop_b3(name: str, runner: Any) -> Any:
        if name != "get_weights":
            return runner
        return lambda: {k: v for k, v in runner().items() if k != "b3"}

    _install_interpreter(monkeypatch, wrap=drop_b3)
    with pytest.raises(ValueError, match=r"lacks the weights \['b3'\]"):
        LiteRtTrainer(DEFAULT_MODEL_PATH)


def test_a_setter_that_stores_nothing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_op_setter(name: str, runner: Any) -> Any:
        return (lambda **_: {}) if name == "set_weights" else runner

    _install_interpreter(monkeypatch, wrap=no_op_setter)
    with pytest.raises(ValueError, match="set_weights does not store"):
        LiteRtTrainer(DEFAULT_MODEL_PATH)


def test_a_model_without_flat_signatures_goes_through_the_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _install_interpreter(monkeypatch, hide=("get_flat", "set_flat"))
    trainer = LiteRtTrainer(RHYTHM_MODEL_PATH)
    g = _npz_weights(RHYTHM_MODEL_PATH)
    assert np.array_equal(trainer.get_flat(), flatten(g, RHYTHM_LAYOUT))
    trainer.set_flat(flatten(g, RHYTHM_LAYOUT) * 3)
    assert _max_diff(trainer.get_weights(), [w * 3 for w in g]) == 0.0
    with pytest.raises(ValueError, match="1187"):
        trainer.set_flat(np.zeros(1106, np.float32))


def _model_beside(tmp_path: Path, weights: dict[str, npt.NDArray[Any]]) -> Path:
    model = tmp_path / "task_mlp.tflite"
    model.write_bytes(b"not read without a runtime")
    np.savez(init_weights_path(model), **weights)  # type: ignore[arg-type]
    return model


def test_initial_weights_of_another_layout_without_a_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide_runtimes(monkeypatch)
    g = _npz_weights(RHYTHM_MODEL_PATH)
    model = _model_beside(tmp_path, dict(zip(WEIGHT_NAMES, g, strict=True)))
    loaded = load_initial_weights(model)
    assert _max_diff(loaded, g) == 0.0
    assert make_trainer(model).layout == RHYTHM_LAYOUT


def test_initial_weights_missing_one_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide_runtimes(monkeypatch)
    g = dict(zip(WEIGHT_NAMES, _npz_weights(DEFAULT_MODEL_PATH), strict=True))
    del g["w2"]
    model = _model_beside(tmp_path, g)
    with pytest.raises(ValueError, match=r"lacks the weights \['w2'\]"):
        load_initial_weights(model)


def test_initial_weights_holding_objects_are_not_unpickled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide_runtimes(monkeypatch)
    g: dict[str, npt.NDArray[Any]] = dict(
        zip(WEIGHT_NAMES, _npz_weights(DEFAULT_MODEL_PATH), strict=True)
    )
    g["w1"] = g["w1"].astype(object)
    model = _model_beside(tmp_path, g)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_initial_weights(model)
