"""The federated models' contract: each task's MLP weight layout (names, shapes, flat order) and
the packaged model assets that gateways train and the aggregator starts from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

WEIGHT_NAMES: Final = ("w1", "b1", "w2", "b2", "w3", "b3")


@dataclass(frozen=True, slots=True)
class MlpLayout:
    """The shape of a features -> hidden -> hidden -> classes ReLU MLP: its six weight arrays
    (w1, b1, w2, b2, w3, b3) and their order in a flat vector. Every task's model has it."""

    features: int
    hidden: tuple[int, int]
    classes: int

    def __post_init__(self) -> None:
        if min(self.features, *self.hidden) < 1 or self.classes < 2:
            raise ValueError(f"MLP layout {self} needs >= 1 unit per layer and >= 2 classes")

    @property
    def weight_shapes(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        h1, h2 = self.hidden
        return (
            ("w1", (self.features, h1)),
            ("b1", (h1,)),
            ("w2", (h1, h2)),
            ("b2", (h2,)),
            ("w3", (h2, self.classes)),
            ("b3", (self.classes,)),
        )

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for _, shape in self.weight_shapes)

    @classmethod
    def of(cls, weights: Sequence[Any]) -> MlpLayout:
        """The layout that weight arrays in `WEIGHT_NAMES` order have (not yet checked)."""
        if len(weights) != len(WEIGHT_NAMES):
            raise ValueError(
                f"expected {len(WEIGHT_NAMES)} weight arrays {WEIGHT_NAMES}, got {len(weights)}"
            )
        w1, w2, w3 = (tuple(getattr(weights[i], "shape", ())) for i in (0, 2, 4))
        if len(w1) != 2 or len(w2) != 2 or len(w3) != 2:
            raise ValueError(f"weight matrices must be 2-D, got {w1}, {w2}, {w3}")
        return cls(int(w1[0]), (int(w1[1]), int(w2[1])), int(w3[1]))


#: The synthetic-vitals alert model: 16 -> 32 -> 16 -> 2.
VITALS_LAYOUT: Final = MlpLayout(16, (32, 16), 2)
#: The rhythm model over RR windows: 18 -> 32 -> 16 -> 3 (normal, AF, other).
RHYTHM_LAYOUT: Final = MlpLayout(18, (32, 16), 3)
# the vitals model's layout under its historical names
FEATURES: Final = VITALS_LAYOUT.features
CLASSES: Final = VITALS_LAYOUT.classes
WEIGHT_SHAPES: Final = VITALS_LAYOUT.weight_shapes
PARAMETER_COUNT: Final = VITALS_LAYOUT.parameter_count

ASSETS_DIR: Final = Path(__file__).resolve().parent / "assets"
#: The on-device-trainable TFLite model (built offline by tools/build_model.py).
DEFAULT_MODEL_PATH: Final = ASSETS_DIR / "vitals_mlp.tflite"
#: Its initial weights as an npz of WEIGHT_NAMES: the aggregator's round-0 model.
DEFAULT_INITIAL_WEIGHTS: Final = ASSETS_DIR / "vitals_mlp_init.npz"
#: The rhythm task's model (`tools/build_model.py --task rhythm`) and its initial weights.
RHYTHM_MODEL_PATH: Final = ASSETS_DIR / "rhythm_mlp.tflite"
RHYTHM_INITIAL_WEIGHTS: Final = ASSETS_DIR / "rhythm_mlp_init.npz"
