"""`edgekd benchmark`: rows, interleaved timing, ratio columns against rd and dskd, failed rows, reports, --compare."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from cli_runner import run_main

from edgekd.sidecar import SIDECAR_FORMAT


@pytest.fixture(scope="module")
def two_reports(synth_root, tmp_path_factory):
    """rd and dskd trained briefly by the benchmark itself, onnxruntime FP32 and INT8 at batch 1; the INT8 gate set
    so strict that every INT8 export is refused (a failed row, deterministically). Then a second run compared
    against the first."""
    import subprocess
    work = tmp_path_factory.mktemp("bench")
    common = ["--data", synth_root, "--category", "wood", "--backends", "onnxruntime", "--precisions", "fp32,int8",
              "--batch", "1", "--rounds", "2", "--turn-seconds", "0.05", "--max-drop", "-1"]
    first = subprocess.run([sys.executable, "-m", "edgekd.cli", "benchmark", "--families", "rd,dskd", "--train",
                            "--epochs", "1", "--set", "input_size=64", "--set", "train.batch_size=8",
                            "--out", work / "first", *map(str, common)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    checkpoints = [work / "runs" / f / "model.ckpt" for f in ("rd", "dskd")]
    from edgekd.data.layouts import load_dataset
    from edgekd.data.video import write_line_video
    video = write_line_video(load_dataset(synth_root, "wood"), work / "line.mp4", 12, [5], size=64)["video"]
    second = subprocess.run([sys.executable, "-m", "edgekd.cli", "benchmark", *map(str, checkpoints),
                             "--out", work / "second", "--compare", work / "first" / "report.json",
                             "--source", video, *map(str, common)], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    (work / "second.stderr").write_text(second.stderr)
    return work


def test_report_files_rows_and_ratio_columns(two_reports):
    folder = two_reports / "first"
    for name in ("report.md", "report.json", "report.csv", "fps_vs_accuracy.png", "latency.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    report = json.loads((folder / "report.json").read_text())
    rows = {(r["model"], r["precision"]): r for r in report["rows"]}
    assert len(report["rows"]) == 4 and report["environment"]["onnxruntime"]["version"]
    rd, dskd = rows[("rd", "fp32")], rows[("dskd", "fp32")]
    for row in (rd, dskd):
        assert row["status"] == "ok" and row["fps"] > 0 and row["ms_p99"] >= row["ms_p50"] > 0
        assert 0.0 <= row["image_auroc"] <= 1.0 and row["size_mb"] > 0 and row["calls"] >= 2
        assert 0.0 <= row["dice"] <= 1.0 and row["area_ratio"] >= 0.0  # the masks, at the model's pixel threshold
    assert rd["x_rd"] == 1.0 and dskd["x_dskd"] == 1.0
    assert dskd["x_rd"] == pytest.approx(dskd["fps"] / rd["fps"], rel=1e-2)
    assert rd["x_dskd"] == pytest.approx(rd["fps"] / dskd["fps"], rel=1e-2)
    # The INT8 rows failed at the export gate, with the gate's reason, and the others went on.
    for family in ("rd", "dskd"):
        failed = rows[(family, "int8")]
        assert failed["status"] == "failed" and "int8 export refused" in failed["reason"] and "fps" not in failed
    markdown = (folder / "report.md").read_text()
    assert "| aupro | dice | area_ratio |" in markdown
    assert "## Rows that did not run" in markdown and "| rd | rd | onnxruntime | fp32 | 1 | ok |" in markdown
    with open(folder / "report.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_compare_against_an_earlier_report(two_reports):
    report = json.loads((two_reports / "second" / "report.json").read_text())
    compared = {c["row"]: c for c in report["comparison"]}
    assert set(compared) == {"rd onnxruntime fp32 1", "dskd onnxruntime fp32 1"}
    for entry in compared.values():
        assert entry["verdict"] in ("same", "faster", "SLOWER") and entry["speed_slack"] >= 0.05
        assert entry["image_auroc_change"] == pytest.approx(0.0, abs=1e-6)  # same checkpoints, same exports
    markdown = (two_reports / "second" / "report.md").read_text()
    assert "## Against the earlier report" in markdown and "| noise (+-) |" in markdown
    # every verdict printed with the noise that decided it
    printed = (two_reports / "second.stderr").read_text()
    for row, entry in compared.items():
        assert f"{row}: FPS " in printed and f"(noise +-{100 * entry['speed_slack']:.1f}%) -> {entry['verdict']}" in printed
    # --source: each row also ran the video through edgekd run's runner, decode to JSONL.
    for row in report["rows"]:
        if row["status"] == "ok":
            assert row["e2e_frames"] == 12 and row["e2e_fps"] > 0


def test_the_plot_title_names_only_the_reference_rows_present():
    from edgekd.bench.report import fps_vs_accuracy_title
    assert fps_vs_accuracy_title([{"family": "rd"}, {"family": "afkd"}]) == "FPS vs image AUROC (rd red)"
    assert fps_vs_accuracy_title([{"family": "memkd"}]) == "FPS vs image AUROC"


def test_regression_verdicts_follow_the_runs_noise():
    from edgekd.bench.report import compare
    earlier = {"rows": [{"model": "m", "backend": "onnxruntime", "precision": "fp32", "batch": 1, "status": "ok",
                         "fps": 100.0, "noise": 0.01, "image_auroc": 0.95}]}
    now = lambda fps, noise, auroc: [{"model": "m", "backend": "onnxruntime", "precision": "fp32", "batch": 1,
                                      "status": "ok", "fps": fps, "noise": noise, "image_auroc": auroc}]
    assert compare(now(97.0, 0.01, 0.95), earlier)[0]["verdict"] == "same"  # within 5%
    assert compare(now(80.0, 0.01, 0.95), earlier)[0]["verdict"] == "SLOWER"
    assert compare(now(80.0, 0.15, 0.95), earlier)[0]["verdict"] == "same"  # this run was too noisy to tell
    assert compare(now(100.0, 0.01, 0.93), earlier)[0]["verdict"] == "LESS ACCURATE"


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    engine = tmp_path / "wood.fp16.engine"
    engine.write_bytes(b"plan")
    engine.with_suffix(".json").write_text(json.dumps({
        "format": SIDECAR_FORMAT, "format_version": 1, "model": "rd", "precision": "fp16", "input_size": [64, 64],
        "input": {"shape": ["batch", 3, 64, 64], "normalization": {}},
        "profile": {"batch": {"min": 1, "opt": 4, "max": 4}}}))
    cases = [
        ([], "nothing to benchmark"),
        (["--families", "rd,foo", "--train", "--data", tmp_path], "foo is not a model family"),
        ([engine, "--backends", "onnxruntime,cuda"], "cuda is not one of torch, onnxruntime, tensorrt"),
        ([engine, "--precisions", "fp64"], "fp64 is not one of fp32, fp16, int8"),
        ([engine, "--batch", "1,0"], "--batch '1,0' must be batch sizes"),
        ([engine, "--batch", "1,8"], "--batch 8 is above the largest batch of"),
        ([tmp_path / "missing.ckpt"], "does not exist"),
        (["--families", "rd", "--train"], "--train needs --families"),
        ([engine, "--compare", tmp_path / "old.json"], "--compare"),
        ([engine, "--compare", tmp_path / "rows_not_list.json"], "has no list of rows"),
        ([engine, "--compare", tmp_path / "row_without_model.json"], "row 0 lacks 'model'"),
        ([engine, "--compare", tmp_path / "fps_text.json"], "row 0 has a fps that is not a finite number ('fast')"),
    ]
    shapes = {"rows_not_list": {"rows": {"a": 1}},
              "row_without_model": {"rows": [{"backend": "onnxruntime", "precision": "fp32", "batch": 1, "status": "ok"}]},
              "fps_text": {"rows": [{"model": "rd", "backend": "onnxruntime", "precision": "fp32", "batch": 1,
                                     "status": "ok", "fps": "fast"}]}}
    for name, body in shapes.items():  # wrong shapes used to end a full run in a KeyError
        (tmp_path / f"{name}.json").write_text(json.dumps({"format": "edgekd-benchmark", **body}))
    for args, fragment in cases:
        code, _, err = run_main(capsys, monkeypatch, "benchmark", *args, "--out", tmp_path / "report")
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, err)
    assert not (tmp_path / "report").exists()


def test_rows_cover_every_combination_and_fixed_artifacts_only_their_own():
    from edgekd.bench.plan import Model, plan_rows
    ckpt = Model("a", "rd", Path("a.ckpt"))
    engine = Model("b", "rd", None, Path("b.engine"), "tensorrt", "fp16")
    rows = plan_rows([ckpt, engine], ["onnxruntime", "tensorrt"], ["fp32", "int8"], [1, 8])
    assert len([r for r in rows if r.model is ckpt]) == 8
    assert {(r.backend, r.precision) for r in rows if r.model is engine} == {("tensorrt", "fp16")}


def test_tegrastats_lines_of_orin_and_nano_are_read():
    from edgekd.bench.tegrastats import parse_line, summarise
    orin = ("12-02-2026 10:00:00 RAM 3000/30536MB (lfb 5x4MB) SWAP 0/15268MB (cached 0MB) CPU [2%@729,1%@729] "
            "EMC_FREQ 0% GR3D_FREQ 61% cpu@48.5C soc2@46.3C gpu@51.1C tj@52.0C VDD_GPU_SOC 4596mW/3596mW "
            "VDD_CPU_CV 399mW/399mW VIN_SYS_5V0 7722mW/6722mW")
    nano = "RAM 1500/3964MB CPU [10%@1479,off,off,off] GR3D_FREQ 99%@921 PLL@33C CPU@36.5C GPU@34C POM_5V_IN 5123/4800"
    a, b = parse_line(orin), parse_line(nano)
    assert a == {"power_mw": 7722, "rail": "VIN_SYS_5V0", "max_temp_c": 52.0, "gpu_load_pct": 61}
    assert b["power_mw"] == 5123 and b["max_temp_c"] == 36.5 and b["gpu_load_pct"] == 99
    assert summarise([a, b])["power_mw_max"] == 7722 and summarise([]) is None


def test_ctrl_c_writes_the_report_of_the_rows_finished(two_reports):
    import signal
    import subprocess
    import threading
    import time
    checkpoints = [two_reports / "runs" / f / "model.ckpt" for f in ("rd", "dskd")]
    out = two_reports / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "benchmark", *map(str, checkpoints),
                                "--backends", "onnxruntime", "--precisions", "fp32", "--batch", "1", "--rounds", "200",
                                "--turn-seconds", "0.2", "--out", str(out), "--cache", str(two_reports / "artifacts")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum("prepared" in line for line in seen) < 2:
        time.sleep(0.2)
    time.sleep(3.0)  # into the interleaved timing (200 rounds would take minutes)
    process.send_signal(signal.SIGINT)
    out_text = process.stdout.read()
    process.wait(timeout=120)
    reader.join(timeout=10)
    assert process.returncode == 130, "".join(seen)
    report = json.loads((out / "report.json").read_text())
    assert {r["status"] for r in report["rows"]} == {"interrupted"} and "interrupted by Ctrl-C" in report["notes"][0]
    assert "error: interrupted: the report holds the rows finished before Ctrl-C" in "".join(seen)
    assert "# edgekd benchmark" in out_text


def test_torch_rows_run_the_checkpoint_in_fp32_only():
    from edgekd.bench.plan import Model
    from edgekd.bench.prepare import NotRunnable, artifact_for
    model = Model("a", "rd", Path("runs/a/model.ckpt"))
    assert artifact_for(model, "torch", "fp32", 8, Path("cache"), None, None, 1.0) == model.checkpoint
    for precision in ("fp16", "int8"):  # on a GPU too: the row would otherwise measure FP32 under another label
        with pytest.raises(NotRunnable, match=f"torch rows run the checkpoint in FP32; edgekd's {precision.upper()}"):
            artifact_for(model, "torch", precision, 8, Path("cache"), None, None, 1.0)
