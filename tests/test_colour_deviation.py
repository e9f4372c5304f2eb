"""RD's colour branch: blind to global casts and brightness changes, alert to local colour shifts and stains, fitted
per position, joining the image score (not the map) in torch and in the exported graph. Two forms: "log" (every new
fit: a camera's gains cancel, brightness counts everywhere) and "linear" (branches fitted before it, which load and
score as they did; offsets cancel, brightness counts on fixed layouts only)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.models.colour_deviation import ColourDeviation, camera_shift, fit_colour, fit_notes


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """An 'aligned object': left half reddish, right half bluish, with noise; every image the same layout."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, 128, 128), np.float32)
    images[:, :, :, :64] = np.array([0.7, 0.4, 0.3], np.float32)[None, :, None, None]
    images[:, :, :, 64:] = np.array([0.3, 0.4, 0.7], np.float32)[None, :, None, None]
    images += rng.normal(0, 0.03, images.shape).astype(np.float32)
    return torch.from_numpy(images.clip(0, 1))


@pytest.mark.parametrize("brightness", [False, True])
def test_linear_form_global_casts_and_brightness_do_not_count_local_shifts_do(brightness):
    colour = ColourDeviation((128, 128), 1.0, form="linear")  # unfitted: centre 0, spread 1
    colour.channels[0, 2] = float(brightness)
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


def test_linear_residual_is_the_patch_average_of_each_pixels_chroma_and_brightness():
    """The linear form averages RGB over a patch before taking chroma and brightness (the same values, fewer
    operations): checked against the definition, per pixel first."""
    colour = ColourDeviation((128, 128), 1.0, form="linear")
    images = _images(2) * torch.linspace(0.6, 1.0, 128).view(1, 1, 1, -1)
    red, green, blue = images[:, 0], images[:, 1], images[:, 2]
    chroma = torch.stack([(red - green) / np.sqrt(2.0), (red + green - 2.0 * blue) / np.sqrt(6.0),
                          (red + green + blue) / np.sqrt(3.0)], 1)
    patches = torch.nn.functional.avg_pool2d(chroma, colour.kernel, colour.stride)
    expected = patches - patches.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(colour.residual(images), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["log", "linear"])
def test_fitted_per_position_on_an_aligned_object(form):
    colour = ColourDeviation((128, 128), 0.5, 1.0, form)

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
    term = colour.fused_term(colour(swapped), (128, 128))
    upsampled = torch.nn.functional.interpolate(colour(swapped) * 0.5 / colour.scale, size=(128, 128), mode="bilinear",
                                                align_corners=False)
    assert term.shape == (8, 1, 128, 128) and torch.allclose(term, upsampled, rtol=1e-5, atol=1e-6)
    term = colour.image_term(colour(swapped))
    assert term.shape == (8,) and torch.allclose(term, colour(swapped).flatten(1).amax(1) / colour.image_scale
                                                 + colour.offset)


@pytest.mark.parametrize("weight,image_weight", [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)])
def test_image_term_is_in_the_units_of_the_maps_score(weight, image_weight):
    """On the held-out images the branch's image maxima, put through image_term, have the mean and the spread of
    the score it competes with (the map's maxima with the pixel term added): a colour score 3 spreads above normal
    reads 3 spreads above in the score's units. image_weight scales the distance from that mean."""
    torch.manual_seed(0)
    held_out = _images(16, seed=1)
    feature_maxima = 5.0 + 0.5 * torch.randn(16)

    class Model:
        def __init__(self, colour):
            self.colour = colour

        def feature_map(self, batch):  # a map whose maxima are known
            start = self.seen
            self.seen += batch.shape[0]
            return feature_maxima[start:start + batch.shape[0]].view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    model = Model(ColourDeviation((128, 128), weight, image_weight))
    model.seen = 0
    fit_colour(model, lambda: iter([_images(24)]), lambda: iter([held_out[:8], held_out[8:]]))
    maps = feature_maxima.view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    scored = (maps + model.colour.fused_term(model.colour(held_out), (8, 8))).flatten(1).amax(1)
    if weight == 0:
        assert torch.equal(scored, feature_maxima)
    term = model.colour.image_term(model.colour(held_out))
    assert float(term.mean()) == pytest.approx(float(scored.mean()), rel=1e-5)
    assert float(term.std()) == pytest.approx(image_weight * float(scored.std()), rel=1e-4)


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
                                                     "model_options.colour_gate=0",  # kept whatever the camera does
                                                     "model_options.colour_form=log",
                                                     "model_options.colour_weight=0.25"])  # both ways of joining
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
    # the image score: the map's maximum with the pixel term, or the branch's own image term where that is larger
    x = torch.from_numpy(batch)
    with torch.no_grad():
        colour_map = model.colour(x)
        pixel = (torch.from_numpy(with_colour) + model.colour.fused_term(colour_map, with_colour.shape[-2:]))
        expected = np.maximum(pixel.flatten(1).amax(1).numpy(), model.colour.image_term(colour_map).numpy())
    np.testing.assert_allclose(scored_with, expected, rtol=1e-5)
    np.testing.assert_allclose(exported_score, scored_with, rtol=1e-3)
    np.testing.assert_allclose(exported_map, with_colour, rtol=1e-3, atol=1e-3 * float(np.abs(with_colour).max()))


def test_camera_shift_counts_in_robust_spreads_of_the_clean_maxima():
    clean = np.array([1.0, 1.1, 0.9, 1.0, 1.05, 0.95])
    spread = 1.4826 * np.median(np.abs(clean - np.median(clean)))
    assert camera_shift(clean, clean + 3 * spread) == pytest.approx(3.0)
    assert camera_shift(clean, clean) == 0.0
    assert np.isfinite(camera_shift(np.ones(5), np.ones(5) * 2))  # identical clean maxima: floored spread


class _Detector:  # what fit_colour needs of a detector: its colour branch and its map without it
    def __init__(self, colour):
        self.colour = colour

    def feature_map(self, batch):
        return torch.rand(batch.shape[0], 1, batch.shape[2], batch.shape[3]) + 1.0


def _patchy(n: int, seed: int, contrast: float) -> torch.Tensor:
    """Images of random colour patches (16 px) of the given chroma contrast around grey, plus fine noise."""
    rng = np.random.default_rng(seed)
    patches = 0.5 + contrast * rng.uniform(-1, 1, (n, 3, 8, 8)).astype(np.float32)
    images = np.repeat(np.repeat(patches, 16, axis=2), 16, axis=3)
    return torch.from_numpy((images + rng.normal(0, 0.01, images.shape)).clip(0, 1).astype(np.float32))


@pytest.mark.parametrize("surface,kept", [("patches", True), ("aligned object", False)])
def test_gate_keeps_the_branch_only_where_a_camera_leaves_it_steady(surface, kept):
    """Random strongly coloured patches: a camera's noise, codec and colour drift are small beside their normal
    spread (shift 0.04 spreads), the branch is kept. The two-coloured aligned object varies little from image to
    image, so the same camera moves its branch by 13 normal spreads: the branch goes out."""
    colour = ColourDeviation((128, 128), 0.5, form="linear")
    if surface == "patches":
        normal, held_out = _patchy(24, 0, 0.3), _patchy(8, 1, 0.3)
    else:
        normal, held_out = _images(24), _images(8, seed=1)
    summary = fit_colour(_Detector(colour), lambda: iter([normal]), lambda: iter([held_out]), gate=2.0)
    assert summary["colour_kept"] is kept and colour.is_kept is kept
    assert (summary["colour_camera_shift"] <= 2.0) is kept
    unchecked = ColourDeviation((128, 128), 0.5, form="linear")
    assert "colour_kept" not in fit_colour(_Detector(unchecked), lambda: iter([normal]),
                                           lambda: iter([held_out]))  # no gate: no check


def test_gate_decision_is_saved_and_older_branches_load_as_kept():
    colour = ColourDeviation((128, 128), 0.5)
    colour.kept.fill_(0.0)
    state = colour.state_dict()
    again = ColourDeviation((128, 128), 0.5)
    again.load_state_dict(state)
    assert not again.is_kept
    older = {k: v for k, v in state.items() if k != "kept"}  # fitted before the gate existed
    again.load_state_dict(older)
    assert again.is_kept


def test_a_gated_off_branch_leaves_the_score_to_the_features():
    from edgekd.config import load_config
    from edgekd.checkpoint import build_model
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = load_config(configs / "rd_lite0.yaml", ["input_size=128", "model_options.memory_size=0"])
    model = build_model(config, pretrained_teacher=False).eval()
    assert model.colour is not None and model.colour_gate == 3.0  # the default config has both
    images = _images(2)
    with torch.no_grad():
        features_only = model.feature_map(images)
        model.colour.kept.fill_(0.0)
        amap, score = model(images)[:2]
    assert torch.allclose(amap, features_only) and torch.allclose(score, features_only.flatten(1).amax(1))


def test_branches_fitted_before_the_image_term_score_as_they_did():
    """A checkpoint written before image_term (no `image_scale`, `offset`; no colour_image_weight in its config)
    loads with image_weight 0: the pixel term alone, as it was fitted and calibrated."""
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    configs = Path(__file__).resolve().parents[1] / "configs"
    config = load_config(configs / "rd_lite0.yaml", ["input_size=128", "model_options.memory_size=0",
                                                      "model_options.colour_weight=0.25"])  # that time's default
    del config["model_options"]["colour_image_weight"]
    model = build_model(config, pretrained_teacher=False).eval()
    assert model.colour.weight == 0.25 and model.colour.image_weight == 0.0
    state = {k: v for k, v in model.colour.state_dict().items() if k not in ("image_scale", "offset", "pixel_weight")}
    model.colour.load_state_dict(state)
    model.colour.offset.fill_(1e6)  # would win every maximum if the image term were used
    images = _images(2)
    with torch.no_grad():
        amap, score = model(images)[:2]
        pixel = (amap + model.colour.fused_term(model.colour(images), amap.shape[-2:])).flatten(1).amax(1)
    assert torch.allclose(score, pixel)


@pytest.mark.parametrize("option", ["colour_weight", "colour_image_weight", "colour_gate"])
def test_bad_colour_options_are_refused_naming_the_option(option):
    """A negative number stops at the config; text that is no number ('nan' from --set is text) stops at the model,
    by name."""
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    from edgekd.errors import EdgekdError
    configs = Path(__file__).resolve().parents[1] / "configs"
    with pytest.raises(EdgekdError, match=rf"model_options\.{option}=-1.* must be finite and >= 0"):
        load_config(configs / "rd_lite0.yaml", [f"model_options.{option}=-1"])
    for bad in ("nan", "strong"):
        config = load_config(configs / "rd_lite0.yaml", ["input_size=128", "model_options.memory_size=0",
                                                          f"model_options.{option}={bad}"])
        with pytest.raises(EdgekdError, match=rf"model_options\.{option} must be a finite number >= 0.*'{bad}'"):
            build_model(config, pretrained_teacher=False)


def _darkened(images: torch.Tensor) -> torch.Tensor:
    """A dark speck of dirt (12 px square): all three channels down by the same amount, so chroma stays."""
    specked = images.clone()
    specked[:, :, 50:62, 20:32] -= 0.2
    return specked.clamp(0, 1)


@pytest.mark.parametrize("surface,fixed", [("patches", False), ("aligned object", True)])
def test_linear_form_counts_brightness_on_a_fixed_layout_only(surface, fixed):
    """The aligned object's positions differ in normal colour by many spreads: a fixed layout, so a dark speck (no
    chroma change) is found by its brightness. Random patches put any colour anywhere: brightness stays out, and
    the same speck moves the branch no more than chroma noise does."""
    colour = ColourDeviation((128, 128), 0.5, form="linear")
    if surface == "patches":
        normal, held_out = _patchy(24, 0, 0.3), _patchy(8, 1, 0.3)
    else:
        normal, held_out = _images(24), _images(8, 1)
    summary = fit_colour(_Detector(colour), lambda: iter([normal]), lambda: iter([held_out]))
    assert summary["colour_brightness"] is fixed and colour.counts_brightness is fixed
    assert (summary["colour_layout"] > 1.0) is fixed
    assert (summary["colour_layout"] > 3.0) if fixed else (summary["colour_layout"] < 0.5)
    clean, specked = colour(held_out).amax(), colour(_darkened(held_out)).amax()
    if fixed:
        assert float(specked) > 3 * float(clean)
    else:
        assert float(specked) < 1.5 * float(clean)


def test_branches_fitted_before_brightness_score_as_they_did():
    """A branch saved with chroma statistics only (2 channels, no `channels`) loads with brightness off and gives
    the map it gave, even on a surface where a new fit would count brightness."""
    colour = ColourDeviation((128, 128), 0.5, form="linear")
    fit_colour(_Detector(colour), lambda: iter([_images(24)]), lambda: iter([_images(8, 1)]))
    assert colour.counts_brightness  # a new fit of this aligned object counts it
    colour.channels[0, 2] = 0.0
    images = _darkened(_images(4, 2))
    expected = colour(images)
    older = {k: (v[:, :2] if k in ("centre", "spread") else v) for k, v in colour.state_dict().items()
             if k not in ("channels", "form")}  # nor the form: it loads as linear, as it was fitted
    again = ColourDeviation((128, 128), 0.5)
    again.load_state_dict(older)
    assert not again.counts_brightness and again.form_name == "linear"
    torch.testing.assert_close(again(images), expected, rtol=0, atol=0)


def test_fit_notes_say_what_counts_and_why():
    notes = fit_notes({"colour_brightness": True, "colour_layout": 6.04, "colour_kept": False,
                       "colour_camera_shift": 2.5, "colour_gate": 2.0})
    assert notes[0].startswith("colour branch: the positions' normal colours lie 6.0 normal spreads apart, a fixed "
                               "layout: chroma and brightness count")
    assert "left out: a camera moves it 2.5" in notes[1]
    assert fit_notes({"colour_brightness": False, "colour_layout": 0.1}) == [
        "colour branch: the positions' normal colours lie 0.1 normal spreads apart, a texture: chroma only count "
        "(fixed above 1)"]


# -- the log form (issue 32) -----------------------------------------------------------------------------------------
def _gravel(split: str, n: int) -> torch.Tensor:
    """Crops of the real-texture benchmark's gravel (scikit-image's photo: grey, stochastic) at 256 px."""
    from edgekd.data.real_textures import render_sample
    images = np.stack([render_sample("gravel", split, i, 0, 256)[0] for i in range(n)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def test_log_form_cancels_a_cameras_gains_and_finds_local_stains():
    colour = ColourDeviation((128, 128), 1.0)  # unfitted: centre 0, spread 1; brightness counts
    assert colour.form_name == "log"
    images = 0.2 + 0.6 * torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    base = colour(images)
    cast = images * torch.tensor([1.08, 1.0, 0.9]).view(1, 3, 1, 1) * 0.85  # white balance and exposure together
    assert torch.allclose(colour(cast), base, rtol=0.03, atol=1e-3)  # exactly but for the log's floor
    for name, factor in (("darker", torch.full((1, 3, 1, 1), 0.85)), ("tinted", torch.tensor([1.0, 1.1, 0.9]))):
        stained = images.clone()
        stained[:, :, 20:44, 20:44] *= factor.view(1, 3, 1, 1)
        change = colour(stained) - base
        row, column = divmod(int(change[0, 0].argmax()), change.shape[-1])
        assert change.max() > 0.1 and 2 <= row <= 10 and 2 <= column <= 10, name


def test_log_residual_is_the_log_of_the_patch_average_against_the_frame():
    from edgekd.models.colour_deviation import LOG_FLOOR
    colour = ColourDeviation((128, 128), 1.0)
    images = _images(2) * torch.linspace(0.6, 1.0, 128).view(1, 1, 1, -1)
    logs = (torch.nn.functional.avg_pool2d(images, colour.kernel, colour.stride) + LOG_FLOOR).log()
    red, green, blue = logs[:, 0], logs[:, 1], logs[:, 2]
    opponent = torch.stack([(red - green) / np.sqrt(2.0), (red + green - 2.0 * blue) / np.sqrt(6.0),
                            (red + green + blue) / np.sqrt(3.0)], 1)
    torch.testing.assert_close(colour.residual(images), opponent - opponent.mean(dim=(2, 3), keepdim=True),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("form, kept", [("log", True), ("linear", False)])
def test_on_a_grey_texture_a_camera_moves_only_the_linear_form(form, kept):
    """The case of issue 32: on a grey surface a camera's colour drift turns every patch's brightness into chroma in
    the linear form (so the gate switched the branch off on grass, gravel and brick); in logs the drift is one
    constant the frame's mean removes, the branch stays on, and a brownish stain on that surface is found."""
    colour = ColourDeviation((256, 256), 0.5, form=form)
    normal, held_out = _gravel("train", 40), _gravel("test", 16)
    summary = fit_colour(_Detector(colour), lambda: iter([normal]), lambda: iter([held_out]), gate=2.0)
    assert summary["colour_kept"] is kept and summary["colour_form"] == form
    if form == "log":
        assert summary["colour_brightness"] and abs(summary["colour_camera_shift"]) < 2.0
        stained = held_out.clone()
        stained[:, :, 80:144, 80:144] *= torch.tensor([0.92, 0.86, 0.76]).view(1, 3, 1, 1)  # 8-24% darker, brownish
        assert bool((colour(stained).flatten(1).amax(1) > colour(held_out).flatten(1).amax(1).max()).all())


def test_the_default_config_chooses_the_form_and_notes_say_so():
    from edgekd.checkpoint import build_model
    from edgekd.config import load_config
    configs = Path(__file__).resolve().parents[1] / "configs"
    model = build_model(load_config(configs / "rd_lite0.yaml", ["input_size=128", "model_options.memory_size=0"]),
                        pretrained_teacher=False)
    assert model.colour.choose_form and model.colour.weight == 0.25
    notes = fit_notes({"colour_form": "log", "colour_brightness": True, "colour_layout": 0.1, "colour_kept": True,
                       "colour_camera_shift": 0.7, "colour_gate": 2.0})
    assert notes[0].startswith("colour branch: log colours against the frame's own, so a camera's gain and cast "
                               "cancel") and "(a texture), chroma and brightness count" in notes[0]
    assert "kept: a camera moves it 0.7" in notes[1]


@pytest.mark.parametrize("surface", ["texture", "object"])
def test_margin_puts_a_normal_images_colour_term_below_the_scores_mean_on_a_texture(surface):
    """colour_margin: on a texture in the log form (brightness counts, and its normal tail is long) the image term of
    a held-out image of average colour sits `margin` score spreads below the score's normal mean, so colour wins the
    maximum only where it is out of its normal range; on a fixed layout it is not applied."""
    images = {"texture": lambda n, seed: _patchy(n, seed, 0.1), "object": _images}[surface]
    terms = {}
    for margin in (0.0, 2.0):
        torch.manual_seed(0)
        colour = ColourDeviation((128, 128), 0.0, 0.5, margin=margin)
        summary = fit_colour(_Detector(colour), lambda: iter([images(24, 0)]), lambda: iter([images(8, 1)]))
        terms[margin] = float(colour.offset)
    assert summary["colour_margin"] == (2.0 if surface == "texture" else 0.0)
    torch.manual_seed(0)
    detector = _Detector(ColourDeviation((128, 128), 0.0, 0.5))
    spread = float(torch.cat([detector.feature_map(images(8, 1)).flatten(1).amax(1)]).std())
    assert terms[0.0] - terms[2.0] == pytest.approx(summary["colour_margin"] * 0.5 * spread, rel=1e-2, abs=1e-5)


def _cork(split: str, n: int) -> torch.Tensor:
    """Crops of the real-texture benchmark's cork (a coloured, fine texture) at 256 px."""
    from edgekd.data.real_textures import render_sample
    images = np.stack([render_sample("cork", split, i, 0, 256)[0] for i in range(n)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("surface, form, reason", [("gravel", "log", "grey surface"),
                                                   ("cork", "linear", "steady texture"),
                                                   ("object", "log", "fixed layout")])
def test_auto_form_is_chosen_per_surface_and_the_notes_say_why(surface, form, reason):
    """colour_form auto: linear chroma with its pixel term on a coloured texture a camera leaves steady (cork), the log
    form without a pixel term on a grey texture (no chroma of its own beyond a codec's noise) and on a fixed layout."""
    colour = ColourDeviation((256, 256) if surface != "object" else (128, 128), 0.25, 1.0, form="auto")
    normal, held_out = {"gravel": (lambda: _gravel("train", 40), lambda: _gravel("test", 16)),
                        "cork": (lambda: _cork("train", 40), lambda: _cork("test", 16)),
                        "object": (lambda: _images(40), lambda: _images(16, 1))}[surface]
    normal, held_out = normal(), held_out()
    summary = fit_colour(_Detector(colour), lambda: iter([normal]), lambda: iter([held_out]), gate=3.0)
    assert (summary["colour_form"], summary["colour_choice"], colour.form_name) == (form, reason, form)
    assert colour.weight == (0.25 if form == "linear" else 0.0) and summary["colour_weight"] == colour.weight
    note = fit_notes(summary)[0]
    assert note.startswith("colour branch form chosen per surface (colour_form auto): ")
    assert {"grey surface": "a grey surface", "steady texture": "the linear form with its pixel",
            "fixed layout": "a fixed layout"}[reason] in note


def test_a_checkpoint_written_before_the_pixel_weight_buffer_keeps_its_configs_weight():
    written = ColourDeviation((128, 128), 0.25, 1.0, form="linear")
    written.pixel_weight.fill_(0.5)  # what no file before the buffer could say: the loader must not invent it
    state = {k: v for k, v in written.state_dict().items() if k != "pixel_weight"}
    loaded = ColourDeviation((128, 128), 0.25, 1.0, form="linear")
    loaded.load_state_dict(state)
    assert loaded.weight == 0.25


def _through_mpeg4(images: torch.Tensor, folder: Path) -> torch.Tensor:
    """The images as OpenCV's MPEG-4 writer and reader deliver them (a line camera's codec)."""
    import cv2
    frames = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    path = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(path)), []
    while (read := capture.read())[0]:
        decoded.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 255.0


def test_a_video_codec_does_not_move_the_log_form_on_a_grey_texture(tmp_path):
    """A grey PNG texture has no chroma at all (R = G = B), a video codec adds some to every patch (0.3-0.6% for
    OpenCV's MPEG-4): without a floor on the normal spread that moved gravel's colour maxima 18 spreads from PNG to
    video and the training threshold flagged every frame. With SPREAD_FLOOR it stays within the gate."""
    from edgekd.models.colour_deviation import SPREAD_FLOOR
    colour = ColourDeviation((256, 256), 0.0, 1.0, form="log")
    normal, held_out = _gravel("train", 40), _gravel("test", 16)
    fit_colour(_Detector(colour), lambda: iter([normal]), lambda: iter([held_out]))
    assert float(colour.spread[:, :2].min()) == pytest.approx(SPREAD_FLOOR)  # grey: the floor is the spread
    png = colour(held_out).flatten(1).amax(1).numpy()
    video = colour(_through_mpeg4(held_out, tmp_path)).flatten(1).amax(1).numpy()
    assert abs(camera_shift(png, video)) < 2.0
