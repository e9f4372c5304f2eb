"""RD's colour branch: blind to global casts and brightness offsets, alert to local colour shifts, fitted per
position (aligned objects), joining the image score (not the map) in torch and in the exported graph."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.models.colour_deviation import ColourDeviation, fit_colour


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """An 'aligned object': left half reddish, right half bluish, with noise; every image the same layout."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, 128, 128), np.float32)
    images[:, :, :, :64] = np.array([0.7, 0.4, 0.3], np.float32)[None, :, None, None]
    images[:, :, :, 64:] = np.array([0.3, 0.4, 0.7], np.float32)[None, :, None, None]
    images += rng.normal(0, 0.03, images.shape).astype(np.float32)
    return torch.from_numpy(images.clip(0, 1))


def test_global_casts_and_brightness_do_not_count_local_shifts_do():
    colour = ColourDeviation((128, 128), 1.0)  # unfitted: centre 0, spread 1
    images = 0.5 + 0.03 * torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    base = colour(images)
    cast, brighter = images.clone(), images + 0.1
    cast[:, 0] += 0.1  # a red cast over the whole frame (white balance, light)
    assert torch.allclose(colour(cast), base, atol=1e-5) and torch.allclose(colour(brighter), base, atol=1e-5)
    stained = images.clone()
    stained[:, 1, 20:44, 20:44] += 0.25  # a green stain, 24 px square
    change = colour(stained) - base
    row, column = divmod(int(change[0, 0].argmax()), change.shape[-1])
    assert change.max() > 0.15 and 2 <= row <= 10 and 2 <= column <= 10  # where the stain is (stride 4 grid)


def test_fitted_per_position_on_an_aligned_object():
    colour = ColourDeviation((128, 128), 0.5)

    class Model:  # what fit_colour needs of a detector: its colour branch and its map without it
        def feature_map(self, batch):
            return torch.rand(batch.shape[0], 1, 128, 128) + 1.0
    model = Model()
    model.colour = colour
    normal = _images(24)
    held_out = _images(8, seed=1)
    summary = fit_colour(model, lambda: iter([normal[:12], normal[12:]]), lambda: iter([held_out]))
    assert summary["colour_grid"] == [31, 31] and np.isfinite(summary["colour_scale"]) and summary["colour_scale"] > 0
    # normal images of the object stay within a few spreads everywhere, though its halves differ in colour
    assert float(colour(held_out).amax()) < 20.0
    # the left half painted in the right half's colour: normal colour, wrong place
    swapped = held_out.clone()
    swapped[:, :, 40:80, 8:40] = held_out[:, :, 40:80, 80:112]
    assert float(colour(swapped).amax()) > 10 * float(colour(held_out).amax())
    term = colour.fused_term(swapped, (128, 128))
    assert term.shape == (8, 1, 128, 128) and torch.allclose(term.amax(), colour(swapped).amax() * 0.5 / colour.scale,
                                                              rtol=0.05)


@pytest.mark.slow
def test_trained_branch_joins_the_score_in_torch_and_onnx(synth_root, tmp_path):
    from edgekd.config import load_config
    from edgekd.data.images import to_model_input
    from edgekd.data.layouts import load_dataset
    from edgekd.data.loading import load_images
    from edgekd.export.exporter import export_checkpoint
    from edgekd.runtime import open_runtime
    from edgekd.runtime.torch_backend import TorchRuntime
    from edgekd.train import train
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = load_config(configs / "rd_lite0.yaml", ["input_size=128", "train.batch_size=8", "train.epochs=1",
                                                     "model_options.colour_weight=0.25"])
    checkpoint = train(config, synth_root, "wood", tmp_path / "run").checkpoint
    onnx_model = export_checkpoint(checkpoint, "fp32", out_dir=tmp_path / "export").artifact
    torch_runtime = TorchRuntime.from_checkpoint(checkpoint, device="cpu")
    model = torch_runtime.model
    assert model.colour is not None and float(model.colour.spread.min()) < 1.0  # fitted by training
    images = load_images(load_dataset(synth_root, "wood").test[:2], model.input_size)
    images[:, 30:60, 30:60] = (images[:, 30:60, 30:60] * [1.0, 0.6, 0.6]).astype(np.uint8)  # a reddish stain
    batch = to_model_input(images)
    with_colour, scored_with = torch_runtime.run(batch)
    saved, model.colour = model.colour, None
    without_colour, scored_without = torch_runtime.run(batch)
    model.colour = saved
    # the branch joins the image score and leaves the map (and so the pixel metrics and masks) as it was
    np.testing.assert_array_equal(with_colour, without_colour)
    assert np.all(scored_with > scored_without + 1e-4)
    with open_runtime(onnx_model, None, "cpu") as onnx_runtime:
        exported_map, exported_score = onnx_runtime.run(batch)
    np.testing.assert_allclose(exported_score, scored_with, rtol=1e-3)
    np.testing.assert_allclose(exported_map, with_colour, rtol=1e-3, atol=1e-3 * float(np.abs(with_colour).max()))
