"""Does an exported artifact compute what the PyTorch model computes? Compared on real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from edgekd.runtime.base import Runtime

# Per precision: max |map difference| relative to the map's range, and minimum Spearman rank agreement.
TOLERANCES = {"fp32": (1e-4, 0.999), "fp16": (2e-2, 0.98), "int8": (None, 0.8)}


@dataclass
class ParityReport:
    images: int
    max_abs_map_diff: float
    max_abs_score_diff: float
    map_range: float
    score_rank_agreement: float  # Spearman correlation of the image scores
    passed: bool
    limits: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"parity on {self.images} images: max |map diff| {self.max_abs_map_diff:.2e} "
                f"(map range {self.map_range:.3g}), max |score diff| {self.max_abs_score_diff:.2e}, "
                f"score rank agreement {self.score_rank_agreement:.4f}")


def compare(reference: Runtime, candidate: Runtime, images: np.ndarray, precision: str) -> ParityReport:
    ref, got = reference.infer(images), candidate.infer(images)
    map_range = float(ref.maps.max() - ref.maps.min()) or 1.0
    map_diff = float(np.abs(ref.maps - got.maps).max())
    score_diff = float(np.abs(ref.scores - got.scores).max())
    rank = float(spearmanr(ref.scores, got.scores).statistic) if len(images) > 2 else 1.0
    rel_limit, rank_limit = TOLERANCES[precision]
    passed = rank >= rank_limit and (rel_limit is None or map_diff <= rel_limit * map_range)
    limits = {"max_map_diff_relative_to_range": rel_limit, "min_score_rank_agreement": rank_limit}
    return ParityReport(len(images), map_diff, score_diff, map_range, rank, bool(passed), limits)
