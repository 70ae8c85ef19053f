"""Offline builder of the gateway's on-device-trainable model assets (needs full TensorFlow, which
is never a runtime dependency): writes wire/assets/<model>.{tflite,json} and <model>_init.npz.

Run from the repository root with a scratch TensorFlow venv:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 numpy
    /tmp/tfvenv/bin/python -m tools.build_model                 # vitals_mlp (synthetic vitals)
    /tmp/tfvenv/bin/python -m tools.build_model --task rhythm   # rhythm_mlp (RR windows)

The recipe is the one the project's TRAINING.md notes record as converting with TFLITE_BUILTINS
only: a `tf.Module` of plain `tf.Variable`s, the backward pass written by hand (no GradientTape,
so no Flex gradient ops), a hand-written SGD step, no Keras object anywhere (Keras 3 objects
convert without a variable initializer and then train on garbage). Setter signatures return the
stored values: without outputs the converter prunes their assignments and they do nothing.

Exit codes: 0 asset written and checked; 1 the converted model failed a check.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# TensorFlow's C++ logging would bury the build's own output
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from gateway.trainer import init_weights_path
from wire.model import (
    DEFAULT_MODEL_PATH,
    RHYTHM_LAYOUT,
    RHYTHM_MODEL_PATH,
    VITALS_LAYOUT,
    WEIGHT_NAMES,
    MlpLayout,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = DEFAULT_MODEL_PATH
DEFAULT_SEED = 20_240_601
# task: (layout, default output, default seed, train takes a class mask)
TASKS: dict[str, tuple[MlpLayout, Path, int, bool]] = {
    "vitals": (VITALS_LAYOUT, DEFAULT_OUT, DEFAULT_SEED, False),
    "rhythm": (RHYTHM_LAYOUT, RHYTHM_MODEL_PATH, 20_261_129, True),
}
SIGNATURES = ("train", "infer", "get_weights", "set_weights", "get_flat", "set_flat")
INIT_SCHEME = "he-uniform for the ReLU layers, glorot-uniform for the logits, zero biases"


def initial_weights(seed: int, layout: MlpLayout = VITALS_LAYOUT) -> dict[str, np.ndarray]:
    """Seeded initial weights, drawn in NumPy so that they do not depend on TensorFlow's RNG."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    shapes = layout.weight_shapes
    last_dense = shapes[-2][0]
    for name, shape in shapes:
        if len(shape) == 1:
            out[name] = np.zeros(shape, np.float32)
            continue
        fan_in, fan_out = shape
        # He for layers feeding a ReLU keeps activations from shrinking; Glorot for the logits
        limit = np.sqrt(6.0 / (fan_in + fan_out)) if name == last_dense else np.sqrt(6.0 / fan_in)
        out[name] = rng.uniform(-limit, limit, shape).astype(np.float32)
    return out


def _relu_mask(z: tf.Tensor) -> tf.Tensor:
    # the ReLU derivative written out (0 at 0, like the NumPy trainer): ReluGrad is a Flex op
    return tf.cast(z > 0.0, tf.float32)


def mlp_module(layout: MlpLayout, name: str, *, masked: bool = False) -> Any:
    """The tf.Module class of an MLP of `layout` (signatures need the shapes when defined);
    `masked`: its train signature takes a class mask (restricted softmax) as input `mask`."""

    class MLP(tf.Module):
        """features → h1 (ReLU) → h2 (ReLU) → class logits, with its own SGD step."""

        def __init__(self, init: dict[str, np.ndarray]) -> None:
            super().__init__(name=name)
            self.w1 = tf.Variable(init["w1"], name="w1")
            self.b1 = tf.Variable(init["b1"], name="b1")
            self.w2 = tf.Variable(init["w2"], name="w2")
            self.b2 = tf.Variable(init["b2"], name="b2")
            self.w3 = tf.Variable(init["w3"], name="w3")
            self.b3 = tf.Variable(init["b3"], name="b3")

        def _params(self) -> list[tf.Variable]:
            return [self.w1, self.b1, self.w2, self.b2, self.w3, self.b3]

        def _forward(self, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
            z1 = tf.matmul(x, self.w1) + self.b1
            h1 = tf.maximum(z1, 0.0)
            z2 = tf.matmul(h1, self.w2) + self.b2
            h2 = tf.maximum(z2, 0.0)
            return z1, h1, z2, h2, tf.matmul(h2, self.w3) + self.b3

        def _step(
            self, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor, mask: tf.Tensor | None
        ) -> dict[str, tf.Tensor]:
            z1, h1, z2, h2, logits = self._forward(x)
            if mask is not None:
                # restricted softmax: a class flagged 0 gets a -1e9 logit, out of the softmax
                logits = logits + (mask - 1.0) * 1e9
            n = tf.cast(tf.shape(x)[0], tf.float32)
            onehot = tf.one_hot(y, layout.classes, dtype=tf.float32)
            logp = tf.nn.log_softmax(logits)
            # the loss of the batch before the update, as the runtime reports it
            loss = -tf.reduce_sum(onehot * logp) / n
            # softmax cross-entropy backward: (p - onehot) / n, then the layers in reverse
            dz3 = (tf.exp(logp) - onehot) / n
            dz2 = tf.matmul(dz3, self.w3, transpose_b=True) * _relu_mask(z2)
            dz1 = tf.matmul(dz2, self.w2, transpose_b=True) * _relu_mask(z1)
            grads = [
                tf.matmul(x, dz1, transpose_a=True),
                tf.reduce_sum(dz1, axis=0),
                tf.matmul(h1, dz2, transpose_a=True),
                tf.reduce_sum(dz2, axis=0),
                tf.matmul(h2, dz3, transpose_a=True),
                tf.reduce_sum(dz3, axis=0),
            ]
            # every gradient is computed above before any variable is written
            for var, grad in zip(self._params(), grads, strict=True):
                var.assign_sub(lr * grad)
            return {"loss": loss}

        train_inputs = (
            tf.TensorSpec([None, layout.features], tf.float32, name="x"),
            tf.TensorSpec([None], tf.int32, name="y"),
            tf.TensorSpec([], tf.float32, name="lr"),
        )
        if masked:

            @tf.function(
                input_signature=[
                    *train_inputs,
                    tf.TensorSpec([layout.classes], tf.float32, name="mask"),
                ]
            )
            def train(
                self, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor, mask: tf.Tensor
            ) -> dict[str, tf.Tensor]:
                return self._step(x, y, lr, mask)

        else:

            @tf.function(input_signature=list(train_inputs))
            def train(self, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
                return self._step(x, y, lr, None)

        @tf.function(input_signature=[tf.TensorSpec([None, layout.features], tf.float32, name="x")])
        def infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = self._forward(x)[-1]
            return {"logits": logits, "probs": tf.nn.softmax(logits)}

        @tf.function(input_signature=[])
        def get_weights(self) -> dict[str, tf.Tensor]:
            return {
                name: tf.identity(var)
                for name, var in zip(WEIGHT_NAMES, self._params(), strict=True)
            }

        @tf.function(
            input_signature=[
                tf.TensorSpec(shape, tf.float32, name=name) for name, shape in layout.weight_shapes
            ]
        )
        def set_weights(self, *weights: tf.Tensor) -> dict[str, tf.Tensor]:
            for var, value in zip(self._params(), weights, strict=True):
                var.assign(value)
            # a signature without outputs converts to a bare CALL_ONCE: the converter prunes the
            # assignments as dead code. Returning the stored values read back keeps them.
            return self.get_weights()

        @tf.function(input_signature=[])
        def get_flat(self) -> dict[str, tf.Tensor]:
            return {"flat": tf.concat([tf.reshape(var, [-1]) for var in self._params()], axis=0)}

        @tf.function(
            input_signature=[tf.TensorSpec([layout.parameter_count], tf.float32, name="flat")]
        )
        def set_flat(self, flat: tf.Tensor) -> dict[str, tf.Tensor]:
            sizes = [int(np.prod(shape)) for _, shape in layout.weight_shapes]
            parts = tf.split(flat, sizes)
            for var, part, (_, shape) in zip(
                self._params(), parts, layout.weight_shapes, strict=True
            ):
                var.assign(tf.reshape(part, shape))
            return self.get_flat()  # outputs keep the assignments alive, as in set_weights

    return MLP


def _interpreter(model: bytes) -> Any:
    """TensorFlow's own interpreter, for checks at build time only (the gateway runs LiteRT)."""
    with warnings.catch_warnings():
        # its deprecation notice points at ai-edge-litert, which this scratch venv lacks
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_content=model)


def convert(module: Any) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        signatures = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
        tf.saved_model.save(module, tmp, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        return bytes(converter.convert())


def op_names(model: bytes) -> list[str]:
    """Every operator code the flatbuffer declares, by name (custom codes such as Flex ops by
    their custom name)."""
    root = schema.Model.GetRootAs(model, 0)
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    names = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        # the schema keeps small codes in a deprecated int8 field, large ones in builtin_code
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.append((code.CustomCode() or b"?").decode())
        else:
            names.append(builtin_names.get(builtin, f"BUILTIN_{builtin}"))
    return names


def check(model: bytes, init: dict[str, np.ndarray], layout: MlpLayout) -> list[str]:
    """Problems with the converted model: Flex or custom ops, no variable initializer, weights
    that differ from `init`, a loss that does not fall on a separable toy task."""
    problems = []
    names = op_names(model)
    if any("Flex" in name for name in names):
        problems.append(f"Flex ops present: {names}")
    if "CALL_ONCE" not in names:
        problems.append("no CALL_ONCE variable initializer")
    interpreter = _interpreter(model)
    sigs = interpreter.get_signature_list()
    if sorted(sigs) != sorted(SIGNATURES):
        problems.append(f"signatures {sorted(sigs)} != {sorted(SIGNATURES)}")
        return problems
    got = interpreter.get_signature_runner("get_weights")()
    for name in WEIGHT_NAMES:
        if not np.array_equal(got[name], init[name]):
            problems.append(f"initial {name} differs from the seeded init")
    for setter, inputs in (
        ("set_weights", {name: init[name] + 1.0 for name in WEIGHT_NAMES}),
        ("set_flat", {"flat": np.concatenate([init[name].reshape(-1) for name in WEIGHT_NAMES])}),
    ):
        interpreter.get_signature_runner(setter)(**inputs)
        stored = interpreter.get_signature_runner("get_weights")()
        expected = init["w1"] + (1.0 if setter == "set_weights" else 0.0)
        if not np.array_equal(stored["w1"], expected):
            problems.append(f"{setter} does not store the weights it is given")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, layout.features)).astype(np.float32)
    # a separable toy task over every class: the class is the bin of x0 + x1
    y = np.digitize(x[:, 0] + x[:, 1], np.linspace(-1, 1, layout.classes + 1)[1:-1])
    y = y.astype(np.int32)
    train = interpreter.get_signature_runner("train")
    extra = {}
    if "mask" in sigs["train"]["inputs"]:
        extra["mask"] = np.ones(layout.classes, np.float32)
    losses = [float(train(x=x, y=y, lr=np.float32(0.1), **extra)["loss"]) for _ in range(60)]
    if not (np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]):
        problems.append(f"loss does not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return problems


def npz_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """An .npz np.load reads, with fixed zip timestamps so that rebuilding gives the same bytes
    (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in WEIGHT_NAMES:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as member:
                np.lib.format.write_array(member, weights[name], allow_pickle=False)
    return buf.getvalue()


def signature_table(model: bytes) -> dict[str, Any]:
    interpreter = _interpreter(model)
    table: dict[str, Any] = {}
    for name in SIGNATURES:
        runner = interpreter.get_signature_runner(name)
        table[name] = {
            kind: {
                key: {
                    "shape": [int(d) for d in detail["shape_signature"]],
                    "dtype": np.dtype(detail["dtype"]).name,
                }
                for key, detail in sorted(details.items())
            }
            for kind, details in (
                ("inputs", runner.get_input_details()),
                ("outputs", runner.get_output_details()),
            )
        }
    return table


def metadata(
    model: bytes, npz: bytes, npz_name: str, seed: int, *, layout: MlpLayout, name: str
) -> dict[str, Any]:
    return {
        "model": name,
        "format_version": 1,
        "feature_count": layout.features,
        "class_count": layout.classes,
        "layers": [{"name": n, "shape": list(shape)} for n, shape in layout.weight_shapes],
        "parameter_count": layout.parameter_count,
        "activation": "relu",
        "loss": "mean softmax cross-entropy; train returns the batch loss before its SGD step",
        "tensorflow_version": tf.__version__,
        "size_bytes": len(model),
        "sha256": hashlib.sha256(model).hexdigest(),
        "signatures": signature_table(model),
        "ops": sorted(set(op_names(model))),
        "init": {
            "seed": seed,
            "scheme": INIT_SCHEME,
            "file": npz_name,
            "sha256": hashlib.sha256(npz).hexdigest(),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="vitals", help="which model")
    parser.add_argument("--out", type=Path, help="the .tflite to write (default: the task's)")
    parser.add_argument("--seed", type=int, help="initial-weight seed (default: the task's)")
    args = parser.parse_args(argv)
    layout, default_out, default_seed, masked = TASKS[args.task]
    seed = default_seed if args.seed is None else args.seed
    out: Path = args.out or default_out
    name = out.stem

    init = initial_weights(seed, layout)
    model = convert(mlp_module(layout, name, masked=masked)(init))
    problems = check(model, init, layout)
    if problems:
        for problem in problems:
            print(f"model check failed: {problem}", file=sys.stderr)
        return 1

    npz_path = init_weights_path(out)
    npz = npz_bytes(init)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model)
    npz_path.write_bytes(npz)
    meta = metadata(model, npz, npz_path.name, seed, layout=layout, name=name)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({len(model)} bytes, sha256 {meta['sha256'][:16]}…), {npz_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
