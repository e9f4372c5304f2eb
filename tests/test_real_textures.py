"""The real-texture benchmark generator: real pixels, exact masks, sizes in range, deterministic, whole categories.
Only the scikit-image categories run here (the others unpack Debian packages on first use)."""

import cv2
import numpy as np
import pytest

from edgekd.data.layouts import load_dataset
from edgekd.data.generation import sample_rng as _rng
from edgekd.data.real_textures import AREA_RANGE, CATEGORIES, DEFECTS, generate, parse_categories, render_sample
from edgekd.errors import EdgekdError

SKIMAGE_CATEGORIES = ["grass", "gravel", "brick"]


# Defects with a wide soft edge (stains and fading fade out over up to 5 px of blur) and a low contrast by design:
# (how far past the mask pixels may change, the least median change inside it).
SOFT = {"faint_stain": (31, 0.01), "hue_shift": (19, 0.01), "faded": (31, 0.01)}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defects_change_only_their_masked_pixels_and_have_benchmark_sizes(defect):
    areas = []
    halo, visible = SOFT.get(defect, (13, 0.04))
    for index in range(6):
        rng = _rng(0, "gravel", f"check/{defect}", index)
        normal = CATEGORIES["gravel"].render(rng, "test", 256)
        defective, mask = DEFECTS[defect](normal, rng)
        changed = np.abs(defective - normal).max(axis=2)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((halo, halo), np.uint8)).astype(bool)
        assert changed[~near].max(initial=0) < 1e-3, "pixels far from the mask changed"
        assert np.median(changed[mask]) > visible, "the masked pixels barely changed: the defect is invisible"
        areas.append(mask.mean())
    lo, hi = AREA_RANGE
    assert all(lo * 0.4 <= a <= hi * 1.6 for a in areas), areas


def test_normal_crops_are_real_pixels_that_vary_and_the_same_seed_gives_the_same_bytes():
    a, mask = render_sample("grass", "train", 0, seed=0, size=128)
    b, _ = render_sample("grass", "train", 1, seed=0, size=128)
    assert mask is None and a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # different places of the texture
    again, _ = render_sample("grass", "train", 0, seed=0, size=128)
    assert np.array_equal(a, again)
    other_seed, _ = render_sample("grass", "train", 0, seed=1, size=128)
    assert not np.array_equal(a, other_seed)
    image, mask = render_sample("brick", "test", 3, seed=0, size=128, defect="crack")
    image2, mask2 = render_sample("brick", "test", 3, seed=0, size=128, defect="crack")
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2) and mask.any()


def test_generate_writes_whole_categories_in_mvtec_layout(tmp_path):
    generate(tmp_path, SKIMAGE_CATEGORIES[:1], seed=0, size=96, n_train=4, n_test_good=2, n_per_defect=1)
    dataset = load_dataset(tmp_path, "grass")
    assert len(dataset.train) == 4 and len(dataset.test) == 2 + len(DEFECTS)
    assert {s.defect for s in dataset.test if s.label} == set(DEFECTS)
    assert all(s.masks and s.masks[0].is_file() for s in dataset.test if s.label)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    with pytest.raises(EdgekdError, match="already exists"):
        generate(tmp_path, ["grass"], size=96, n_train=2, n_test_good=1, n_per_defect=1)


def test_categories_cover_the_kinds_the_benchmark_needs():
    kinds = {CATEGORIES[c].kind for c in parse_categories("all")}
    assert len(CATEGORIES) >= 8 and {"natural", "fine", "structured", "object"} <= kinds
    with pytest.raises(EdgekdError, match="unknown real-texture category 'marble'"):
        parse_categories("grass,marble")


def test_the_colour_defects_are_as_faint_as_their_names_say():
    """faint_stain: 5-20% darker inside, at most a faint cast; hue_shift: lightness kept, colour moved; faded: local
    contrast down. Measured in the mask's core (eroded past the soft edge)."""
    for index in range(6):
        rng = _rng(0, "cork", f"faint/{index}", index)
        normal = CATEGORIES["cork"].render(rng, "test", 256)
        results = {name: DEFECTS[name](normal, np.random.default_rng(index)) for name in ("faint_stain", "hue_shift",
                                                                                         "faded")}
        for name, (defective, mask) in results.items():
            core = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            if core.sum() < 20:
                continue
            ratio = defective[core].mean(0) / normal[core].mean(0)
            lab_before = cv2.cvtColor(np.clip(normal, 0, 1), cv2.COLOR_RGB2LAB)[core]
            lab_after = cv2.cvtColor(np.clip(defective, 0, 1), cv2.COLOR_RGB2LAB)[core]
            if name == "faint_stain":
                assert 0.75 <= ratio.mean() <= 0.97 and ratio.max() - ratio.min() < 0.08, ratio
            elif name == "hue_shift":
                assert abs(lab_after[:, 0].mean() - lab_before[:, 0].mean()) < 4.0
                assert np.linalg.norm(lab_after[:, 1:].mean(0) - lab_before[:, 1:].mean(0)) > 3.0
            else:
                assert lab_after[:, 0].std() < 0.85 * lab_before[:, 0].std()
