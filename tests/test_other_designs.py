"""MTHF, ViTKD and MemKD: their modules, short real training runs and export parity."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekd.backbones.vit import VisionTransformer, ViTVariant, build_vit_teacher, load_vit_state
from edgekd.checkpoint import build_model
from edgekd.config import load_config
from edgekd.errors import EdgekdError
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


def test_mthf_scores_images_by_their_total_loss_as_the_paper(lite0_teacher):
    from edgekd.models import model_class
    from edgekd.models.mthf import layer_loss_per_image
    groups = ("efficientnet_lite0", "efficientnet_lite0")
    theta = [[1.0, 0.5, 2.0], [0.0, 1.0, 3.0]]  # per network, as the paper sets them
    model = model_class("mthf")(lite0_teacher, (64, 64), ScoringConfig(), groups=groups, layer_weights=theta,
                                image_score="loss").eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        teacher_feats = model.teacher_features(images)
        student_feats = model.student_features(images, teacher_feats)
        _, score = model(images)
        expected = sum(theta[g][i] * layer_loss_per_image(teacher_feats[3 * g + i], student_feats[3 * g + i])
                       for g in range(2) for i in range(3))
        assert torch.allclose(score, expected, rtol=1e-5)
        assert torch.allclose(model.loss(teacher_feats, student_feats), expected.mean(), rtol=1e-5)
    with pytest.raises(EdgekdError, match="3 numbers or 2 lists of 3"):
        build_model({"model": "mthf", "teacher": "efficientnet_lite0", "input_size": 64, "scoring": {},
                     "model_options": {"groups": list(groups), "layer_weights": [[1, 1, 1]]}})
    with pytest.raises(EdgekdError, match="image_score must be one of map, loss"):
        build_model({"model": "mthf", "teacher": "efficientnet_lite0", "input_size": 64, "scoring": {},
                     "model_options": {"groups": list(groups), "image_score": "total"}})


@pytest.fixture(scope="module")
def mthf_run(tray_root, tmp_path_factory):
    overrides = ["input_size=96", "train.batch_size=8", "train.lr=0.01"]
    first = train(load_config(CONFIGS / "mthf_lite0.yaml", overrides + ["train.epochs=1"]), tray_root, "tray",
                  tmp_path_factory.mktemp("mthf-1"))
    return first, train(load_config(CONFIGS / "mthf_lite0.yaml", overrides + ["train.epochs=8"]), tray_root, "tray",
                        tmp_path_factory.mktemp("mthf"))


@pytest.mark.slow
def test_mthf_learns_and_exports_one_graph_with_a_fused_node_per_group(mthf_run, tray_root, tmp_path, builds_engine):
    first, result = mthf_run
    assert result.final_loss < first.final_loss
    runtime = TorchRuntime.from_checkpoint(result.checkpoint)
    row = evaluate(runtime, tray_root, "tray", tmp_path, "tray").row
    assert row["image_auroc"] > 0.7 and row["pixel_auroc"] > 0.8, row
    exported = export_checkpoint(result.checkpoint, "fp32", out_dir=tmp_path, name="mthf")
    assert exported.parity.passed and exported.parity.score_rank_agreement > 0.99
    ops = [n.op_type for n in onnx.load(str(exported.artifact)).graph.node]
    assert ops.count("MultiScaleFeatureDiff") == 3 and {"Max", "ReduceMax"} & set(ops)  # one per group, then max
    builds_engine(exported.artifact)


# -- ViT teachers and ViTKD ----------------------------------------------------------------------------------------

SMALL = ViTVariant(dim=32, depth=4, heads=4, patch=16)


def _torchvision_layout(model: VisionTransformer) -> dict:
    """Our weights under torchvision's vit_b_16 key names (MultiheadAttention's packed in_proj, MLP indices 0/3)."""
    ours = model.state_dict()
    state = {"conv_proj.weight": ours["patch_embed.weight"], "conv_proj.bias": ours["patch_embed.bias"],
             "class_token": ours["cls_token"], "encoder.pos_embedding": ours["pos_embed"],
             "encoder.ln.weight": torch.ones(32), "encoder.ln.bias": torch.zeros(32)}
    for i in range(len(model.blocks)):
        src, dst = f"blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        for ours_name, theirs in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.proj", "self_attention.out_proj"),
                                  ("mlp.0", "mlp.0"), ("mlp.2", "mlp.3")):
            for kind in ("weight", "bias"):
                state[f"{dst}{theirs}.{kind}"] = ours[f"{src}{ours_name}.{kind}"]
        state[f"{dst}self_attention.in_proj_weight"] = ours[f"{src}attn.qkv.weight"]
        state[f"{dst}self_attention.in_proj_bias"] = ours[f"{src}attn.qkv.bias"]
    return state


def test_vit_block_loaded_from_torchvision_layout_matches_torch_multihead_attention():
    source = VisionTransformer(SMALL, (32, 32))
    state = _torchvision_layout(source)
    model = VisionTransformer(SMALL, (32, 32))
    mean, std = load_vit_state(model, state, "tv.pth")
    assert mean == (0.485, 0.456, 0.406)  # torchvision weights expect ImageNet normalisation
    # torchvision's encoder block, from torch's own MultiheadAttention with the same packed weights
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict({"in_proj_weight": state["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"],
                         "in_proj_bias": state["encoder.layers.encoder_layer_0.self_attention.in_proj_bias"],
                         "out_proj.weight": state["encoder.layers.encoder_layer_0.self_attention.out_proj.weight"],
                         "out_proj.bias": state["encoder.layers.encoder_layer_0.self_attention.out_proj.bias"]})
    block = model.blocks[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        h = block.norm1(x)
        after_attention = x + mha(h, h, h, need_weights=False)[0]
        expected = after_attention + block.mlp(block.norm2(after_attention))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_vit_timm_layout_loads_and_position_embeddings_follow_the_input_size():
    source = VisionTransformer(SMALL, (64, 64))  # a 4x4 grid of patches
    ours = source.state_dict()
    timm_state = {"patch_embed.proj.weight": ours["patch_embed.weight"], "patch_embed.proj.bias": ours["patch_embed.bias"],
                  "cls_token": ours["cls_token"], "pos_embed": ours["pos_embed"]}
    for i in range(SMALL.depth):
        for ours_name, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.qkv", "attn.qkv"),
                                  ("attn.proj", "attn.proj"), ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
            for kind in ("weight", "bias"):
                timm_state[f"blocks.{i}.{theirs}.{kind}"] = ours[f"blocks.{i}.{ours_name}.{kind}"]
    same = VisionTransformer(SMALL, (64, 64))
    assert load_vit_state(same, timm_state, "timm.pth")[0] == (0.5, 0.5, 0.5)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(same.tokens(images), source.tokens(images))
    larger = VisionTransformer(SMALL, (96, 96))  # 6x6 grid: position embeddings resized
    load_vit_state(larger, timm_state, "timm.pth")
    assert larger.pos_embed.shape == (1, 37, 32)
    assert torch.equal(larger.pos_embed[:, 0], source.pos_embed[:, 0])  # the class token's position is kept
    with pytest.raises(EdgekdError, match="not a torchvision or timm ViT"):
        load_vit_state(larger, {"fc.weight": torch.zeros(1)}, "other.pth")


def test_vit_teacher_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(EdgekdError, match="no weights for ViT teacher 'vit_b_16'.*--weights"):
        build_vit_teacher("vit_b_16", (224, 224), (3, 6, 9, 11), weights=None)
    with pytest.raises(EdgekdError, match="multiple of the ViT patch"):
        build_vit_teacher("vit_ti_16", (100, 100), (3,), weights="random")


@pytest.fixture(scope="module")
def vitkd_small():
    from edgekd.models import model_class
    torch.manual_seed(0)
    teacher = build_vit_teacher("vit_ti_16", (64, 64), (3, 6, 9, 11), weights="random")
    return model_class("vitkd")(teacher, (64, 64), ScoringConfig(), layers=(2, 11), topk=3)


def test_vitkd_counts_layers_from_zero_as_the_paper(vitkd_small):
    from edgekd.models import model_class
    assert vitkd_small.teacher.layers == (3, 12)  # blocks 3 and 12 counted from 1: the last block runs
    teacher = build_vit_teacher("vit_ti_16", (64, 64), (4, 7, 10, 12), weights="random")
    with pytest.raises(EdgekdError, match=r"0\.\.11"):
        model_class("vitkd")(teacher, (64, 64), ScoringConfig(), layers=(3, 6, 9, 12))


def test_vitkd_student_shares_frozen_positions_and_scores_as_the_paper(vitkd_small):
    from edgekd.models.vitkd import gram, token_diff
    model = vitkd_small
    assert torch.equal(model.student.vit.pos_embed, model.teacher.vit.pos_embed)
    assert not model.student.vit.pos_embed.requires_grad and model.student.vit.blocks[0].attn.qkv.weight.requires_grad
    images = torch.rand(3, 3, 64, 64)
    model.train()
    teacher_feats = model.teacher_features(images)
    student_feats = model.student_features(images, teacher_feats)
    assert [t.shape for t in teacher_feats] == [(3, 192, 4, 4)] * 2 + [(3, 192, 1, 1)] * 2
    model.loss(teacher_feats, student_feats)  # training: the anchor takes the teacher's class tokens in
    assert torch.allclose(model.anchor, teacher_feats[-1].flatten(1).mean(dim=0), rtol=1e-5, atol=1e-5)
    model.loss(teacher_feats[:2] + [t * 3 for t in teacher_feats[2:]], student_feats)
    assert torch.allclose(model.anchor, 2 * teacher_feats[-1].flatten(1).mean(dim=0), rtol=1e-5, atol=1e-4)  # running mean
    model.eval()
    with torch.no_grad():
        teacher_feats = model.teacher_features(images)
        student_feats = model.student_features(images, teacher_feats)
        _, score = model(images)
    # the score by hand (eqs. 7-10): per layer Diff(cls) + mean of the top-3 patch Diffs, plus both anchor distances
    t, s = [f.double() for f in teacher_feats], [f.double() for f in student_feats]
    def cos_distance(a, b):
        return 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    def diff(a, b):
        return (a - b).norm(dim=1) + cos_distance(a, b)
    expected = sum(diff(t[2 + i], s[2 + i]).flatten(1)[:, 0] + diff(t[i], s[i]).flatten(1).topk(3, dim=1).values.mean(1)
                   for i in range(2))
    anchor = model.anchor.double()
    expected = expected + (t[3].flatten(1) - anchor).norm(dim=1) + (s[3].flatten(1) - anchor).norm(dim=1)
    assert torch.allclose(score.double(), expected, rtol=1e-4)
    assert torch.allclose(token_diff(t[0], s[0]), diff(t[0], s[0]).float(), rtol=1e-4)
    g = gram(t[0], t[1])
    assert g.shape == (3, 16, 16) and torch.allclose(g[0], (t[0][0].flatten(1).T @ t[1][0].flatten(1)).float(), rtol=1e-4)
    # the loss by hand (eqs. 2-6), lambda = 1: distances, summed cosine terms, Frobenius norm of the Gram difference
    tokens = [torch.cat([c.flatten(2), p.flatten(2)], 2) for c, p in ((t[2], t[0]), (t[3], t[1]), (s[2], s[0]), (s[3], s[1]))]
    distill = sum((tokens[i] - tokens[i + 2]).flatten(1).norm(dim=1) + cos_distance(tokens[i], tokens[i + 2]).sum(1)
                  for i in range(2))
    gram_term = (gram(t[0], t[1]).double() - gram(s[0], s[1]).double()).flatten(1).norm(dim=1)
    expected_loss = (distill + (s[3].flatten(1) - anchor).norm(dim=1) + gram_term).mean()
    assert torch.allclose(model.loss(teacher_feats, student_feats).double(), expected_loss, rtol=1e-4)


@pytest.mark.slow
def test_vitkd_learns_and_exports(synth_root, tmp_path, builds_engine):
    overrides = ["input_size=96", "teacher=vit_ti_16", "teacher_weights=random", "train.batch_size=8"]
    first = train(load_config(CONFIGS / "vitkd_vit_b16.yaml", overrides + ["train.epochs=1"]), synth_root, "washer",
                  tmp_path / "one")
    result = train(load_config(CONFIGS / "vitkd_vit_b16.yaml", overrides + ["train.epochs=4"]), synth_root, "washer",
                   tmp_path / "four")
    assert result.final_loss < 0.9 * first.final_loss
    row = evaluate(TorchRuntime.from_checkpoint(result.checkpoint), synth_root, "washer", tmp_path, "washer").row
    # No ViT weights exist offline: a random ViT-Ti teacher tests the mechanics, not what ImageNet features give
    # (with the paper's distances it reaches about 0.65 / 0.73 here; chance is 0.5).
    assert row["image_auroc"] > 0.6 and row["pixel_auroc"] > 0.7, row
    exported = export_checkpoint(result.checkpoint, "fp32", out_dir=tmp_path, name="vitkd")
    assert exported.parity.passed and exported.parity.score_rank_agreement > 0.99
    builds_engine(exported.artifact)


# -- MemKD ---------------------------------------------------------------------------------------------------------
def test_key_value_memory_reads_softmax_weighted_values_and_follows_the_teacher():
    from edgekd.models.memkd import KeyValueMemory
    memory = KeyValueMemory(items=4, key_dim=3, value_dim=2, temperature=0.5, momentum=0.5)
    targets = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
    memory.fill(targets, torch.Generator().manual_seed(0))
    flat = targets.flatten(2).transpose(1, 2).reshape(-1, 2)
    assert bool(memory.filled) and all(any(torch.equal(v, f) for f in flat) for v in memory.values)
    query = torch.randn(2, 3, 3, 3)
    values, weights = memory.read(query)
    q = torch.nn.functional.normalize(query.flatten(2).transpose(1, 2), dim=-1)
    k = torch.nn.functional.normalize(memory.keys.detach(), dim=-1)
    expected_w = torch.softmax(q @ k.T / 0.5, dim=-1)
    assert torch.allclose(weights, expected_w, atol=1e-6)
    assert torch.allclose(values, (expected_w @ memory.values).transpose(1, 2).reshape(2, 2, 3, 3), atol=1e-5)
    before = memory.values.clone()
    assignment = weights.reshape(-1, 4).argmax(dim=1)
    memory.update(weights, targets)
    for item in range(4):
        chosen = flat[assignment == item]
        expected = before[item] if len(chosen) == 0 else 0.5 * before[item] + 0.5 * chosen.mean(dim=0)
        assert torch.allclose(memory.values[item], expected, atol=1e-5)


def test_adaptive_memory_items_come_from_the_image_itself():
    from edgekd.models.memkd import AdaptiveMemory
    adaptive = AdaptiveMemory(channels=6, items=3)
    features = torch.randn(2, 6, 4, 5)
    items = adaptive.items(features)
    spread = torch.softmax(adaptive.adjust(features).flatten(2), dim=2)
    assert items.shape == (2, 3, 6) and torch.allclose(items, spread @ features.flatten(2).transpose(1, 2), atol=1e-6)
    assert adaptive(features).shape == features.shape
    constant = torch.ones(1, 6, 4, 5)  # every item of a uniform image is that uniform feature, read back unchanged
    assert torch.allclose(adaptive(constant), constant, atol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_memkd_second_scale_is_the_adaptive_read_out_unless_asked(residual, lite0_teacher):
    from edgekd.models import model_class
    model = model_class("memkd")(lite0_teacher, (64, 64), ScoringConfig(), adaptive_residual=residual).eval()
    student = model.student
    seen = {}
    student.adaptive.register_forward_hook(lambda module, args, out: seen.update(initial=args[0], read=out))
    student.stage2.project.register_forward_hook(lambda module, args, out: seen.update(h2=args[0]))
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    expected = seen["initial"] + seen["read"] if residual else seen["read"]
    assert torch.allclose(seen["h2"], expected)


@pytest.mark.slow
def test_memkd_learns_and_exports_with_its_memory(tray_root, tmp_path, builds_engine):
    overrides = ["input_size=96", "train.batch_size=8"]
    first = train(load_config(CONFIGS / "memkd_lite0.yaml", overrides + ["train.epochs=1"]), tray_root, "tray",
                  tmp_path / "one")
    result = train(load_config(CONFIGS / "memkd_lite0.yaml", overrides + ["train.epochs=5"]), tray_root, "tray",
                   tmp_path / "five")
    assert result.final_loss < first.final_loss
    runtime = TorchRuntime.from_checkpoint(result.checkpoint)
    assert bool(runtime.model.student.memory.filled)
    row = evaluate(runtime, tray_root, "tray", tmp_path, "tray").row
    assert row["image_auroc"] > 0.7 and row["pixel_auroc"] > 0.8, row
    exported = export_checkpoint(result.checkpoint, "fp32", out_dir=tmp_path, name="memkd")
    assert exported.parity.passed and exported.parity.score_rank_agreement > 0.99
    graph = onnx.load(str(exported.artifact)).graph
    assert "Softmax" in [n.op_type for n in graph.node]  # the memory reads are in the graph
    builds_engine(exported.artifact)


# VGG's stages end before their pooling, so its stage outputs sit one stride finer
@pytest.mark.parametrize("name,strides", [("efficientnet_lite0", [2, 8, 32]), ("resnet18", [2, 8, 32]),
                                          ("vgg16", [1, 4, 16])])
def test_backbones_tap_the_papers_stages(name, strides):
    from edgekd.backbones import build_teacher
    teacher = build_teacher(name, pretrained=False, stages=(1, 3, 5))
    assert teacher.strides == strides
    default = build_teacher(name, pretrained=False)
    assert default.strides == [4, 8, 16]
    with pytest.raises(EdgekdError, match="increasing numbers within 1..5"):
        build_teacher(name, pretrained=False, stages=(3, 1))


def test_mthf_with_the_papers_stages(lite0_teacher):
    from edgekd.models import model_class
    model = model_class("mthf")(lite0_teacher, (64, 64), ScoringConfig(), groups=("efficientnet_lite0", "resnet18"),
                                stages=(1, 3, 5), pretrained_groups=False).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.teacher_features(images)
        assert [f.shape[-1] for f in feats] == [32, 8, 2] * 2
        amap, _ = model(images)
    assert amap.shape == (1, 1, 64, 64)
