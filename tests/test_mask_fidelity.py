import numpy as np
import pytest

from edgekd.calibration import Thresholds
from edgekd.mask_fidelity import image_fidelity, mask_fidelity


def _square(top: int, left: int, side: int, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_a_mask_equal_to_the_truth_scores_one_everywhere():
    truth = _square(10, 10, 8)
    result = image_fidelity(truth, truth)
    assert (result["dice"], result["iou"], result["area_ratio"]) == (1.0, 1.0, 1.0)
    assert (result["true_regions"], result["found_regions"], result["false_regions"]) == (1, 1, 0)


def test_a_blob_three_times_the_defect_has_dice_one_half():
    truth = _square(20, 20, 10)  # 100 pixels
    blob = np.zeros_like(truth)
    blob[20:30, 10:40] = True  # 300 pixels, containing the truth
    result = image_fidelity(blob, truth)
    assert result["area_ratio"] == pytest.approx(3.0)
    assert result["dice"] == pytest.approx(2 * 100 / 400) and result["iou"] == pytest.approx(100 / 300)


def test_regions_found_missed_and_false():
    truth = _square(5, 5, 6) | _square(40, 40, 6)
    predicted = _square(6, 6, 3) | _square(20, 50, 4)  # touches the first defect; a second region touches none
    result = image_fidelity(predicted, truth)
    assert (result["true_regions"], result["found_regions"]) == (2, 1)
    assert (result["predicted_regions"], result["false_regions"]) == (2, 1)


def test_split_summary_at_a_threshold_counts_false_regions_on_normal_images():
    truth = np.stack([_square(10, 10, 8), np.zeros((64, 64), bool), np.zeros((64, 64), bool)])
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0][truth[0]] = 2.0  # exactly the defect
    maps[1][30:34, 30:34] = 2.0  # one false region on a normal image
    maps[2][0:2, 0:2] = 0.5  # below the threshold
    summary, per_image = mask_fidelity(maps, truth, np.array([1, 0, 0]), Thresholds(1.0, 1.0))
    assert summary["dice_median"] == 1.0 and summary["area_ratio_median"] == 1.0
    assert summary["region_recall"] == 1.0 and summary["region_precision"] == 1.0
    assert summary["false_regions_per_normal_image"] == 0.5
    assert (summary["n_defect_images"], summary["n_normal_images"]) == (1, 2)
    assert per_image[1]["false_regions"] == 1


def test_min_area_drops_small_predicted_regions_as_the_runner_does():
    truth = np.zeros((1, 64, 64), bool)
    maps = np.zeros((1, 64, 64), np.float32)
    maps[0, 5:7, 5:7] = 2.0  # 4 pixels
    maps[0, 30:40, 30:40] = 2.0  # 100 pixels
    kept, _ = mask_fidelity(maps, truth, np.array([0]), Thresholds(1.0, 1.0), min_area=10)
    assert kept["false_regions_per_normal_image"] == 1.0


def test_the_montage_cell_draws_the_true_outline_over_the_predicted_mask():
    from edgekd.viz import outlined
    truth, predicted = _square(20, 20, 20), _square(10, 10, 40)
    cell = outlined(predicted, truth, 64)
    green = (cell[..., 1] == 200) & (cell[..., 0] == 0)
    assert green[20, 20:40].all() and not green[30, 30]  # the outline, not the inside
    assert (cell[30, 30] == 255).all() and (cell[5, 5] == 0).all()  # predicted white, the rest black


def test_regions_are_cut_to_their_core_above_the_normal_level():
    """A blurred spot: the pixel threshold keeps a wide skirt; with the map's normal level known, each region keeps
    the pixels above PEAK_FRACTION of the way to its peak, a weak region keeps its pixels over the threshold, and no
    region vanishes."""
    from edgekd.calibration import PEAK_FRACTION
    yy, xx = np.mgrid[:64, :64]
    amap = 1.0 + 9.0 * np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / (2 * 4.0 ** 2))  # normal level 1, peak 10
    amap += 0.9 * (np.abs(yy - 50) <= 1) * (np.abs(xx - 50) <= 1)  # a weak speck: peak 1.9, over the threshold 1.5
    amap = amap.astype(np.float32)
    plain, cut = Thresholds(5.0, 1.5).mask(amap), Thresholds(5.0, 1.5, background=1.0).mask(amap)
    core = 1.0 + PEAK_FRACTION * 9.0
    spot = (yy < 40) & (xx < 40)
    assert np.array_equal(cut[spot].astype(bool), (amap >= core)[spot])
    assert plain[spot].sum() > 2 * cut[spot].sum() > 0
    assert cut[49:52, 49:52].all()  # the weak speck: 1 + 0.6 * 0.9 = 1.54 is over its threshold and under its peak
    flat = np.full((8, 8), 3.0, np.float32)
    assert Thresholds(5.0, 1.0, background=9.0).mask(flat).all()  # a level above the peak never empties a region


def test_an_unusable_normal_level_is_refused_like_a_threshold():
    """A NaN level would silently change every mask: it is refused in one line, as a NaN threshold is."""
    from edgekd.calibration import check_thresholds
    from edgekd.errors import EdgekdError
    with pytest.raises(EdgekdError, match="unusable background threshold .nan."):
        check_thresholds({"image": 1.0, "pixel": 1.0, "background": float("nan")}, "model.ckpt")
    assert check_thresholds({"image": 1.0, "pixel": 1.0, "background": 0.5})["background"] == 0.5
