"""The gateway's local model: a 16 → 32 → 16 → 2 MLP trained on-device through the TFLite light
runtime (ai-edge-litert or tflite-runtime), or by an identical NumPy trainer, in one weight layout.

`fit` runs one federated round on a trainer: local SGD epochs with an optional FedProx proximal
step, then clipping of the *update* (local - global) to `clip_norm` and Gaussian noise of standard
deviation `noise_multiplier * clip_norm` added to it (the Gaussian mechanism, once per round).
Trainers hold an interpreter or arrays that are not thread-safe: one trainer per worker thread.
This module never imports TensorFlow; the `.tflite` asset is built offline by tools/build_model.py.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError
from wire.model import (
    VITALS_LAYOUT,
    WEIGHT_NAMES,
    MlpLayout,
)

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]

REQUIRED_SIGNATURES: Final = ("train", "infer", "get_weights", "set_weights")

Prefer = Literal["auto", "litert", "numpy"]

_PREDICT_CHUNK: Final = 256
_MASKED_LOGIT: Final = np.float32(1e9)
_RUNTIMES: Final = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


class TrainerError(GatewayError):
    """Base class of the trainer's own failures (bad input is a plain ValueError)."""


class RuntimeUnavailableError(TrainerError, ImportError):
    """No TFLite light runtime is importable on this machine."""


class TrainingDivergedError(TrainerError):
    """Training produced a non-finite loss or weights: nothing of it may leave the gateway."""


# ---------------------------------------------------------------------------------------------
# The weight layout and input checks shared by every backend


def _check_weights(
    weights: Sequence[npt.ArrayLike], layout: MlpLayout = VITALS_LAYOUT
) -> list[F32]:
    if len(weights) != len(WEIGHT_NAMES):
        raise ValueError(
            f"expected {len(WEIGHT_NAMES)} weight arrays {WEIGHT_NAMES}, got {len(weights)}"
        )
    out: list[F32] = []
    for (name, shape), value in zip(layout.weight_shapes, weights, strict=True):
        arr = np.asarray(value)
        if arr.shape != shape:
            raise ValueError(f"weight {name!r} must have shape {shape}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"weight {name!r} must be floating point, got dtype {arr.dtype}")
        arr32 = np.array(arr, dtype=np.float32)  # always a private copy
        if not np.isfinite(arr32).all():
            raise ValueError(f"weight {name!r} contains non-finite values")
        out.append(arr32)
    return out


def _check_flat(vec: npt.ArrayLike, layout: MlpLayout = VITALS_LAYOUT) -> F32:
    arr = np.asarray(vec)
    count = layout.parameter_count
    if arr.ndim != 1 or arr.size != count:
        raise ValueError(f"flat weight vector must have shape ({count},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"flat weight vector must be floating point, got dtype {arr.dtype}")
    flat = np.array(arr, dtype=np.float32)  # always a private copy
    if not np.isfinite(flat).all():
        raise ValueError("flat weight vector contains non-finite values")
    return flat


def flatten(weights: Sequence[npt.ArrayLike], layout: MlpLayout = VITALS_LAYOUT) -> F32:
    """Concatenate weights in the layout's order into one float32 vector."""
    return np.concatenate([w.reshape(-1) for w in _check_weights(weights, layout)])


def unflatten(vec: npt.ArrayLike, layout: MlpLayout = VITALS_LAYOUT) -> list[F32]:
    """Split a flat vector back into the layout's six weight arrays."""
    flat = _check_flat(vec, layout)
    out: list[F32] = []
    start = 0
    for _, shape in layout.weight_shapes:
        size = math.prod(shape)
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def _check_features(x: npt.ArrayLike, layout: MlpLayout = VITALS_LAYOUT) -> F32:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != layout.features:
        raise ValueError(f"features must have shape (n, {layout.features}), got {arr.shape}")
    if arr.shape[0] == 0:
        # an empty batch gives nan in one runtime and an error in the other (TRAINING.md)
        raise ValueError("features are empty: at least one window is needed")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"features must be numeric, got dtype {arr.dtype}")
    # the runtimes reject float64 rather than casting it, so cast once here
    x32 = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise ValueError("features contain non-finite values")
    return x32


def _check_labelled(
    x: npt.ArrayLike, y: npt.ArrayLike, layout: MlpLayout = VITALS_LAYOUT
) -> tuple[F32, I32]:
    x32 = _check_features(x, layout)
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != x32.shape[0]:
        raise ValueError(f"labels must have shape ({x32.shape[0]},), got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= layout.classes):
        # an out-of-range label is a zero one-hot row in the model: silently wrong, so refuse it
        raise ValueError(f"labels must lie in [0, {layout.classes}), got {arr.min()}..{arr.max()}")
    return x32, np.ascontiguousarray(arr, dtype=np.int32)


def _check_learning_rate(lr: float) -> np.float32:
    value = float(lr)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")
    return np.float32(value)


def _log_softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: npt.NDArray[np.floating[Any]] = shifted - np.log(
        np.exp(shifted).sum(axis=1, keepdims=True)
    )
    return out


# ---------------------------------------------------------------------------------------------
# Trainers


class Trainer(ABC):
    """One model instance that trains in place. Public methods validate and convert inputs
    (float32 features of shape (n, layout.features), int32 labels in [0, layout.classes));
    backends do the arithmetic."""

    backend: str
    layout: MlpLayout

    def get_weights(self) -> list[F32]:
        """Copies of the current weights in the layout's order."""
        return self._read_weights()

    def set_weights(self, weights: Sequence[npt.ArrayLike]) -> None:
        self._write_weights(_check_weights(weights, self.layout))

    def get_flat(self) -> F32:
        """The weights as one float32 vector (the `flatten` layout)."""
        return np.concatenate([w.reshape(-1) for w in self._read_weights()])

    def set_flat(self, vec: npt.ArrayLike) -> None:
        self._write_weights(unflatten(vec, self.layout))

    def train_step(
        self,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        lr: float,
        present: Sequence[bool] | None = None,
    ) -> float:
        """One SGD step on a batch; returns the batch's mean loss *before* the update.

        `present` (one flag per class) restricts the softmax to the classes flagged: the others'
        logits are left out of it, so a batch never pushes down a class it cannot contain."""
        x32, y32 = _check_labelled(x, y, self.layout)
        mask = np.ones(self.layout.classes, np.float32)
        if present is not None:
            if len(present) != self.layout.classes:
                raise ValueError(f"present needs {self.layout.classes} flags, got {len(present)}")
            mask = np.array([1.0 if p else 0.0 for p in present], np.float32)
            if not mask[y32].all():
                raise ValueError("a label of the batch is not among the present classes")
        return self._train_batch(x32, y32, _check_learning_rate(lr), mask)

    def predict_logits(self, x: npt.ArrayLike) -> F32:
        return self._logits(_check_features(x, self.layout))

    @abstractmethod
    def _read_weights(self) -> list[F32]: ...

    @abstractmethod
    def _write_weights(self, weights: list[F32]) -> None: ...

    @abstractmethod
    def _train_batch(self, x: F32, y: I32, lr: np.float32, mask: F32) -> float: ...

    @abstractmethod
    def _logits(self, x: F32) -> F32: ...


class NumpyTrainer(Trainer):
    """The model and its SGD step in NumPy float32: the same math as the `.tflite` train
    signature (hand-written backward pass, ReLU derivative 0 at 0), for machines without a
    runtime wheel."""

    def __init__(
        self, initial_weights: Sequence[npt.ArrayLike], layout: MlpLayout | None = None
    ) -> None:
        self.backend = "numpy"
        self.layout = layout if layout is not None else MlpLayout.of(initial_weights)
        self._w = _check_weights(initial_weights, self.layout)

    def _read_weights(self) -> list[F32]:
        return [w.copy() for w in self._w]

    def _write_weights(self, weights: list[F32]) -> None:
        self._w = weights

    def _logits(self, x: F32) -> F32:
        w1, b1, w2, b2, w3, b3 = self._w
        parts: list[F32] = []
        # in row chunks: OpenBLAS spreads a larger product over threads, which on a small,
        # busy gateway measured up to 10x slower than the single-threaded chunks
        for start in range(0, x.shape[0], _PREDICT_CHUNK):
            h1 = np.maximum(x[start : start + _PREDICT_CHUNK] @ w1 + b1, np.float32(0))
            h2 = np.maximum(h1 @ w2 + b2, np.float32(0))
            parts.append(h2 @ w3 + b3)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _train_batch(self, x: F32, y: I32, lr: np.float32, mask: F32) -> float:
        w1, b1, w2, b2, w3, b3 = self._w
        n = np.float32(x.shape[0])
        rows = np.arange(x.shape[0])
        z1 = x @ w1 + b1
        h1 = np.maximum(z1, np.float32(0))
        z2 = h1 @ w2 + b2
        h2 = np.maximum(z2, np.float32(0))
        # absent classes get a logit of -1e9: out of the softmax, and so of the gradient
        logp = _log_softmax(h2 @ w3 + b3 + (mask - np.float32(1)) * _MASKED_LOGIT)
        loss = -logp[rows, y].sum() / n
        dz3 = np.exp(logp)
        dz3[rows, y] -= np.float32(1)
        dz3 /= n
        dz2 = (dz3 @ w3.T) * (z2 > 0)
        dz1 = (dz2 @ w2.T) * (z1 > 0)
        grads = (x.T @ dz1, dz1.sum(axis=0), h1.T @ dz2, dz2.sum(axis=0), h2.T @ dz3, dz3.sum(0))
        for w, g in zip(self._w, grads, strict=True):
            np.subtract(w, lr * g, out=w)  # in place: `w` aliases the stored array
        return float(loss)


def _load_runtime() -> tuple[Any, str]:
    """The `Interpreter` class of the first importable light runtime, and its pip name."""
    failures: list[str] = []
    for module_name, pip_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            failures.append(f"{module_name}: {exc}")
            continue
        return module.Interpreter, pip_name
    raise RuntimeUnavailableError(
        "no TFLite runtime is importable; install it with `pip install ai-edge-litert` "
        f"(or tflite-runtime on Python 3.11 with numpy<2) [{'; '.join(failures)}]"
    )


class LiteRtTrainer(Trainer):
    """The committed `.tflite` asset run by ai-edge-litert (or tflite-runtime as a fallback)
    through its signature runners."""

    def __init__(self, model_path: str | Path, *, num_threads: int = 1) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        interpreter_cls, self.backend = _load_runtime()
        try:
            # one thread: the model is tiny, and a thread pool costs more than it saves on a Pi
            self._interpreter: Any = interpreter_cls(model_path=str(path), num_threads=num_threads)
        except ImportError as exc:
            # tflite-runtime 2.14 under numpy 2 imports fine and fails here (_ARRAY_API)
            raise RuntimeUnavailableError(
                f"{self.backend} cannot start ({exc}); install `pip install ai-edge-litert`"
            ) from exc
        signatures = self._interpreter.get_signature_list()
        missing = [name for name in REQUIRED_SIGNATURES if name not in signatures]
        if missing:
            raise ValueError(f"model {path} lacks the signatures {missing}")
        self._runners: dict[str, Any] = {
            name: self._interpreter.get_signature_runner(name)
            for name in (*REQUIRED_SIGNATURES, "get_flat", "set_flat")
            if name in signatures
        }
        # the rhythm model's train takes a class mask (restricted softmax); the vitals one not
        self._masked_train = "mask" in signatures["train"]["inputs"]
        got = self._runners["get_weights"]()
        missing = [name for name in WEIGHT_NAMES if name not in got]
        if missing:
            raise ValueError(f"model {path} lacks the weights {missing}")
        self.layout = MlpLayout.of([got[name] for name in WEIGHT_NAMES])
        for name, shape in self.layout.weight_shapes:
            actual = tuple(np.shape(got[name]))
            if actual != shape:
                raise ValueError(
                    f"model {path} has weight {name!r} of shape {actual}, expected {shape}"
                )
        # a setter signature converted without outputs is a silent no-op (its assignments are
        # pruned), so prove once that set_weights stores what it is given
        initial = self._read_weights()
        probe = [w + np.float32(1) for w in initial]
        self._write_weights(probe)
        stored = self._read_weights()
        self._write_weights(initial)
        if not all(np.array_equal(a, b) for a, b in zip(stored, probe, strict=True)):
            raise ValueError(f"model {path}: set_weights does not store the weights it is given")

    def _read_weights(self) -> list[F32]:
        out = self._runners["get_weights"]()
        return [np.array(out[name], dtype=np.float32) for name in WEIGHT_NAMES]

    def _write_weights(self, weights: list[F32]) -> None:
        self._runners["set_weights"](**dict(zip(WEIGHT_NAMES, weights, strict=True)))

    def get_flat(self) -> F32:
        runner = self._runners.get("get_flat")
        if runner is None:
            return super().get_flat()
        return np.array(runner()["flat"], dtype=np.float32)

    def set_flat(self, vec: npt.ArrayLike) -> None:
        runner = self._runners.get("set_flat")
        if runner is None:
            super().set_flat(vec)
            return
        runner(flat=_check_flat(vec, self.layout))

    def _logits(self, x: F32) -> F32:
        return np.array(self._runners["infer"](x=x)["logits"], dtype=np.float32)

    def _train_batch(self, x: F32, y: I32, lr: np.float32, mask: F32) -> float:
        lr32 = np.asarray(lr, dtype=np.float32)
        if self._masked_train:
            out = self._runners["train"](x=x, y=y, lr=lr32, mask=mask)
        elif mask.all():
            out = self._runners["train"](x=x, y=y, lr=lr32)
        else:
            raise ValueError("this model's train signature cannot restrict the softmax")
        return float(out["loss"])


def init_weights_path(model_path: str | Path) -> Path:
    """Where tools/build_model.py puts the initial weights next to a model file."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}_init.npz")


def load_initial_weights(model_path: str | Path) -> list[F32]:
    """The model's initial weights: read from the `.tflite` through a runtime when one is
    importable, else from the `<stem>_init.npz` written beside it by the build script."""
    try:
        return LiteRtTrainer(model_path).get_weights()
    except RuntimeUnavailableError:
        pass
    npz_path = init_weights_path(model_path)
    with np.load(npz_path, allow_pickle=False) as npz:
        missing = [name for name in WEIGHT_NAMES if name not in npz.files]
        if missing:
            raise ValueError(f"{npz_path} lacks the weights {missing}")
        weights = [npz[name] for name in WEIGHT_NAMES]
        return _check_weights(weights, MlpLayout.of(weights))


def make_trainer(model_path: str | Path, prefer: Prefer = "auto") -> Trainer:
    """A trainer for the model: "auto" uses a light runtime when importable, else NumPy;
    "litert" requires a runtime (RuntimeUnavailableError otherwise); "numpy" forces NumPy."""
    if prefer == "numpy":
        return NumpyTrainer(load_initial_weights(model_path))
    if prefer == "litert":
        return LiteRtTrainer(model_path)
    if prefer == "auto":
        try:
            return LiteRtTrainer(model_path)
        except RuntimeUnavailableError:
            return NumpyTrainer(load_initial_weights(model_path))
    raise ValueError(f"prefer must be 'auto', 'litert' or 'numpy', got {prefer!r}")


# ---------------------------------------------------------------------------------------------
# One federated round on top of any trainer


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_real(name: str, value: object, *, positive: bool) -> None:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if math.isfinite(number) and (number > 0 or (number == 0 and not positive)):
        return
    bound = "> 0" if positive else ">= 0"
    raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """Local training for one round.

    `prox_mu` > 0 adds FedProx's proximal term (mu/2)·‖w - w_global‖². `clip_norm` bounds the
    L2 norm of the round's update (local - global); `noise_multiplier` > 0 then adds Gaussian
    noise of std `noise_multiplier * clip_norm` to each coordinate of the clipped update (the
    Gaussian mechanism applied once per round; the std is reported in `FitResult.noise_std`).
    `seed` drives both the batch order and the noise, from independent streams. `balanced`
    draws each epoch's batches with probabilities inverse to the class frequencies (with
    replacement, as many draws as windows): every class weighs the same in the gradient, for
    tasks where one class dominates (normal sinus rhythm). `restricted_softmax` leaves the
    classes absent from the local windows out of the softmax (FedRS with alpha = 0: Li and Zhan,
    "FedRS: federated learning with restricted softmax for label distribution non-IID data",
    KDD 2021): a ward without AF patients then does not teach the shared model that AF never
    happens, which plain FedAvg on label-skewed wards does.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    prox_mu: float = 0.0
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    seed: int = 0
    balanced: bool = False
    restricted_softmax: bool = False

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_real("learning_rate", self.learning_rate, positive=True)
        _check_real("prox_mu", self.prox_mu, positive=False)
        if self.clip_norm is not None:
            _check_real("clip_norm", self.clip_norm, positive=True)
        _check_real("noise_multiplier", self.noise_multiplier, positive=False)
        if self.noise_multiplier > 0 and self.clip_norm is None:
            # without a clip bound the noise has no scale that means anything
            raise ValueError(
                "noise_multiplier > 0 needs clip_norm: noise std = multiplier * clip_norm"
            )
        _check_int("seed", self.seed, 0)

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm if self.clip_norm is not None else 0.0


@dataclass(frozen=True, slots=True, eq=False)
class FitResult:
    """What one local round produced. Losses are mean cross-entropy over all the windows given:
    `loss_before` at the global weights, `loss_after` at the final (clipped, noised) weights.
    `update_norm` is the L2 norm of local - global before clipping."""

    backend: str
    loss_before: float
    loss_after: float
    steps: int
    samples: int
    update_norm: float
    clipped: bool
    noise_std: float
    weights: tuple[F32, ...]


def _batch_indices(
    n: int, batch_size: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.intp]]:
    """One epoch of fixed-size batches covering every window once. A short last batch is padded
    with windows drawn from the rest of the epoch (with replacement only when n < batch_size):
    a fixed shape avoids a tensor resize per call, and an empty batch is never produced."""
    order = rng.permutation(n)
    if n < batch_size:
        yield np.concatenate([order, rng.choice(n, batch_size - n, replace=True)])
        return
    full = n // batch_size
    for i in range(full):
        yield order[i * batch_size : (i + 1) * batch_size]
    rest = n - full * batch_size
    if rest:
        pad = rng.choice(order[: full * batch_size], batch_size - rest, replace=False)
        yield np.concatenate([order[full * batch_size :], pad])


def _balanced_batch_indices(
    y: I32, batch_size: int, rng: np.random.Generator
) -> Iterator[npt.NDArray[np.intp]]:
    """One epoch of fixed-size batches drawn with replacement, each class equally likely."""
    counts = np.bincount(y)
    weights = 1.0 / counts[y]
    draws = max(batch_size, -(-len(y) // batch_size) * batch_size)
    order = rng.choice(len(y), size=draws, replace=True, p=weights / weights.sum())
    for i in range(0, draws, batch_size):
        yield order[i : i + batch_size]


def evaluate(trainer: Trainer, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the trainer's current weights on (x, y)."""
    x32, y32 = _check_labelled(x, y, trainer.layout)
    logits = trainer.predict_logits(x32).astype(np.float64)
    logp = _log_softmax(logits)
    rows = np.arange(y32.shape[0])
    loss = float(-logp[rows, y32].mean())
    accuracy = float((logits.argmax(axis=1) == y32).mean())
    return loss, accuracy


def fit(
    trainer: Trainer,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    options: TrainOptions | None = None,
    global_weights: Sequence[npt.ArrayLike] | None = None,
) -> FitResult:
    """Train from `global_weights` (default: the trainer's current weights) for one round and
    leave the trainer holding the returned, clipped and noised, weights.

    FedProx is applied after each SGD step as the proximal operator of (mu/2)·‖w - w_g‖² with
    step η: w ← (w + η·mu·w_g)/(1 + η·mu). To first order that is the gradient step
    w ← w - η·mu·(w - w_g), but it stays stable for any mu, where the plain gradient step
    overshoots w_g once η·mu > 1.
    """
    opts = options if options is not None else TrainOptions()
    x32, y32 = _check_labelled(x, y, trainer.layout)
    if global_weights is not None:
        trainer.set_weights(global_weights)
    anchor = trainer.get_flat()
    loss_before, _ = evaluate(trainer, x32, y32)
    batch_seed, noise_seed = np.random.SeedSequence(opts.seed).spawn(2)
    batch_rng = np.random.default_rng(batch_seed)
    lr = np.float32(opts.learning_rate)
    shrink = np.float32(lr * opts.prox_mu)

    present = None
    if opts.restricted_softmax:
        present = [bool((y32 == c).any()) for c in range(trainer.layout.classes)]
    steps = 0
    for _ in range(opts.epochs):
        batches = (
            _balanced_batch_indices(y32, opts.batch_size, batch_rng)
            if opts.balanced
            else _batch_indices(x32.shape[0], opts.batch_size, batch_rng)
        )
        for idx in batches:
            loss = trainer.train_step(x32[idx], y32[idx], float(lr), present)
            if not math.isfinite(loss):
                raise TrainingDivergedError(f"loss became {loss} at step {steps}")
            if opts.prox_mu > 0:
                trainer.set_flat((trainer.get_flat() + shrink * anchor) / (np.float32(1) + shrink))
            steps += 1

    update = trainer.get_flat().astype(np.float64) - anchor
    update_norm = float(np.linalg.norm(update))
    clipped = opts.clip_norm is not None and update_norm > opts.clip_norm
    if clipped and opts.clip_norm is not None:
        update *= opts.clip_norm / update_norm
    noise_std = opts.noise_std
    if noise_std > 0:
        update += np.random.default_rng(noise_seed).normal(0.0, noise_std, update.shape)
    final = (anchor + update).astype(np.float32)
    if not np.isfinite(final).all():
        raise TrainingDivergedError("the round's weights are not finite")
    trainer.set_flat(final)
    loss_after, _ = evaluate(trainer, x32, y32)
    return FitResult(
        backend=trainer.backend,
        loss_before=loss_before,
        loss_after=loss_after,
        steps=steps,
        samples=int(x32.shape[0]),
        update_norm=update_norm,
        clipped=clipped,
        noise_std=noise_std,
        weights=tuple(unflatten(final, trainer.layout)),
    )
