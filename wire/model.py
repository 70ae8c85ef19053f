"""The federated model's contract: a 16 → 32 → 16 → 2 MLP's weight layout (names, shapes, flat
order) and the packaged model assets that gateways train and the aggregator starts from."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

FEATURES: Final = 16
CLASSES: Final = 2
WEIGHT_SHAPES: Final[tuple[tuple[str, tuple[int, ...]], ...]] = (
    ("w1", (16, 32)),
    ("b1", (32,)),
    ("w2", (32, 16)),
    ("b2", (16,)),
    ("w3", (16, 2)),
    ("b3", (2,)),
)
WEIGHT_NAMES: Final = tuple(name for name, _ in WEIGHT_SHAPES)
PARAMETER_COUNT: Final = sum(math.prod(shape) for _, shape in WEIGHT_SHAPES)

ASSETS_DIR: Final = Path(__file__).resolve().parent / "assets"
#: The on-device-trainable TFLite model (built offline by tools/build_model.py).
DEFAULT_MODEL_PATH: Final = ASSETS_DIR / "vitals_mlp.tflite"
#: Its initial weights as an npz of WEIGHT_NAMES: the aggregator's round-0 model.
DEFAULT_INITIAL_WEIGHTS: Final = ASSETS_DIR / "vitals_mlp_init.npz"
