"""MTHF, ViTKD and MemKD: their modules, short real training runs and export parity."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekd.config import load_config
from edgekd.evaluate import evaluate
from edgekd.export.exporter import export_checkpoint
from edgekd.models.mthf import FeatureFusion, HybridAttention, layer_loss
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.scoring import ScoringConfig
from edgekd.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# -- MTHF -----------------------------------------------------------------------------------------------------------
def test_hybrid_attention_keeps_shape_and_crosses_its_branches():
    fam = HybridAttention(8)
    x = torch.randn(2, 8, 6, 5)
    out = fam(x)
    assert out.shape == x.shape
    by_channel, by_position = x * fam.channel_weights(x), x * fam.spatial_weights(x)
    expected = x + by_channel * fam.spatial_weights(by_position) + by_position * fam.channel_weights(by_channel)
    assert torch.allclose(out, expected, atol=1e-6)
    assert fam.channel_weights(x).shape == (2, 8, 1, 1) and fam.spatial_weights(x).shape == (2, 1, 6, 5)


def test_feature_fusion_is_a_top_down_pyramid_of_neighbours():
    fusion = FeatureFusion([4, 6, 8])
    feats = [torch.randn(1, 4, 16, 16), torch.randn(1, 6, 8, 8), torch.randn(1, 8, 4, 4)]
    out = fusion(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert torch.allclose(out[2], fusion.attention[2](feats[2]))  # the top level only sees itself
    changed = [feats[0], feats[1], feats[2] + 1.0]
    moved = fusion(changed)
    assert not torch.allclose(moved[0], out[0])  # a change at the top reaches the bottom through the chain
    changed = [feats[0], feats[1] + 1.0, feats[2]]
    assert torch.allclose(fusion(changed)[2], out[2])  # ... but never flows upwards


def test_layer_loss_is_mse_plus_flattened_cosine():
    t, s = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    tf, sf = t.flatten(1).numpy().astype(np.float64), s.flatten(1).numpy().astype(np.float64)
    mse = ((tf - sf) ** 2).mean(axis=1)
    cos = (tf * sf).sum(axis=1) / (np.linalg.norm(tf, axis=1) * np.linalg.norm(sf, axis=1))
    assert abs(layer_loss(t, s).item() - (mse + 1 - cos).mean()) < 1e-5
    assert layer_loss(t, t).item() < 1e-6


@pytest.fixture(scope="module")
def mthf_small(lite0_teacher):
    from edgekd.models import model_class
    return model_class("mthf")(lite0_teacher, (96, 96), ScoringConfig(), groups=("efficientnet_lite0", "efficientnet_lite0",
                                                                               "efficientnet_lite1"), alpha=0.3).eval()


def test_mthf_fuses_group_maps_in_two_stages(mthf_small):
    model = mthf_small
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        teacher_feats = model.teacher_features(images)
        student_feats = model.student_features(images, teacher_feats)
        assert len(teacher_feats) == 9 and [s.shape for s in student_feats] == [t.shape for t in teacher_feats]
        maps = model.group_maps(teacher_feats, student_feats, model.reference_diff)
        amap, score = model(images)
    expected = 0.3 * torch.maximum(maps[0], maps[1]) + 0.7 * maps[2]
    assert torch.allclose(amap, expected, atol=1e-6)
    assert torch.allclose(score, expected.flatten(1).amax(dim=1), atol=1e-6)
    # every group normalises the image its own way and the model's own normalisation is the identity
    assert torch.equal(model.normalize(images), images)


@pytest.fixture(scope="module")
def tray_root(tmp_path_factory):
    from edgekd.data.synth import synthesize
    root = tmp_path_factory.mktemp("tray")
    synthesize(root, ["tray"], seed=0, size=128, n_train=40, n_test_good=10, n_per_defect=2)
    return root


@pytest.fixture(scope="module")
def mthf_run(tray_root, tmp_path_factory):
    overrides = ["input_size=96", "train.batch_size=8", "train.lr=0.01"]
    first = train(load_config(CONFIGS / "mthf_lite0.yaml", overrides + ["train.epochs=1"]), tray_root, "tray",
                  tmp_path_factory.mktemp("mthf-1"))
    return first, train(load_config(CONFIGS / "mthf_lite0.yaml", overrides + ["train.epochs=4"]), tray_root, "tray",
                        tmp_path_factory.mktemp("mthf"))


@pytest.mark.slow
def test_mthf_learns_and_exports_one_graph_with_a_fused_node_per_group(mthf_run, tray_root, tmp_path):
    first, result = mthf_run
    assert result.final_loss < first.final_loss
    runtime = TorchRuntime.from_checkpoint(result.checkpoint)
    row = evaluate(runtime, tray_root, "tray", tmp_path, "tray").row
    assert row["image_auroc"] > 0.7 and row["pixel_auroc"] > 0.8, row
    exported = export_checkpoint(result.checkpoint, "fp32", out_dir=tmp_path, name="mthf")
    assert exported.parity.passed and exported.parity.score_rank_agreement > 0.99
    ops = [n.op_type for n in onnx.load(str(exported.artifact)).graph.node]
    assert ops.count("MultiScaleFeatureDiff") == 3 and {"Max", "ReduceMax"} & set(ops)  # one per group, then max
