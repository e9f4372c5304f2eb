"""One interface for every backend: load an artifact, run a batch of frames, get maps, scores and masks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from edgekd.calibration import Thresholds, check_thresholds
from edgekd.data.images import to_model_input
from edgekd.sidecar import Sidecar


@dataclass
class Prediction:
    maps: np.ndarray  # (N,H,W) float32 anomaly maps at the model's input size
    scores: np.ndarray  # (N,) float32 image scores
    masks: np.ndarray | None  # (N,H,W) uint8, 1 = defect, when a pixel threshold is known


class RuntimeUnavailable(Exception):
    """The backend could not score this batch now but may later (a remote server that went away): the caller
    counts the frames as lost and goes on."""


class Runtime(ABC):
    """Life cycle: open (constructor) -> infer(...) any number of times -> close()."""

    backend = "base"
    warm_up = True  # run a batch of zeros before the first frame (local backends size their memory then)

    def __init__(self, info: Sidecar):
        self.info = info  # what the model says about itself: input size, thresholds, score statistics, family, ...
        self.input_size = tuple(info.input_size)

    @property
    def thresholds(self) -> dict:
        """The artifact's thresholds, checked on every use (a NaN would call every defect normal)."""
        return check_thresholds(self.info.thresholds, self.label)

    @thresholds.setter
    def thresholds(self, value: dict) -> None:
        self.info.thresholds = value

    @property
    def label(self) -> str:
        return self.info.label

    @abstractmethod
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,3,H,W) float32 RGB in [0, 1] -> (maps (N,1,H,W), scores (N,)) as numpy."""

    def infer(self, images: np.ndarray, batch_size: int = 16, progress=None, label: str = "infer") -> Prediction:
        """(N,H,W,3) uint8 RGB frames at the input size -> Prediction, in batches."""
        maps, scores = [], []
        task = progress.add_task(label, total=len(images)) if progress else None
        for start in range(0, len(images), batch_size):
            amap, score = self.run(to_model_input(images[start:start + batch_size]))
            maps.append(np.asarray(amap, dtype=np.float32)[:, 0])
            scores.append(np.asarray(score, dtype=np.float32).reshape(-1))
            if progress:
                progress.advance(task, len(maps[-1]))
        maps_all = np.concatenate(maps) if maps else np.zeros((0, *self.input_size), np.float32)
        decide = Thresholds.for_masks(self.thresholds)
        masks = decide.masks(maps_all) if decide is not None else None
        return Prediction(maps_all, np.concatenate(scores) if scores else np.zeros(0, np.float32), masks)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
