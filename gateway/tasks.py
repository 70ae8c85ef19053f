"""The learning tasks a gateway can train, chosen once by `learning.task`: which stored
records become windows, how they are labelled, and which packaged model learns them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.features import N_FEATURES as VITALS_FEATURES
from gateway.features import build_windows
from gateway.rhythm import N_FEATURES as RHYTHM_FEATURES
from gateway.rhythm import build_rhythm_windows
from gateway.store import VitalsStore
from wire.model import DEFAULT_MODEL_PATH, RHYTHM_MODEL_PATH

Windows = tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]


@dataclass(frozen=True, slots=True)
class LearningTask:
    name: str
    model_path: Path
    features: int
    classes: int
    device_windows: Callable[[VitalsStore, str, int], Windows]
    devices: Callable[[VitalsStore], list[str]]

    def windows(self, store: VitalsStore, limit: int) -> Windows:
        """Features and labels of every device's newest `limit` records, concatenated."""
        xs = [np.zeros((0, self.features), np.float32)]
        ys = [np.zeros(0, np.int32)]
        for device in self.devices(store):
            x, y = self.device_windows(store, device, limit)
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)


def _vitals(store: VitalsStore, device: str, limit: int) -> Windows:
    return build_windows(store.sample_rows(device, limit=limit))


def _rhythm(store: VitalsStore, device: str, limit: int) -> Windows:
    return build_rhythm_windows(store.beat_rows(device, limit=limit))


TASKS: dict[str, LearningTask] = {
    "vitals": LearningTask(
        "vitals", DEFAULT_MODEL_PATH, VITALS_FEATURES, 2, _vitals, VitalsStore.devices
    ),
    "rhythm": LearningTask(
        "rhythm", RHYTHM_MODEL_PATH, RHYTHM_FEATURES, 3, _rhythm, VitalsStore.beat_devices
    ),
}
