"""The local model: the committed .tflite asset is builtins-only and trains in the light runtime,
and the NumPy trainer reproduces it step for step; FedProx, clipping and noise do what they say."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.trainer import (
    F32,
    I32,
    REQUIRED_SIGNATURES,
    LiteRtTrainer,
    NumpyTrainer,
    RuntimeUnavailableError,
    Trainer,
    TrainingDivergedError,
    TrainOptions,
    _batch_indices,
    evaluate,
    fit,
    flatten,
    init_weights_path,
    load_initial_weights,
    make_trainer,
    unflatten,
)
from wire.model import DEFAULT_MODEL_PATH, PARAMETER_COUNT, WEIGHT_NAMES, WEIGHT_SHAPES

MODEL = DEFAULT_MODEL_PATH
METADATA = MODEL.with_suffix(".json")
LITERT_MISSING = (
    "ai_edge_litert is not importable: install the test dependency with "
    "`pip install ai-edge-litert` (2.3.0 works with numpy 2)"
)


def _litert_module(name: str) -> ModuleType:
    # a missing runtime must fail these tests, not skip them: it is a test dependency
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{LITERT_MISSING} ({exc})")


@pytest.fixture(scope="module")
def schema() -> ModuleType:
    return _litert_module("ai_edge_litert.schema_py_generated")


@pytest.fixture
def lite() -> LiteRtTrainer:
    _litert_module("ai_edge_litert.interpreter")
    trainer = LiteRtTrainer(MODEL)
    assert trainer.backend == "ai-edge-litert"
    return trainer


@pytest.fixture
def numpy_trainer() -> NumpyTrainer:
    return NumpyTrainer(_init_from_npz())


@pytest.fixture(params=["numpy", "litert"])
def any_trainer(request: pytest.FixtureRequest) -> Trainer:
    if request.param == "numpy":
        return NumpyTrainer(_init_from_npz())
    trainer: Trainer = request.getfixturevalue("lite")
    return trainer


def _init_from_npz() -> list[F32]:
    with np.load(init_weights_path(MODEL), allow_pickle=False) as npz:
        return [npz[name] for name in WEIGHT_NAMES]


def _blobs(n: int, seed: int = 0) -> tuple[F32, I32]:
    """Two separable Gaussian blobs in 16 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    centre = np.where(y[:, None] == 1, 1.0, -1.0) * np.linspace(1.0, 0.2, 16)
    x = (centre + rng.normal(0.0, 0.7, (n, 16))).astype(np.float32)
    return x, y


def _xor(n: int, seed: int = 0) -> tuple[F32, I32]:
    """A nonlinear rule: the sign of the product of the first two features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int32)


def _max_diff(a: list[F32] | tuple[F32, ...], b: list[F32] | tuple[F32, ...]) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# The asset gate (TRAINING.md: Keras objects or textbook gradients make a file that converts but
# needs Flex ops, or lacks its variable initializer and trains on garbage)


def _op_names(schema: ModuleType, model: Any) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    out = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            out.append("CUSTOM:" + (code.CustomCode() or b"").decode())
        else:
            out.append(names[builtin])
    return out


def test_asset_has_only_builtin_ops_and_a_variable_initializer(schema: ModuleType) -> None:
    model = schema.Model.GetRootAs(MODEL.read_bytes(), 0)
    ops = _op_names(schema, model)
    assert not [op for op in ops if "Flex" in op or op.startswith("CUSTOM")], ops
    assert "CALL_ONCE" in ops
    signatures = {
        model.SignatureDefs(i).SignatureKey().decode(): model.SignatureDefs(i).SubgraphIndex()
        for i in range(model.SignatureDefsLength())
    }
    assert set(REQUIRED_SIGNATURES) <= set(signatures)
    # every signature subgraph starts with CALL_ONCE into an initializer subgraph of its own
    # that assigns the variables
    call_once = ops.index("CALL_ONCE")
    for name, index in signatures.items():
        first = model.Subgraphs(index).Operators(0)
        assert first.OpcodeIndex() == call_once, name
        table = first.BuiltinOptions()
        options = schema.CallOnceOptions()
        options.Init(table.Bytes, table.Pos)
        init = model.Subgraphs(options.InitSubgraphIndex())
        assert options.InitSubgraphIndex() not in signatures.values()
        assert {"VAR_HANDLE", "ASSIGN_VARIABLE"} <= _subgraph_ops(ops, init)
    # a setter signature without outputs converts to a bare CALL_ONCE: its assignments pruned
    for name in ("train", "set_weights", "set_flat"):
        assert "ASSIGN_VARIABLE" in _subgraph_ops(ops, model.Subgraphs(signatures[name])), name


def _subgraph_ops(ops: list[str], subgraph: Any) -> set[str]:
    return {ops[subgraph.Operators(i).OpcodeIndex()] for i in range(subgraph.OperatorsLength())}


def test_runtime_op_details_start_with_call_once(lite: LiteRtTrainer) -> None:
    details = lite._interpreter._get_ops_details()
    assert details[0]["op_name"] == "CALL_ONCE"
    assert not [d["op_name"] for d in details if "Flex" in d["op_name"]]
    assert set(REQUIRED_SIGNATURES) <= set(lite._interpreter.get_signature_list())


def test_asset_metadata_matches_the_files() -> None:
    meta = json.loads(METADATA.read_text())
    data = MODEL.read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["size_bytes"] == len(data) < 100_000
    init_file = MODEL.with_name(meta["init"]["file"])
    assert init_file == init_weights_path(MODEL)
    assert meta["init"]["sha256"] == hashlib.sha256(init_file.read_bytes()).hexdigest()
    assert [(layer["name"], tuple(layer["shape"])) for layer in meta["layers"]] == list(
        WEIGHT_SHAPES
    )
    assert meta["parameter_count"] == PARAMETER_COUNT == 1106
    assert meta["feature_count"] == 16
    assert meta["tensorflow_version"] == "2.21.0"
    assert set(REQUIRED_SIGNATURES) <= set(meta["signatures"])
    assert meta["signatures"]["train"]["inputs"]["lr"] == {"shape": [], "dtype": "float32"}
    assert not [op for op in meta["ops"] if "Flex" in op]


def test_runtime_starts_from_the_committed_initial_weights(lite: LiteRtTrainer) -> None:
    assert _max_diff(lite.get_weights(), _init_from_npz()) == 0.0
    assert [w.shape for w in lite.get_weights()] == [shape for _, shape in WEIGHT_SHAPES]


# ---------------------------------------------------------------------------------------------
# Training in the light runtime, and the NumPy twin


def test_litert_training_loss_falls(lite: LiteRtTrainer) -> None:
    x, y = _blobs(32)
    losses = [lite.train_step(x, y, 0.05) for _ in range(100)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0]
    probs = lite._runners["infer"](x=x)["probs"]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_numpy_and_litert_agree_on_one_step(lite: LiteRtTrainer, numpy_trainer: Trainer) -> None:
    x, y = _xor(32, seed=3)
    loss_lite = lite.train_step(x, y, 0.1)
    loss_np = numpy_trainer.train_step(x, y, 0.1)
    assert loss_lite == pytest.approx(loss_np, abs=1e-5)
    assert _max_diff(lite.get_weights(), numpy_trainer.get_weights()) < 1e-5
    assert _max_diff([lite.predict_logits(x)], [numpy_trainer.predict_logits(x)]) < 1e-5


def test_numpy_and_litert_agree_over_twenty_steps(
    lite: LiteRtTrainer, numpy_trainer: Trainer
) -> None:
    rng = np.random.default_rng(7)
    x, y = _xor(640, seed=5)
    for step in range(20):
        idx = rng.choice(640, 32, replace=False)
        lr = 0.02 + 0.01 * step
        assert lite.train_step(x[idx], y[idx], lr) == pytest.approx(
            numpy_trainer.train_step(x[idx], y[idx], lr), abs=1e-5
        )
    assert _max_diff(lite.get_weights(), numpy_trainer.get_weights()) < 1e-5


def test_fit_gives_the_same_round_on_both_backends(
    lite: LiteRtTrainer, numpy_trainer: Trainer
) -> None:
    x, y = _xor(200, seed=11)
    options = TrainOptions(epochs=3, batch_size=32, prox_mu=0.5, clip_norm=5.0, seed=4)
    a = fit(lite, x, y, options)
    b = fit(numpy_trainer, x, y, options)
    assert (a.backend, b.backend) == ("ai-edge-litert", "numpy")
    assert a.steps == b.steps == 3 * 7
    assert a.samples == b.samples == 200
    assert a.loss_before == pytest.approx(b.loss_before, abs=1e-5)
    assert a.loss_after == pytest.approx(b.loss_after, abs=1e-4)
    assert _max_diff(a.weights, b.weights) < 1e-4


def test_fit_learns_a_nonlinear_rule(any_trainer: Trainer) -> None:
    x, y = _xor(2000, seed=1)
    result = fit(any_trainer, x, y, TrainOptions(epochs=20, learning_rate=0.1))
    loss, accuracy = evaluate(any_trainer, x, y)
    assert result.loss_after == pytest.approx(loss)
    assert result.loss_after < 0.6 * result.loss_before
    assert accuracy > 0.85
    assert result.steps == 20 * math.ceil(2000 / 32)
    assert not result.clipped
    assert result.noise_std == 0.0


# ---------------------------------------------------------------------------------------------
# Weights: round trips and the shared layout


def test_get_set_round_trip(any_trainer: Trainer) -> None:
    rng = np.random.default_rng(2)
    weights = [rng.normal(size=shape).astype(np.float32) for _, shape in WEIGHT_SHAPES]
    any_trainer.set_weights(weights)
    assert _max_diff(any_trainer.get_weights(), weights) == 0.0
    flat = any_trainer.get_flat()
    assert flat.dtype == np.float32
    assert np.array_equal(flat, flatten(weights))
    any_trainer.set_flat(flat * 2)
    assert _max_diff(any_trainer.get_weights(), [w * 2 for w in weights]) == 0.0
    # get_weights hands out copies: mutating them does not reach the model
    any_trainer.get_weights()[0][:] = 99.0
    assert _max_diff(any_trainer.get_weights(), [w * 2 for w in weights]) == 0.0


def test_flatten_unflatten_round_trip_and_order() -> None:
    weights = [np.full(shape, i, np.float32) for i, (_, shape) in enumerate(WEIGHT_SHAPES)]
    flat = flatten(weights)
    assert flat.shape == (PARAMETER_COUNT,)
    assert flat.dtype == np.float32
    assert flat[0] == 0
    assert flat[-1] == 5
    assert _max_diff(unflatten(flat), weights) == 0.0
    assert _max_diff(unflatten(flat.astype(np.float64)), weights) == 0.0


@pytest.mark.parametrize("size", [0, 1105, 1107])
def test_unflatten_rejects_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError, match="1106"):
        unflatten(np.zeros(size, np.float32))


def test_unflatten_rejects_matrices_and_integers() -> None:
    with pytest.raises(ValueError, match="1106"):
        unflatten(np.zeros((2, 553), np.float32))
    with pytest.raises(ValueError, match="floating"):
        unflatten(np.zeros(PARAMETER_COUNT, np.int32))


def test_flatten_and_set_weights_reject_bad_layouts(any_trainer: Trainer) -> None:
    good = _init_from_npz()
    with pytest.raises(ValueError, match="expected 6"):
        flatten(good[:5])
    swapped = [good[0].T, *good[1:]]
    with pytest.raises(ValueError, match=r"'w1' must have shape \(16, 32\)"):
        any_trainer.set_weights(swapped)
    bad = [w.copy() for w in good]
    bad[3][0] = np.nan
    with pytest.raises(ValueError, match="'b2' contains non-finite"):
        any_trainer.set_weights(bad)
    with pytest.raises(ValueError, match="1106"):
        any_trainer.set_flat(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        any_trainer.set_flat(np.full(PARAMETER_COUNT, np.inf, np.float32))
    assert _max_diff(any_trainer.get_weights(), good) == 0.0


# ---------------------------------------------------------------------------------------------
# FedProx, clipping, noise


def test_fedprox_keeps_weights_near_the_global_model(numpy_trainer: Trainer) -> None:
    x, y = _xor(400, seed=8)
    global_weights = _init_from_npz()
    free = fit(numpy_trainer, x, y, TrainOptions(epochs=5), global_weights)
    prox = fit(numpy_trainer, x, y, TrainOptions(epochs=5, prox_mu=10.0), global_weights)
    anchor = flatten(global_weights)
    drift_free = np.linalg.norm(flatten(free.weights) - anchor)
    drift_prox = np.linalg.norm(flatten(prox.weights) - anchor)
    assert drift_prox < 0.5 * drift_free
    assert prox.update_norm == pytest.approx(drift_prox, rel=1e-4)


def test_fedprox_is_stable_for_huge_mu(lite: LiteRtTrainer) -> None:
    x, y = _xor(100, seed=9)
    result = fit(lite, x, y, TrainOptions(learning_rate=0.5, prox_mu=1e6))
    # a plain gradient step with lr·mu = 5e5 would explode; the proximal step pins w to w_g
    assert result.update_norm < 1e-3


def test_clipping_bounds_the_update_norm(any_trainer: Trainer) -> None:
    x, y = _xor(300, seed=10)
    global_weights = _init_from_npz()
    result = fit(any_trainer, x, y, TrainOptions(epochs=3, clip_norm=0.1), global_weights)
    assert result.update_norm > 0.1
    assert result.clipped
    delta = flatten(result.weights).astype(np.float64) - flatten(global_weights)
    assert np.linalg.norm(delta) == pytest.approx(0.1, rel=1e-4)
    assert _max_diff(any_trainer.get_weights(), result.weights) == 0.0
    loose = fit(any_trainer, x, y, TrainOptions(epochs=3, clip_norm=1e6), global_weights)
    assert not loose.clipped


def test_noise_has_the_stated_std_and_follows_the_seed(numpy_trainer: Trainer) -> None:
    x, y = _xor(300, seed=12)
    g = _init_from_npz()
    base = TrainOptions(epochs=2, clip_norm=1e3, seed=21)
    noisy = TrainOptions(epochs=2, clip_norm=1e3, noise_multiplier=1e-4, seed=21)
    assert noisy.noise_std == pytest.approx(0.1)
    clean_run = fit(numpy_trainer, x, y, base, g)
    noisy_run = fit(numpy_trainer, x, y, noisy, g)
    assert noisy_run.noise_std == pytest.approx(0.1)
    noise = flatten(noisy_run.weights).astype(np.float64) - flatten(clean_run.weights)
    # the std of 1106 normal draws is within 10% of the truth far beyond 4 sigma (≈2.1% each)
    assert np.std(noise) == pytest.approx(0.1, rel=0.1)
    assert abs(np.mean(noise)) < 5 * 0.1 / math.sqrt(PARAMETER_COUNT)
    again = fit(numpy_trainer, x, y, noisy, g)
    assert _max_diff(again.weights, noisy_run.weights) == 0.0
    other_seed = fit(numpy_trainer, x, y, dataclasses.replace(noisy, seed=22), g)
    assert _max_diff(other_seed.weights, noisy_run.weights) > 0.01


# ---------------------------------------------------------------------------------------------
# Options and inputs are validated


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("epochs", True),
        ("batch_size", 0),
        ("learning_rate", 0.0),
        ("learning_rate", math.nan),
        ("learning_rate", "0.1"),
        ("prox_mu", -0.1),
        ("prox_mu", math.inf),
        ("clip_norm", 0.0),
        ("clip_norm", -1.0),
        ("noise_multiplier", -1.0),
        ("seed", -1),
    ],
)
def test_train_options_name_the_bad_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        TrainOptions(**{field: value})


def test_noise_without_a_clip_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplier"):
        TrainOptions(noise_multiplier=1.0)
    assert TrainOptions(noise_multiplier=2.0, clip_norm=0.5).noise_std == 1.0


def _bad_batches() -> list[Any]:
    x, y = _xor(8)
    cases: list[tuple[str, tuple[Any, Any], str]] = [
        ("empty", (np.zeros((0, 16), np.float32), np.zeros(0, np.int32)), "empty"),
        ("15-features", (x[:, :15], y), r"\(n, 16\)"),
        ("one-vector", (x[0], y[:1]), r"\(n, 16\)"),
        ("short-labels", (x, y[:7]), r"labels must have shape \(8,\)"),
        ("label-2", (x, y + 1), "labels must lie in"),
        ("label-minus-1", (x, y - 1), "labels must lie in"),
        ("float-labels", (x, y.astype(np.float32)), "integers"),
        ("nan-feature", (np.where(np.arange(16) == 4, np.nan, x), y), "non-finite"),
        ("string-features", (x.astype(str), y), "numeric"),
    ]
    return [pytest.param(batch, message, id=case) for case, batch, message in cases]


@pytest.mark.parametrize(("batch", "message"), _bad_batches())
def test_bad_batches_raise_value_error(
    any_trainer: Trainer, batch: tuple[Any, Any], message: str
) -> None:
    x, y = batch
    before = any_trainer.get_weights()
    with pytest.raises(ValueError, match=message):
        any_trainer.train_step(x, y, 0.1)
    with pytest.raises(ValueError, match=message):
        fit(any_trainer, x, y)
    assert _max_diff(any_trainer.get_weights(), before) == 0.0


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf])
def test_bad_learning_rates_raise(any_trainer: Trainer, lr: float) -> None:
    x, y = _xor(32)
    with pytest.raises(ValueError, match="learning rate"):
        any_trainer.train_step(x, y, lr)


def test_other_dtypes_are_converted_exactly(any_trainer: Trainer) -> None:
    x, y = _xor(32)
    ref = NumpyTrainer(_init_from_npz())
    loss64 = any_trainer.train_step(x.astype(np.float64), y.astype(np.int64), 0.1)
    assert loss64 == pytest.approx(ref.train_step(x, y, 0.1), abs=1e-5)
    assert any_trainer.predict_logits(x.astype(np.float64)).dtype == np.float32


def test_divergence_is_an_error_not_an_update(numpy_trainer: NumpyTrainer) -> None:
    class Diverging(NumpyTrainer):
        def _train_batch(self, x: F32, y: I32, lr: np.float32, mask: F32) -> float:
            return math.nan

    x, y = _xor(64)
    with pytest.raises(TrainingDivergedError, match="step 0"):
        fit(Diverging(_init_from_npz()), x, y)


# ---------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize(("n", "batch"), [(1, 32), (5, 32), (32, 32), (70, 32), (2000, 32)])
def test_batches_have_a_fixed_size_and_cover_every_window(n: int, batch: int) -> None:
    batches = list(_batch_indices(n, batch, np.random.default_rng(0)))
    assert len(batches) == math.ceil(n / batch)
    assert all(len(b) == batch for b in batches)
    assert set(np.concatenate(batches).tolist()) == set(range(n))
    if n >= batch:
        assert all(len(set(b.tolist())) == batch for b in batches)


def test_fit_on_fewer_windows_than_a_batch(any_trainer: Trainer) -> None:
    x, y = _blobs(5)
    result = fit(any_trainer, x, y, TrainOptions(epochs=3))
    assert (result.steps, result.samples) == (3, 5)
    assert math.isfinite(result.loss_after)


# ---------------------------------------------------------------------------------------------
# Choosing a backend


def _hide_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    # a None entry in sys.modules makes the import fail as on a machine without the wheel
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)


def test_make_trainer_numpy_works_without_a_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_runtimes(monkeypatch)
    trainer = make_trainer(MODEL, "numpy")
    assert trainer.backend == "numpy"
    assert _max_diff(trainer.get_weights(), _init_from_npz()) == 0.0
    assert make_trainer(MODEL).backend == "numpy"
    with pytest.raises(RuntimeUnavailableError, match="pip install ai-edge-litert"):
        make_trainer(MODEL, "litert")
    x, y = _blobs(64)
    result = fit(trainer, x, y, TrainOptions(epochs=5))
    assert result.loss_after < result.loss_before


def test_make_trainer_prefers_the_runtime(lite: LiteRtTrainer) -> None:
    assert make_trainer(MODEL).backend == "ai-edge-litert"
    assert make_trainer(MODEL, "litert").backend == "ai-edge-litert"
    numpy_twin = make_trainer(MODEL, "numpy")
    assert numpy_twin.backend == "numpy"
    assert _max_diff(numpy_twin.get_weights(), load_initial_weights(MODEL)) == 0.0
    with pytest.raises(ValueError, match="prefer"):
        make_trainer(MODEL, "gpu")  # type: ignore[arg-type]


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tflite"):
        LiteRtTrainer(tmp_path / "nope.tflite")


def test_float_weights_only(numpy_trainer: Trainer) -> None:
    ints: list[npt.NDArray[Any]] = [np.zeros(s, np.int32) for _, s in WEIGHT_SHAPES]
    with pytest.raises(ValueError, match="floating point"):
        numpy_trainer.set_weights(ints)
