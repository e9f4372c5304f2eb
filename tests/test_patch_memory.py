"""The patch memory of RD's default config: coreset, distances against brute force, fitting, export and engines."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekd.config import load_config
from edgekd.errors import EdgekdError
from edgekd.models.patch_memory import PatchMemory, branch_scales, greedy_coreset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_greedy_coreset_takes_the_far_points_first():
    rng = np.random.default_rng(0)
    cluster = torch.from_numpy(rng.normal(0, 0.01, (200, 4))).float()
    outliers = torch.tensor([[5.0, 0, 0, 0], [0, -5.0, 0, 0], [0, 0, 5.0, 0]])
    points = torch.cat([cluster, outliers])
    chosen = set(greedy_coreset(points, 4).tolist())
    assert {200, 201, 202} <= chosen
    assert torch.equal(greedy_coreset(points, 500), torch.arange(len(points)))  # fewer rows than slots: all


def test_memory_distance_is_the_nearest_neighbour_distance_of_the_pooled_embedding():
    torch.manual_seed(0)
    memory = PatchMemory([8, 6, 5], size=16)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 6, 8, 8), torch.randn(2, 5, 4, 4)]
    bank_source = memory.embed([torch.randn(3, 8, 16, 16), torch.randn(3, 6, 8, 8), torch.randn(3, 5, 4, 4)])
    memory.fill(bank_source.permute(0, 2, 3, 1).reshape(-1, 11))
    got = memory(feats)
    q = memory.embed(feats).permute(0, 2, 3, 1).reshape(-1, 11).double()
    brute = torch.cdist(q, memory.bank.double()).min(dim=1).values.view(2, 8, 8)
    assert got.shape == (2, 1, 8, 8)
    assert torch.allclose(got[:, 0].double(), brute, atol=1e-4)
    # A patch that is in the memory is at distance ~0.
    assert float(memory([f[:1] for f in feats]).min()) >= 0


def test_branches_are_balanced_by_the_spread_of_their_normal_maxima():
    # The distillation map's normal maxima scatter by 25% of their level, the memory's by 2%: each branch is divided
    # by its own scatter, so both bring the same normal noise into the fused map and the steadier one counts more.
    distill = torch.tensor([0.5, 0.7, 0.9, 0.6, 0.8])
    memory = torch.tensor([20.0, 20.4, 20.8, 20.2, 20.6])
    spread = branch_scales(distill, memory, "spread")
    assert torch.allclose(spread, torch.stack([distill.std(), memory.std()]))
    assert float(memory.mean() / spread[1]) > 3 * float(distill.mean() / spread[0])
    maximum = branch_scales(distill, memory, "maximum")
    assert torch.allclose(maximum, torch.stack([distill.mean(), memory.mean()]))
    # Held-out images that agree by chance do not make a branch's divisor vanish: floored at 1% of the mean.
    flat = branch_scales(distill, torch.full((5,), 20.0), "spread")
    assert float(flat[1]) == pytest.approx(0.2)
    from edgekd.checkpoint import build_model
    with pytest.raises(EdgekdError, match="memory_balance must be one of spread, maximum"):
        build_model(load_config(CONFIGS / "rd_lite0.yaml", ["model_options.memory_balance=median"]),
                    pretrained_teacher=False)


@pytest.fixture(scope="module")
def memory_checkpoint(synth_root, tmp_path_factory):
    from edgekd.train import train
    cfg = load_config(CONFIGS / "rd_lite0.yaml", ["input_size=128", "train.batch_size=8", "train.epochs=2",
                                                  "model_options.memory_size=256", "train.augment=camera"])
    return train(cfg, synth_root, "wood", tmp_path_factory.mktemp("memory") / "wood")


@pytest.mark.slow
def test_memory_is_filled_and_scaled_by_training_and_finds_defects(memory_checkpoint, synth_root, tmp_path):
    from edgekd.evaluate import evaluate
    from edgekd.runtime.torch_backend import TorchRuntime
    runtime = TorchRuntime.from_checkpoint(memory_checkpoint.checkpoint, device="cpu")
    memory = runtime.model.patch_memory
    assert bool(memory.filled) and memory.bank.abs().sum() > 0
    assert torch.all(memory.branch_scales > 0) and not torch.equal(memory.branch_scales, torch.ones(2))
    assert runtime.model.memory_balance == "spread" and runtime.payload["training"]["normal_fit"]["memory_balance"] == "spread"
    fit = runtime.payload["training"]["normal_fit"]
    assert fit["memory_items"] == 256 and fit["memory_patches_seen"] == 2 * 36 * 16 * 16  # each image twice: augmented
    row = evaluate(runtime, synth_root, "wood", tmp_path, "wood").row
    assert row["image_auroc"] > 0.8 and row["pixel_auroc"] > 0.85, row


@pytest.mark.slow
def test_memory_exports_with_parity_stays_fp32_and_builds_an_engine(memory_checkpoint, tmp_path, builds_engine):
    from edgekd.export.exporter import export_checkpoint
    fp32 = export_checkpoint(memory_checkpoint.checkpoint, "fp32", out_dir=tmp_path)
    assert fp32.parity.passed, fp32.parity.summary()
    fp16 = export_checkpoint(memory_checkpoint.checkpoint, "fp16", out_dir=tmp_path, force=True)
    graph = onnx.load(str(fp16.artifact))
    memory_products = [n for n in graph.graph.node if "patch_memory" in n.name and n.op_type == "MatMul"]
    assert len(memory_products) == 1, "the memory's distance is one MatMul in the graph"
    initializers = {i.name: i for i in graph.graph.initializer}
    weights = [initializers[n.input[1]] for n in memory_products if n.input[1] in initializers]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT for w in weights)
    minimum = [n for n in graph.graph.node if "patch_memory" in n.name and n.op_type == "ReduceMin"]
    assert [a.ints for n in minimum for a in n.attribute if a.name == "axes"] in ([[-1]], [[2]])  # contiguous axis
    int8 = export_checkpoint(memory_checkpoint.checkpoint, "int8", out_dir=tmp_path, calib_images=16, force=True)
    # the TensorRT form (the default target) keeps it float: INT8 there is not measured; onnxruntime's is
    # (tests/test_export.py)
    graph = onnx.load(str(int8.artifact))
    producers = {o: n for n in graph.graph.node for o in n.output}
    memory_products = [n for n in graph.graph.node if n.name.startswith("/patch_memory/") and n.op_type == "MatMul"]
    assert memory_products and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                                   for n in memory_products for i in n.input), "the memory must stay float for TensorRT"
    builds_engine(fp32.artifact)
