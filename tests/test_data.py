import json

import cv2
import numpy as np
import pytest

from edgekd.data.images import read_mask, read_rgb
from edgekd.data.layouts import load_dataset
from edgekd.data.loading import load_images_and_masks
from edgekd.data.generation import sample_rng as _rng
from edgekd.data.synth import CATEGORIES, parse_categories, render_sample, synthesize
from edgekd.errors import EdgekdError


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def test_synth_is_deterministic_and_has_enough_categories():
    assert len(CATEGORIES) >= 5
    a, ma = render_sample("tile", "test", 3, seed=0, size=96, defect="crack")
    b, mb = render_sample("tile", "test", 3, seed=0, size=96, defect="crack")
    c, _ = render_sample("tile", "test", 3, seed=1, size=96, defect="crack")
    assert np.array_equal(a, b) and np.array_equal(ma, mb) and not np.array_equal(a, c)
    kinds = {d for spec in CATEGORIES.values() for d in spec.defects}
    assert {"scratch", "crack", "hole", "stain", "contamination", "missing_part"} <= kinds


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_synth_masks_are_exact(category):
    """Outside its mask a defective image equals the defect-free render from the same random stream."""
    for defect in CATEGORIES[category].defects:
        image, mask = render_sample(category, "test", 0, seed=0, size=128, defect=defect)
        base, _ = CATEGORIES[category].render(_rng(0, category, f"test/{defect}", 0), 128)
        base = (np.clip(base.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
        assert mask.sum() >= 12, (category, defect)
        assert np.array_equal(image[~mask], base[~mask]), (category, defect)
        assert np.abs(image[mask].astype(int) - base[mask].astype(int)).max() > 20, (category, defect)


def test_synth_writes_mvtec_layout(tmp_path):
    synthesize(tmp_path, ["chip"], seed=0, size=64, n_train=4, n_test_good=2, n_per_defect=1)
    dataset = load_dataset(tmp_path, "chip")
    assert dataset.layout == "mvtec_ad" and len(dataset.train) == 4
    assert len(dataset.test) == 2 + len(CATEGORIES["chip"].defects)
    assert not list(tmp_path.glob(".chip.*"))  # no staging folder left behind
    with pytest.raises(EdgekdError, match="already exists"):
        synthesize(tmp_path, ["chip"], size=64, n_train=2, n_test_good=1, n_per_defect=1)
    with pytest.raises(EdgekdError, match="unknown synthetic category 'carpet'"):
        parse_categories("wood,carpet")


def test_mvtec_loco_layout_unions_several_masks(tmp_path):
    base = tmp_path / "juice"
    image = np.full((32, 48, 3), 128, np.uint8)
    _png(base / "train/good/000.png", image)
    _png(base / "test/good/000.png", image)
    _png(base / "test/logical_anomalies/000.png", image)
    m1, m2 = np.zeros((32, 48), np.uint8), np.zeros((32, 48), np.uint8)
    m1[:4, :4], m2[-4:, -4:] = 255, 255
    _png(base / "ground_truth/logical_anomalies/000/000.png", m1)
    _png(base / "ground_truth/logical_anomalies/000/001.png", m2)
    dataset = load_dataset(tmp_path, "juice")
    assert dataset.layout == "mvtec_loco"
    _, masks = load_images_and_masks(dataset.test, (32, 48))
    assert masks[1].sum() == 32 and masks[0].sum() == 0


def test_folder_layout(tmp_path):
    for i in range(10):
        _png(tmp_path / f"normal/{i:02d}.png", np.full((16, 16, 3), i, np.uint8))
    _png(tmp_path / "anomalous/a.png", np.zeros((16, 16, 3), np.uint8))
    _png(tmp_path / "masks/a_mask.png", np.full((16, 16), 255, np.uint8))
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "folder" and len(dataset.train) == 8
    assert sum(s.label for s in dataset.test) == 1 and len(dataset.test) == 3
    assert dataset.test[-1].masks[0].name == "a_mask.png"


def test_layout_errors(tmp_path):
    with pytest.raises(EdgekdError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "bottle" / "stuff").mkdir(parents=True)
    with pytest.raises(EdgekdError, match="is not a dataset"):
        load_dataset(tmp_path, "bottle")
    with pytest.raises(EdgekdError, match="category 'cable' not found"):
        load_dataset(tmp_path, "cable")
    base = tmp_path / "screw"
    _png(base / "train/good/000.png", np.zeros((8, 8, 3), np.uint8))
    _png(base / "test/thread/000.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(EdgekdError, match=r"no ground-truth mask for .*000\.png"):
        load_dataset(tmp_path, "screw")


def test_bad_image_and_mask_files(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    with pytest.raises(EdgekdError, match="cannot be decoded"):
        read_rgb(corrupt)
    with pytest.raises(EdgekdError, match="does not exist"):
        read_rgb(tmp_path / "gone.png")
    mask = tmp_path / "m.png"
    _png(mask, np.zeros((10, 10), np.uint8))
    with pytest.raises(EdgekdError, match="is 10x10 but image .* is 20x10"):
        read_mask([mask], (10, 20), tmp_path / "img.png")
    grey = tmp_path / "grey.png"
    _png(grey, np.zeros((5, 7), np.uint8))
    assert read_rgb(grey).shape == (5, 7, 3)


def test_model_input_is_nchw_float_in_unit_range_for_any_frame_layout():
    from edgekd.data.images import to_model_input
    frames = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    frames[0, 0, 0] = (0, 128, 255)
    for view in (frames, frames[:, ::2, 1:], frames[::-1]):  # contiguous, strided crop, reversed batch
        tensor = to_model_input(view)
        expected = view.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
        assert tensor.dtype == np.float32 and tensor.flags.c_contiguous and tensor.shape == expected.shape
        np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-7)
    assert tuple(to_model_input(frames)[0, :, 0, 0]) == (0.0, np.float32(128) / np.float32(255), 1.0)


@pytest.mark.parametrize("category", [c for c, spec in CATEGORIES.items() if spec.logical])
def test_logical_anomalies_change_the_assembly_only_inside_their_mask(category):
    from edgekd.data.assembly import render_assembly
    for kind in CATEGORIES[category].logical:
        for index in range(3):
            image, mask = render_sample(category, "test", index, seed=0, size=128, defect=kind)
            twin, _, _ = render_assembly(category, _rng(0, category, f"test/{kind}", index), 128)
            twin = (np.clip(twin, 0, 1) * 255 + 0.5).astype(np.uint8)
            assert mask.sum() >= 12, (category, kind)
            assert np.array_equal(image[~mask], twin[~mask]), (category, kind)  # the rest of the assembly is normal
            changed = np.abs(image.astype(int) - twin.astype(int)).max(axis=2) > 40
            assert changed.sum() >= 12, (category, kind)  # and the plan is visibly broken


def test_assemblies_write_mvtec_loco_layout(tmp_path):
    synthesize(tmp_path, ["tray"], seed=0, size=64, n_train=3, n_test_good=2, n_per_defect=1)
    dataset = load_dataset(tmp_path, "tray")
    spec = CATEGORIES["tray"]
    assert dataset.layout == "mvtec_loco" and len(dataset.train) == 3
    folders = {s.defect for s in dataset.test if s.label}
    assert folders == {"logical_anomalies", "structural_anomalies"}
    logical = [s for s in dataset.test if s.defect == "logical_anomalies"]
    assert len(logical) == len(spec.logical) and all(len(s.masks) == 1 for s in logical)
    meta = json.loads((tmp_path / "tray" / "synth.json").read_text())
    assert sorted(v for k, v in meta["anomalies"].items() if "logical" in k) == sorted(spec.logical)
    assert set(parse_categories("logical")) == {"tray", "board"}


def test_camera_augmentations_differ_only_in_the_colour_cast():
    """camera and camera_neutral draw the same effects from the same random stream; neutral keeps a grey surface grey
    (its light drifts in brightness only), camera tints it; none returns the images untouched."""
    from edgekd.data.augment import augment_batch
    grey = np.full((6, 32, 32, 3), 128, np.uint8)
    tinted = augment_batch(grey, "camera", np.random.default_rng(3))
    neutral = augment_batch(grey, "camera_neutral", np.random.default_rng(3))
    channel_spread = lambda batch: np.ptp(batch.reshape(len(batch), -1, 3).astype(float).mean(1), axis=1)
    assert channel_spread(tinted).max() > 1.0  # some image got a colour cast
    assert channel_spread(neutral).max() < 1.0  # chroma subsampling and JPEG keep a flat grey grey
    assert np.array_equal(augment_batch(grey, "none", np.random.default_rng(3)), grey)
