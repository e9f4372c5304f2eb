"""Artifacts written by the code before the house was rebuilt (commit fab80d5: before the kinds table, the run
request and the sinks package) still load and score the same with today's code: a checkpoint, its FP32 ONNX export
with the sidecar, and a bundle. The old code is taken from the repository's own history and run as it was."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cli_runner import edgekd

REPO = Path(__file__).resolve().parents[1]
OLD = "fab80d5ebac8a78af86cebf57587499a2571ecf0"


@pytest.fixture(scope="module")
def old_artifacts(synth_root, tmp_path_factory):
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True).returncode:
        pytest.skip(f"this checkout has no history back to {OLD[:7]} (a shallow clone): the old code is not here")
    work = tmp_path_factory.mktemp("old")
    code = work / "code"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "edgekd", "configs"], capture_output=True,
                             check=True).stdout
    (work / "old.tar").write_bytes(archive)
    with tarfile.open(work / "old.tar") as tar:
        tar.extractall(code, filter="data")
    env = {**os.environ, "PYTHONPATH": str(code), "EDGEKD_OFFLINE": "1"}

    def old(*args):
        done = subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], cwd=code, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    run = work / "run"
    old("train", "--config", code / "configs" / "rd_lite0.yaml", "--data", synth_root, "--category", "wood", "--out",
        run, "--epochs", "1", "--set", "input_size=64", "--set", "train.batch_size=8")
    old("export", run / "model.ckpt", "--precision", "fp32", "--out", run / "export", "--max-drop", "100")
    onnx = next((run / "export").glob("*.fp32.onnx"))
    old("bundle", onnx, "--out", work / "line.tar.gz")
    images = sorted((synth_root / "wood" / "test").glob("*/00[01].png"))
    scores = {}
    for artifact in (run / "model.ckpt", onnx):
        old("predict", artifact, *images, "--out", work / f"preds-{artifact.suffix[1:]}")
        records = json.loads((work / f"preds-{artifact.suffix[1:]}" / "predictions.json").read_text())["predictions"]
        scores[artifact.suffix] = [r["score"] for r in records]
    return {"checkpoint": run / "model.ckpt", "onnx": onnx, "bundle": work / "line.tar.gz", "images": images,
            "scores": scores, "work": work}


@pytest.mark.slow
def test_old_checkpoint_and_onnx_score_the_same_today(old_artifacts, tmp_path):
    for key, suffix in (("checkpoint", ".ckpt"), ("onnx", ".onnx")):
        result = edgekd("predict", old_artifacts[key], *old_artifacts["images"], "--out", tmp_path / key)
        assert result.returncode == 0, result.stderr
        today = [r["score"] for r in json.loads((tmp_path / key / "predictions.json").read_text())["predictions"]]
        np.testing.assert_allclose(today, old_artifacts["scores"][suffix], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_old_sidecar_and_bundle_open_today(old_artifacts, tmp_path):
    from edgekd.artifacts import read_sidecar
    from edgekd.runtime import open_runtime
    info = read_sidecar(old_artifacts["onnx"])
    with open_runtime(old_artifacts["onnx"]) as runtime:
        assert runtime.thresholds["image"] == info.thresholds["image"]
    folder = old_artifacts["images"][0].parent
    result = edgekd("run", "--bundle", old_artifacts["bundle"], "--source", folder, "--jsonl", tmp_path / "e.jsonl",
                    "--stats-every", "0")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == len(list(folder.glob("*.png")))
