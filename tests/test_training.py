"""Short real training runs on synthetic data: the detector must clearly learn."""

from pathlib import Path

import pytest
import torch

from edgekd.checkpoint import load_checkpoint, read_checkpoint
from edgekd.config import load_config
from edgekd.errors import EdgekdError
from edgekd.evaluate import evaluate
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.train import train

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

FAST_RD = ["input_size=128", "train.batch_size=8", "train.seed=0"]


@pytest.fixture(scope="module")
def washer_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(CONFIGS / "rd_lite0.yaml", FAST_RD + ["train.epochs=10"])
    return train(cfg, synth_root, "washer", out), out


def test_rd_learns_on_held_out_test_images(washer_run, synth_root, tmp_path):
    result, out = washer_run
    runtime = TorchRuntime.from_checkpoint(result.checkpoint)
    payload = runtime.payload
    evaluation = evaluate(runtime, synth_root, "washer", tmp_path, "washer")
    row = evaluation.row
    assert row["image_auroc"] > 0.85 and row["pixel_auroc"] > 0.9, row
    assert (tmp_path / "montage_washer.png").is_file()
    # Thresholds from held-out normal images: normal test images mostly pass, defects mostly get caught.
    assert row["at_threshold"]["false_alarm_rate"] <= 0.3 and row["at_threshold"]["recall"] >= 0.5, row
    stats = payload["score_stats"]
    assert stats["n"] == 4 and payload["thresholds"]["image"] > stats["mean"]
    assert payload["training"]["category"] == "washer" and payload["training"]["n_fit"] == 36


def test_resume_continues_from_last_epoch(synth_root, tmp_path):
    cfg = load_config(CONFIGS / "rd_lite0.yaml", FAST_RD + ["train.epochs=1"])
    train(cfg, synth_root, "wood", tmp_path)
    assert read_checkpoint(tmp_path / "last.ckpt", resume=True)["epoch"] == 1
    cfg["train"]["epochs"] = 2
    train(cfg, synth_root, "wood", tmp_path, resume=True)
    assert read_checkpoint(tmp_path / "last.ckpt", resume=True)["epoch"] == 2
    other = load_config(CONFIGS / "stfpm_lite0.yaml", FAST_RD + ["train.epochs=3"])
    with pytest.raises(EdgekdError, match="cannot resume.*model"):
        train(other, synth_root, "wood", tmp_path, resume=True)


def test_stfpm_trains_and_loss_falls(synth_root, tmp_path):
    cfg = load_config(CONFIGS / "stfpm_lite0.yaml", FAST_RD + ["train.epochs=3", "train.lr=0.005"])
    first = train({**cfg, "train": {**cfg["train"], "epochs": 1}}, synth_root, "wood", tmp_path / "a")
    longer = train(cfg, synth_root, "wood", tmp_path / "b")
    assert longer.final_loss < first.final_loss
    model, _ = load_checkpoint(longer.checkpoint)
    amap, score = model(torch.rand(1, 3, 128, 128))
    assert amap.shape == (1, 1, 128, 128) and torch.isfinite(score).all()


def test_sgd_with_warm_up_follows_its_schedule_across_a_resume(synth_root, tmp_path):
    cfg = load_config(CONFIGS / "rd_lite0.yaml", FAST_RD + ["train.epochs=1", "train.optimizer=sgd", "train.lr=0.01",
                                                            "train.warmup_epochs=2", "train.grad_clip=5.0"])
    train(cfg, synth_root, "wood", tmp_path)
    state = read_checkpoint(tmp_path / "last.ckpt", resume=True)["optimizer"]
    steps = 36 // 8  # 40 normal images, 4 held out, batches of 8
    group = state["param_groups"][0]
    assert "momentum" in group and group["momentum"] == 0.9  # SGD, not Adam
    assert abs(group["lr"] - 0.01 * (steps + 1) / (2 * steps)) < 1e-9  # linear warm-up, half-way through
    cfg["train"]["epochs"] = 3
    train(cfg, synth_root, "wood", tmp_path, resume=True)  # the schedule goes on where it stopped
    assert abs(read_checkpoint(tmp_path / "last.ckpt", resume=True)["optimizer"]["param_groups"][0]["lr"] - 0.01) < 1e-9
    with pytest.raises(EdgekdError, match="train.optimizer='rmsprop' is unknown: it must be one of adam, sgd"):
        train(load_config(CONFIGS / "rd_lite0.yaml", FAST_RD + ["train.optimizer=rmsprop"]), synth_root, "wood",
              tmp_path / "other")
