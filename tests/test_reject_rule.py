import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgekd.calibration import Thresholds
from edgekd.errors import EdgekdError
from edgekd.region_sizes import parse_scale
from edgekd.stream.detect import apply_reject_rule, defect_regions, region_extent
from edgekd.stream.reject import RejectRule


@pytest.mark.parametrize("text, value", [("0.05", 0.05), ("40mm=800px", 0.05), (" 12.5 mm = 250 px ", 0.05),
                                         (0.1, 0.1), (None, None)])
def test_scale_as_a_number_or_a_known_width(text, value):
    assert parse_scale(text) == pytest.approx(value) if value else parse_scale(text) is None


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "40mm=0px", "40=800", "inf"])
def test_a_bad_scale_is_one_line_naming_both_forms(text):
    with pytest.raises(EdgekdError, match=r"--mm-per-px .* is not a scale: .*0\.05.*40mm=800px"):
        parse_scale(text)


def test_rules_combine_with_and_or_not_and_parentheses():
    rule = RejectRule.parse("area_mm2 > 0.5 or length_mm >= 2", has_scale=True)
    assert rule.rejects({"area_mm2": 0.6, "length_mm": 1.0})
    assert rule.rejects({"area_mm2": 0.1, "length_mm": 2.0})
    assert not rule.rejects({"area_mm2": 0.5, "length_mm": 1.9})
    both = RejectRule.parse("not (width_px <= 3) and (length_px > 10 or area_px > 100)", has_scale=False)
    assert both.rejects({"width_px": 4, "length_px": 11, "area_px": 0})
    assert not both.rejects({"width_px": 3, "length_px": 11, "area_px": 500})
    assert not both.rejects({"width_px": 5, "length_px": 5, "area_px": 50})
    assert RejectRule.parse("length_px>10 AND width_px<2", False).rejects({"length_px": 11, "width_px": 1})


@pytest.mark.parametrize("text, message", [
    ("diameter_mm > 2", "'diameter_mm' is not a size"),
    ("area_mm2 >", "it ends too early"),
    ("area_mm2 = 2", "cannot read '= 2'"),
    ("(length_px > 2", "ends too early"),
    ("length_px > 2 width_px > 1", "unexpected 'width_px'"),
    ("__import__('os').system('true')", "cannot read"),
    ("length_px > two", "needs a number, not 'two'"),
])
def test_a_bad_rule_is_one_line_before_anything_runs(text, message):
    with pytest.raises(EdgekdError) as error:
        RejectRule.parse(text, has_scale=True)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "e.g. 'area_mm2 > 0.5 or length_mm > 2'" in str(error.value)


def test_millimetre_sizes_need_a_scale():
    with pytest.raises(EdgekdError, match="uses area_mm2, which need a scale: add --mm-per-px"):
        RejectRule.parse("area_mm2 > 0.5 or length_px > 3", has_scale=False)


def test_length_and_width_are_the_minimum_area_rectangle_in_frame_pixels():
    bar = np.zeros((64, 64), bool)
    bar[30:32, 10:30] = True  # 20 x 2 model pixels
    assert region_extent(bar, 2.0, 2.0) == pytest.approx((40.0, 4.0))
    diagonal = np.eye(32, dtype=bool) | np.eye(32, k=1, dtype=bool)  # a thin line at 45 degrees
    length, width = region_extent(diagonal, 1.0, 1.0)
    assert length == pytest.approx(32 * np.sqrt(2), rel=0.06) and width < 3.0
    assert region_extent(np.ones((1, 1), bool), 1.0, 1.0) == pytest.approx((1.0, 1.0))


def test_regions_carry_millimetres_and_the_rule_marks_them():
    amap = np.zeros((64, 64), np.float32)
    amap[10:12, 10:40] = 5.0  # a scratch: 30 x 2 model pixels
    amap[50:54, 50:54] = 5.0  # a spot: 4 x 4
    regions, _ = defect_regions(amap, Thresholds(1.0, 1.0), (128, 128), 0, mm_per_px=0.05)  # frame twice the map: 0.1 mm per map pixel
    scratch, spot = regions  # largest first
    record = scratch.to_dict()
    assert record["length_mm"] == pytest.approx(3.0) and record["width_mm"] == pytest.approx(0.2)
    assert record["area_mm2"] == pytest.approx(60 * 4 * 0.0025) and spot.to_dict()["length_mm"] == pytest.approx(0.4)
    marked, rejected = apply_reject_rule(regions, RejectRule.parse("length_mm > 2", True))
    assert rejected and [r.rejects for r in marked] == [True, False]
    assert marked[0].to_dict()["rejects"] is True
    marked, rejected = apply_reject_rule(regions, RejectRule.parse("area_mm2 > 1", True))
    assert not rejected and [r.rejects for r in marked] == [False, False]


def _run_folder(tmp_path, model, *options):
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "edgekd", "run", "--model", str(model), "--source", str(folder),
                           "--device", "cpu", "--stats-every", "0", *options], capture_output=True, text=True,
                          timeout=300), folder


@pytest.mark.slow
def test_run_reports_sizes_and_rejects_by_the_rule(wood_checkpoint, synth_root, tmp_path):
    """Through `edgekd run`: every defective frame's regions carry mm sizes, `reject` says which parts the rule
    rejects, and a frame that is not defective is never rejected; a rule needing a scale fails before the model
    loads."""
    folder = tmp_path / "frames"
    folder.mkdir()
    images = sorted((synth_root / "wood" / "test").glob("*/*.png"))
    for i, path in enumerate([p for p in images if p.parent.name == "good"][:3] +
                             [p for p in images if p.parent.name != "good"][:5]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.imread(str(path)))
    events = tmp_path / "events.jsonl"
    result, _ = _run_folder(tmp_path, wood_checkpoint, "--jsonl", str(events), "--mm-per-px", "40mm=400px",
                            "--reject-if", "length_mm > 1.5", "--threshold", "0")  # every frame defective
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == 8 and all(e["defective"] for e in lines)
    for event in lines:
        lengths = [r["length_mm"] for r in event["regions"]]
        assert all(r["area_mm2"] == pytest.approx(r["area"] * 0.01) for r in event["regions"])
        assert event["reject"] == (any(length > 1.5 for length in lengths) or not lengths)
        assert [r["rejects"] for r in event["regions"]] == [length > 1.5 for length in lengths]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rejected"] == sum(e["reject"] for e in lines)
    quiet = tmp_path / "quiet.jsonl"
    result, _ = _run_folder(tmp_path, wood_checkpoint, "--jsonl", str(quiet), "--reject-if", "length_px > 1",
                            "--threshold", "1e9")  # nothing defective: nothing rejected
    assert result.returncode == 0, result.stderr
    assert all(e["reject"] is False and not e["regions"] for e in map(json.loads, quiet.read_text().splitlines()))
    result, _ = _run_folder(tmp_path, wood_checkpoint, "--reject-if", "area_mm2 > 0.5")
    assert result.returncode == 2 and "uses area_mm2, which need a scale" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1



def test_a_line_file_carries_the_scale_and_the_rule(tmp_path):
    """YAML reads `mm_per_px: 0.05` as a number; the option takes it as its text, and the command line wins."""
    from edgekd.stream.request import RunRequest
    line = tmp_path / "line.yaml"
    line.write_text("model: m.onnx\nmm_per_px: 0.05\nreject_if: 'area_mm2 > 0.5 or length_mm > 2'\n")
    request = RunRequest.build(line, {})
    assert parse_scale(request.mm_per_px) == pytest.approx(0.05)
    assert RejectRule.parse(request.reject_if, True).rejects({"area_mm2": 0.1, "length_mm": 3.0})
    assert RunRequest.build(line, {"mm_per_px": "40mm=400px"}).mm_per_px == "40mm=400px"
