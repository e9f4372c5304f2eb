"""AFKD, LogicRD and the DSKD reconstruction: their modules, short real training runs and export parity."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekd.artifacts import read_sidecar
from edgekd.checkpoint import load_checkpoint
from edgekd.config import load_config
from edgekd.evaluate import evaluate
from edgekd.export.exporter import export_checkpoint
from edgekd.models import model_class
from edgekd.models.logicrd import GlobalContext, InhibitionGate, disturb_patches
from edgekd.models.mahalanobis import BranchNormaliser, MahalanobisBranch, pooled_descriptor
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.scoring import ScoringConfig
from edgekd.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILIES = ("afkd", "logicrd", "dskd")


# -- the pieces ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shrinkage", [0.3, None])
def test_mahalanobis_matches_a_direct_numpy_computation(shrinkage):
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    branch = MahalanobisBranch(12)
    used = branch.fit(normal, shrinkage)
    assert branch.fitted and (used == shrinkage if shrinkage is not None else 0 < used < 1)
    # the shrunk covariance by hand: (1 - a) S + a (trace S / d) I, S the maximum-likelihood covariance
    mean = normal.mean(axis=0)
    sample = (normal - mean).T @ (normal - mean) / len(normal)
    covariance = (1 - used) * sample + used * np.trace(sample) / 12 * np.eye(12)
    queries = rng.normal(size=(5, 12)) * 3
    centred = queries - mean
    expected = np.sqrt(np.einsum("bi,ij,bj->b", centred, np.linalg.inv(covariance), centred))
    got = branch(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert branch(torch.from_numpy(mean[None]).float()).item() < 1e-3  # the mean itself is at distance 0


def test_mahalanobis_refuses_wrong_shapes_and_too_few_images():
    from edgekd.errors import EdgekdError
    branch = MahalanobisBranch(4)
    with pytest.raises(EdgekdError, match=r"\(N, 4\)"):
        branch.fit(np.zeros((10, 5)))
    with pytest.raises(EdgekdError, match="at least 2"):
        branch.fit(np.zeros((1, 4)))


def test_branch_normaliser_gives_z_scores():
    norm = BranchNormaliser()
    norm.fit(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(norm(torch.tensor([2.0, 2.0 + np.std([1, 2, 3])])).numpy(), [0.0, 1.0], atol=1e-6)
    norm.fit(np.array([5.0, 5.0]))  # a constant branch stays finite
    assert torch.isfinite(norm(torch.tensor([6.0]))).all()


def test_pooled_descriptor_keeps_layout():
    left = torch.zeros(1, 2, 8, 8)
    left[..., :4] = 1.0
    right = left.flip(-1)
    d_left, d_right = pooled_descriptor([left], 2), pooled_descriptor([right], 2)
    assert d_left.shape == (1, 2 * 4) and not torch.allclose(d_left, d_right)  # same content, other place
    assert torch.allclose(pooled_descriptor([left], 1), pooled_descriptor([right], 1))  # a global mean would not see it


def test_inhibition_gate_closed_passes_nothing_open_passes_everything():
    gate = InhibitionGate(hidden=6, compensation=4)
    hidden, compensation = torch.randn(2, 6, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        gate.gate.weight.zero_()
        gate.gate.bias.fill_(-40.0)
        closed = gate(hidden, compensation)
        assert torch.allclose(closed, hidden, atol=1e-6)  # an inhibited pathway leaks nothing
        assert torch.allclose(gate(hidden, compensation * 100), hidden, atol=1e-5)
        gate.gate.bias.fill_(40.0)
        assert torch.allclose(gate(hidden, compensation), hidden + gate.project(compensation), atol=1e-5)


def test_gse_attention_starts_as_identity_and_knows_where_things_are():
    from edgekd.models.logicrd import PositionalAttention
    torch.manual_seed(0)
    step = PositionalAttention(16)
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(step(x), x)  # W_o starts at zero
    with torch.no_grad():
        torch.nn.init.normal_(step.out.weight, std=0.5)
    # the same content in another place: a pooled context would add the same vector everywhere, this does not
    moved = x.roll(shifts=3, dims=-1)
    assert not torch.allclose(step(moved), step(x).roll(shifts=3, dims=-1), atol=1e-4)
    context = GlobalContext(16)
    assert torch.allclose(context(moved) - moved, (context(x) - x).roll(shifts=3, dims=-1), atol=1e-5)


@pytest.mark.parametrize("features", ["teacher", "gse"])
def test_logicrd_mahalanobis_describes_the_chosen_features(features, lite0_teacher):
    model = model_class("logicrd")(lite0_teacher, (64, 64), ScoringConfig(), global_features=features, width=8,
                                   embed=16).eval()
    expected = sum(lite0_teacher.channels) if features == "teacher" else 8 + 8 + 16
    assert model.mahalanobis.dim == expected * 4
    batches = [torch.rand(4, 3, 64, 64) for _ in range(2)]
    summary = model.fit_global(lambda: iter(batches))
    assert summary["mahalanobis_images"] == 8 and model.mahalanobis.fitted
    with torch.no_grad():
        teacher_feats = model.teacher_features(batches[0])
        assert torch.isfinite(model.global_score(teacher_feats, None)).all()


def test_disturbed_patches_are_rectangles_only_when_asked():
    x = torch.randn(4, 3, 16, 16)
    assert disturb_patches(x, 0.0, 1.0) is x
    generator = torch.Generator().manual_seed(0)
    out = disturb_patches(x, 1.0, 1.0, generator)
    for i in range(4):
        changed = (out[i] != x[i]).any(dim=0)
        rows, cols = torch.nonzero(changed.any(dim=1)).flatten(), torch.nonzero(changed.any(dim=0)).flatten()
        assert changed.sum() > 0 and changed.sum() == len(rows) * len(cols)  # one filled rectangle


@pytest.mark.parametrize("family", FAMILIES)
def test_models_give_teacher_shaped_features_and_full_size_maps(family, lite0_teacher):
    scoring = ScoringConfig()
    model = model_class(family)(lite0_teacher, (96, 96), scoring).eval()
    images = torch.rand(2, 3, 96, 96)
    teacher_feats = model.teacher_features(images)
    student_feats = model.student_features(images, teacher_feats)
    assert [s.shape for s in student_feats] == [t.shape for t in teacher_feats]
    amap, score = model(images)
    assert amap.shape == (2, 1, 96, 96) and score.shape == (2,) and torch.isfinite(score).all()


@pytest.mark.parametrize("mode", ["pixel", "level"])
def test_afkd_fusion_weights_mix_the_teachers_levels_and_are_learned(mode, lite0_teacher):
    model = model_class("afkd")(lite0_teacher, (64, 64), ScoringConfig(), fusion_weights=mode)
    assert model.scale_weights() is None  # the map combines the scales as every RD model does
    images = torch.rand(2, 3, 64, 64)
    teacher_feats = model.teacher_features(images)
    fusion = model.fusion
    carried, own = fusion.carry1(teacher_feats[0]), fusion.own2(teacher_feats[1])
    weights = fusion.fuse2.weights(carried, own)
    assert torch.allclose(weights.sum(dim=1), torch.ones(1))
    assert weights.shape == ((2, 2, 8, 8) if mode == "pixel" else (1, 2, 1, 1))
    if mode == "pixel":  # per position: the weights differ across the map
        assert weights[:, 0].std() > 0
    model.loss(teacher_feats, model.student_features(images, teacher_feats)).backward()
    logits = fusion.fuse2.logits
    grad = (logits.weight if mode == "pixel" else logits).grad
    assert grad is not None and grad.abs().sum() > 0
    with torch.no_grad():  # all weight on the carried level: the teacher's own level no longer reaches the sum
        if mode == "pixel":
            logits.weight.zero_()
            logits.bias.copy_(torch.tensor([40.0, -40.0]))
        else:
            logits.copy_(torch.tensor([40.0, -40.0]))
        mixed = fusion.fuse2(carried, own)
        assert torch.allclose(mixed, fusion.fuse2(carried, own * 5 + 3), atol=1e-5)


def test_afkd_option_checks(lite0_teacher):
    from edgekd.errors import EdgekdError
    with pytest.raises(EdgekdError, match="fusion_weights must be one of pixel, level, none"):
        model_class("afkd")(lite0_teacher, (64, 64), ScoringConfig(), fusion_weights="channel")
    with pytest.raises(EdgekdError, match="go together"):
        model_class("afkd")(lite0_teacher, (64, 64), ScoringConfig(), loss_weights="uncertainty")


def test_afkd_uncertainty_loss_weights_stay_an_option(lite0_teacher):
    model = model_class("afkd")(lite0_teacher, (64, 64), ScoringConfig(combine="weighted"), loss_weights="uncertainty")
    weights = model.scale_weights()
    assert torch.allclose(weights.sum(), torch.tensor(1.0)) and (weights > 0).all()
    images = torch.rand(2, 3, 64, 64)
    teacher_feats = model.teacher_features(images)
    loss = model.loss(teacher_feats, model.student_features(images, teacher_feats))
    loss.backward()
    assert model.log_variance.grad is not None and model.log_variance.grad.abs().sum() > 0
    with torch.no_grad():  # a scale whose weight is raised counts more in the map
        model.log_variance.copy_(torch.tensor([-3.0, 0.0, 0.0]))
    assert model.scale_weights()[0] > 0.85


# -- short training runs, evaluation, export -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tray_root, tmp_path_factory):
    runs = {}
    for family in FAMILIES:
        cfg = load_config(CONFIGS / f"{family}_lite0.yaml", ["input_size=128", "train.batch_size=8", "train.epochs=6"])
        first = train({**cfg, "train": {**cfg["train"], "epochs": 1}}, tray_root, "tray",
                      tmp_path_factory.mktemp(f"{family}-1"))
        runs[family] = (first, train(cfg, tray_root, "tray", tmp_path_factory.mktemp(family)))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_models_learn_on_an_assembly_with_logical_anomalies(family, trained, tray_root, tmp_path):
    first, result = trained[family]
    assert result.final_loss < first.final_loss, (first.final_loss, result.final_loss)
    runtime = TorchRuntime.from_checkpoint(result.checkpoint)
    row = evaluate(runtime, tray_root, "tray", tmp_path, "tray").row
    # afkd's per-pixel fusion weights start slower: 0.75 on the tray after these 6 epochs, 0.84 after 12
    # (benchmarks/results/paper-fidelity/paper_fidelity_figures.md)
    assert row["image_auroc"] > (0.7 if family == "afkd" else 0.75) and row["pixel_auroc"] > 0.8, row
    fitted = runtime.payload["training"].get("normal_fit", {})
    if family == "afkd":
        assert not fitted
    else:  # the dual-branch models fitted their branch scales on held-out normal images
        assert fitted["global_score_std"] > 0 and fitted["map_score_std"] > 0
        if family == "logicrd":
            assert fitted["mahalanobis_images"] == runtime.payload["training"]["n_fit"]


@pytest.mark.slow
def test_logicrd_image_score_is_the_sum_of_normalised_branches(trained, tray_root):
    model, _ = load_checkpoint(trained["logicrd"][1].checkpoint)
    model.eval()
    images = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        map_score, global_score = model.branch_scores(images)
        _, score = model(images)
        expected = ((map_score - model.map_norm.mean) / model.map_norm.std
                    + model.global_weight * (global_score - model.global_norm.mean) / model.global_norm.std)
    assert torch.allclose(score, expected, atol=1e-5)
    assert model.mahalanobis.fitted and not torch.equal(model.mahalanobis.precision, torch.eye(model.mahalanobis.dim))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_export_parity_with_global_branches_in_the_graph(family, trained, tmp_path, builds_engine):
    result = export_checkpoint(trained[family][1].checkpoint, "fp32", out_dir=tmp_path, name=family)
    assert result.parity.passed and result.parity.score_rank_agreement > 0.99
    info = read_sidecar(result.artifact)
    assert info.model == family
    graph = onnx.load(str(result.artifact)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MultiScaleFeatureDiff") == 1  # the map branch is still the one fused scoring op
    if family == "logicrd":  # the Mahalanobis distance is inside the graph: (x - mean) P (x - mean)^T
        assert "MatMul" in ops and "Sqrt" in ops
    builds_engine(result.artifact)


@pytest.mark.parametrize("size", [(8, 8), (7, 13), (3, 5)])
def test_pooled_descriptor_equals_adaptive_average_pooling(size):
    features = [torch.randn(2, 3, *size), torch.randn(2, 4, size[0] + 1, size[1])]
    for grid in (1, 2, 3):
        expected = torch.cat([torch.nn.functional.adaptive_avg_pool2d(f, grid).flatten(1) for f in features], dim=1)
        assert torch.allclose(pooled_descriptor(features, grid), expected, atol=1e-6)


@pytest.mark.slow
def test_logicrd_reduced_precision_keeps_the_global_branch_in_float_and_streams(trained, tray_root, tmp_path):
    from edgekd.data.layouts import load_dataset
    from edgekd.stream.cli_run import run_stream
    from edgekd.stream.request import RunRequest
    checkpoint = trained["logicrd"][1].checkpoint
    for precision, extra in (("fp16", {}), ("int8", {"int8_for": "onnxruntime", "calib_images": 16})):
        result = export_checkpoint(checkpoint, precision, out_dir=tmp_path, name="logicrd", force=True, **extra)
        assert result.parity.passed, precision
        graph = onnx.load(str(result.artifact)).graph
        initializers = {i.name: i for i in graph.initializer}
        branch = [n for n in graph.node if n.name.startswith("/mahalanobis/")]
        assert any(n.op_type == "MatMul" for n in branch), precision
        for node in branch:  # mean and precision matrix stay FP32, never quantized
            for name in node.input:
                if name in initializers:
                    assert initializers[name].data_type == onnx.TensorProto.FLOAT, (precision, node.name, name)
        assert not any(n.op_type == "DequantizeLinear" and n.output[0] in {i for b in branch for i in b.input}
                       for n in graph.node)
    # and `edgekd run` streams the assembly's test images through the INT8 model, one JSON line per image
    folder = tmp_path / "frames"
    folder.mkdir()
    for sample in load_dataset(tray_root, "tray").test[:6]:
        (folder / sample.path.name.replace(".png", f"_{sample.defect}.png")).write_bytes(sample.path.read_bytes())
    summary = run_stream(RunRequest(model=str(result.artifact), source=str(folder), device="cpu", batch=4,
                                    jsonl=tmp_path / "events.jsonl", stats_every=0.0), echo=lambda text: None)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert summary["processed"] == 6 and len(lines) == 6
