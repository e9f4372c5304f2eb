"""A colour branch beside the feature maps, for the image score: where a patch's colour departs from the image's own
mean colour by more than that position varies on normal images.

Why: the camera augmentation teaches the student and the patch memory that a colour cast is normal (video and
changing light do cast), so a stain or a colour shift that keeps the texture scores like a normal image (cork: 5 of
8 colour-shift defects below the largest normal score). Casts are global, defects local: the branch measures each
16x16-pixel patch's chroma (opponent colours: an equal change of all three channels does not count) against the
image's mean chroma, then against that position's normal centre and spread from the training images (an aligned
object such as a PCB has different colours in different places; a texture has the same everywhere, and then the
per-position statistics simply agree). A global cast moves the image mean with the patches and changes nothing.

On a fixed layout the branch also counts brightness (the patch's mean of R, G and B against the image's, per
position): a dark speck of dirt on a PCB barely moves chroma or the features, but it is darker than that place of
the board always is. A texture has no fixed places, its brightness varies patch to patch at random, and counting it
there only adds normal noise (cork lost up to 2 of 20 defect frames on video with it). Fitting decides from normal
images: the layout is fixed when the positions' normal centres lie further apart than one normal spread (0.05-0.12
on the eight textures of the real-texture benchmark, 6 on its PCB). An equal offset of all three channels still changes
nothing; a gain scales the patches' brightness differences, which the camera-augmented training views cover.

Where a camera moves the branch itself, it is switched off for that surface: after fitting, the held-out normal
images go through the camera augmentation (codec, blur, noise, light and colour drift) and if that moves the median
of the branch's image maxima by more than `gate` of their normal spreads, the branch stays out of the score (on
grass, gravel and brick it moved 4-12 spreads and cost defects on video; on the other six surfaces under 1.5).

How it joins the image score (never the map: masks and pixel figures are the feature map's), two ways:
- `weight`: added to the map pixel by pixel before the maximum is taken, so colour that rises where the features
  rise counts with them (fibre_paper scratches with a faint tint: 90 -> 95 image AUROC);
- `image_weight`: the branch's own image maximum, put in the units of that score (the same mean and spread on the
  held-out normal images), and the image score is the larger of the two: a colour defect far out of its normal range
  counts even where the features barely move (a PCB stain that darkens and tints the board: 77 -> 98).

The form of the measure (`form`): "log" (every branch fitted since issue 32) takes the patch's R, G and B averages
in the log domain before the opponent colours and subtracts the frame's own mean. A camera's gain and colour cast
multiply the three channels, so in logs they add a constant to every patch, which the frame's mean removes exactly;
the linear form ("linear", checkpoints fitted before) removed an offset but not a gain: on a grey texture a cast
turns each patch's brightness into chroma (grey stays grey only if all channels scale alike), which is why a camera
moved it 4-18 spreads there and the gate switched it off on grass, gravel and brick. In the log form the camera
moves it 0.1-1.4 spreads on the seven surfaces measured (benchmarks/colour_forms.py), brightness counts
everywhere (a 5-20% darkening is a log shift the frame does not share), and the branch stays on: a stain or a cast on
a grey surface is its clearest case.

Which form (`colour_form: auto`, the default since issue 32's second pass): the surface decides when fitting. On a
coloured texture that a camera leaves steady in linear colours (cork and fibre_paper: 0.3-1.5 spreads) the linear form
keeps its pixel term and sees faded and tinted patches that the logs compress; on a grey surface (grass, gravel,
brick: no chroma of its own beyond a codec's noise), where a camera moves linear chroma, and on a fixed layout the log
form is used, joining the image score only. `margin` keeps the
image term of a normal-looking image 2 score spreads below the score's mean, so colour decides an image only when it
is further out than normal images go (without it the branch's normal tail cost gravel's cracks and scratches 1.6
points of image AUROC).

Measured on the real-texture benchmark: benchmarks/results/real-texture-accuracy/real_textures_tried.md, items 13-17.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.calibration import robust_spread
from edgekd.data.augment import augment_batch
from edgekd.models.patch_memory import branch_scales

PATCHES_ACROSS = 16  # the patch is 1/16 of the input's shorter side: 16 px at 256
CAMERA_VIEWS = 3  # camera-augmented copies of each held-out image for the gate
FIXED_LAYOUT = 1.0  # positions' normal centres this many normal spreads apart: a fixed layout, brightness counts
CHROMA_ONLY = (1.0, 1.0, 0.0)  # weights of (red-green, yellow-blue, brightness): what counts on a texture
FORMS = ("linear", "log")  # the measure's form: linear RGB (fitted before issue 32) or frame-relative logs
CHOICES = (*FORMS, "auto")  # what a config may ask for: "auto" lets fitting choose per surface (fit_colour)
LOG_FLOOR = 0.02  # added before the log: a black patch's noise must not become a large log difference
# The least normal spread of a channel (relative; the linear form's is this times the surface's mean level): what a
# real camera and video codec add to a 16-pixel patch even where the surface does not vary. A grey PNG texture has
# none (R = G = B), so without a floor a 0.5% tint is many spreads out, and OpenCV's MPEG-4 moved the branch's maxima
# 16-20 spreads on gravel, grass and the package. The codec's patch chroma noise there has a standard deviation of
# 0.3-0.6% (99th percentile 0.9%): the floor is that noise's spread, 0.5% (the shift falls to 1.1-1.8 spreads; at 1%
# to 0.1-0.5, at the cost of more faint stains).
SPREAD_FLOOR = 0.005
GREY_SPREADS = 1.5  # a surface whose typical chroma spread is within this many floors of it is grey (fit_colour)


class ColourDeviation(nn.Module):
    def __init__(self, input_size: tuple[int, int], weight: float, image_weight: float = 0.0, form: str = "log",
                 margin: float = 0.0):
        super().__init__()
        self.margin = float(margin)  # used when fitting: see fit_colour
        self.choose_form = form == "auto"  # fitting tries the linear form first (fit_colour)
        form = "linear" if self.choose_form else form
        self.kernel = max(2, round(min(input_size) / PATCHES_ACROSS))
        self.stride = max(1, self.kernel // 2)
        grid = tuple((n - self.kernel) // self.stride + 1 for n in input_size)
        self.image_weight = float(image_weight)
        self.register_buffer("centre", torch.zeros(1, 3, *grid))
        self.register_buffer("spread", torch.ones(1, 3, *grid))
        # Which of (red-green, yellow-blue, brightness) count: all three in logs; the linear form's fit decides.
        counted = (1.0, 1.0, 1.0) if form == "log" else CHROMA_ONLY
        self.register_buffer("channels", torch.tensor(counted).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1))  # its normal maxima's spread against the feature map's
        # Its image maxima's spread against the map's score's (with the pixel term), and the offset that puts their
        # normal means together: what image_term needs.
        self.register_buffer("image_scale", torch.ones(1))
        self.register_buffer("offset", torch.zeros(1))
        self.register_buffer("kept", torch.ones(1))  # 0 when the gate found the branch unsteady under a camera
        self.register_buffer("form", torch.full((1,), float(FORMS.index(form))))  # an index into FORMS
        # The pixel term's weight (fused_term): the config's, unless fitting chose the log form (it never adds to the
        # map there: on a texture its brightness lit normal pixels beside gravel's cracks, item 17).
        self.register_buffer("pixel_weight", torch.full((1,), float(weight)))

    @property
    def weight(self) -> float:
        return float(self.pixel_weight.item())

    @property
    def is_kept(self) -> bool:
        return bool(self.kept.item() > 0)

    @property
    def form_name(self) -> str:
        return FORMS[int(self.form.item())]

    @property
    def counts_brightness(self) -> bool:
        return bool(self.channels[0, 2].item() > 0)

    def set_form(self, form: str) -> None:
        self.form.fill_(float(FORMS.index(form)))
        self.channels.copy_(torch.tensor((1.0, 1.0, 1.0) if form == "log" else CHROMA_ONLY).view(1, 3, 1, 1))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "pixel_weight", self.pixel_weight.clone())  # before issue 32: the config's
        state_dict.setdefault(prefix + "kept", torch.ones(1))  # fitted before the gate existed: always kept
        state_dict.setdefault(prefix + "form", torch.zeros(1))  # fitted before the log form: linear, as calibrated
        for name, value in (("image_scale", 1.0), ("offset", 0.0)):  # before image_term: built with image_weight 0
            state_dict.setdefault(prefix + name, torch.full((1,), value))
        # Fitted before brightness: chroma statistics only, and they score on as they were calibrated.
        state_dict.setdefault(prefix + "channels", torch.tensor(CHROMA_ONLY).view(1, 3, 1, 1))
        for name, filler in (("centre", 0.0), ("spread", 1.0)):
            value = state_dict.get(prefix + name)
            if value is not None and value.shape[1] == 2:
                state_dict[prefix + name] = torch.cat([value, torch.full_like(value[:, :1], filler)], 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def residual(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB in [0, 1] -> (B,3,h,w): each patch's chroma (2 opponent colours) and brightness minus
        the image's mean."""
        # Both forms start from the patch average: the opponent colours are linear in RGB, and the log form takes the
        # logs of the averages (a patch's colour, not its texture's).
        patches = F.avg_pool2d(images.float(), self.kernel, self.stride)
        if self.form_name == "log":
            patches = (patches.clamp(min=0.0) + LOG_FLOOR).log()
        red, green, blue = patches[:, 0:1], patches[:, 1:2], patches[:, 2:3]
        channels = torch.cat([(red - green) * (1.0 / math.sqrt(2.0)),
                              (red + green - 2.0 * blue) * (1.0 / math.sqrt(6.0)),
                              (red + green + blue) * (1.0 / math.sqrt(3.0))], 1)
        return channels - channels.mean(dim=(2, 3), keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,h,w): the patch's distance from normal, in normal spreads."""
        deviation = (self.residual(images) - self.centre) / self.spread * self.channels
        return deviation.pow(2).sum(1, keepdim=True).sqrt()

    # Both terms take the branch's map (forward), so a detector computes it once for both.
    def fused_term(self, colour_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """What the branch adds to the detector's map of `size`: weight x map / scale, upsampled (the factor first,
        on the branch's grid: the upsample is linear)."""
        return F.interpolate(colour_map * (self.weight / self.scale), size=size, mode="bilinear", align_corners=False)

    def image_term(self, colour_map: torch.Tensor) -> torch.Tensor:
        """(B,) the branch's image maximum in the units of the map's score: mean_s + image_weight x (max - mean_c)
        x spread_s / spread_c, from the held-out normal images (fit_colour)."""
        return colour_map.flatten(1).amax(1) * (self.image_weight / self.image_scale) + self.offset


def camera_shift(clean_maxima: np.ndarray, camera_maxima: np.ndarray) -> float:
    """How far a camera moves the branch: the median of its image maxima on camera views minus that on the clean
    images, in robust spreads (1.4826 MAD) of the clean ones."""
    spread = robust_spread(clean_maxima, relative_floor=0.01)
    return (float(np.median(camera_maxima)) - float(np.median(clean_maxima))) / spread


def layout_contrast(centre: torch.Tensor, spread: torch.Tensor) -> float:
    """How far apart the positions' normal centres lie, in typical normal spreads: the standard deviation of the
    centres over the grid against the median spread, averaged over the channels. About 0 on a texture (every
    position alike), several on a fixed layout."""
    apart = centre.flatten(2).std(2) / spread.flatten(2).median(2).values.clamp(min=1e-6)
    return float(apart.mean())


def _spread_ratio(colour_maxima: torch.Tensor, other_maxima: torch.Tensor) -> torch.Tensor:
    """The colour maxima's spread over the other's, as the patch memory balances its branches."""
    spreads = branch_scales(other_maxima, colour_maxima, "spread")
    return spreads[1] / spreads[0]


def _camera_views(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B,3,H,W) model input in [0, 1] -> the same images as the camera augmentation delivers them."""
    images = (batch.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    views = augment_batch(images, "camera", rng)
    return torch.from_numpy(views).permute(0, 3, 1, 2).float().div(255.0).to(batch.device)


@torch.no_grad()
def fit_colour(model, fit_batches, held_out_batches, gate: float | None = None) -> dict:
    """Fit the branch (_fit_form). With form "auto" the surface chooses: the linear form where the images are a
    coloured texture and a camera leaves the linear form steady (`gate`), else (a grey surface, a fixed layout, a
    camera that moves linear chroma) the log form without the pixel term.

    Why not one form everywhere (real_textures_tried.md, item 17): on a grey texture a camera moves the linear form
    4-18 spreads and only the log form can stay on (gravel 88 -> 91-93, grass 81 -> 88); on a coloured texture that a
    camera leaves steady, the linear form with its pixel term sees faded and tinted patches the logs compress (cork
    94.4 against 92.2, fibre_paper 97.7 against 97.0); on a fixed layout the log form's brightness against the frame
    held better (package 95.7 against 94.7, PCB 96.5 against 96.7)."""
    colour = model.colour
    if not colour.choose_form:
        return _fit_form(model, fit_batches, held_out_batches, gate)
    colour.set_form("linear")
    linear = _fit_form(model, fit_batches, held_out_batches, gate)
    # A grey surface has no chroma of its own: its linear chroma spreads sit at the floor, and what a video codec adds
    # there (brick: 71 spreads through MPEG-4, which the augmentation's JPEG does not show) would decide the score.
    grey = float(colour.spread[:, :2].median()) <= GREY_SPREADS * linear["colour_floor"]
    if linear["colour_layout"] <= FIXED_LAYOUT and linear.get("colour_kept", False) and not grey:
        return {**linear, "colour_choice": "steady texture"}
    colour.set_form("log")
    colour.pixel_weight.zero_()
    summary = _fit_form(model, fit_batches, held_out_batches, gate)
    reason = "fixed layout" if linear["colour_layout"] > FIXED_LAYOUT else "grey surface" if grey else \
        "camera moves linear" if "colour_kept" in linear else "no camera check"
    return {**summary, "colour_choice": reason, "colour_linear_camera_shift": linear.get("colour_camera_shift")}


def _fit_form(model, fit_batches, held_out_batches, gate: float | None) -> dict:
    """Centre and spread per position from the training images (median and 1.4826 MAD), and from them whether the
    layout is fixed (then brightness counts, FIXED_LAYOUT). On the held-out images:
    the scale that puts the branch's map beside `model.feature_map(images)` (the detector's map without colour) the
    way the patch memory is balanced (patch_memory.branch_scales, "spread"); then the image scale and offset that
    give its image maxima the mean and spread of the map's score with that pixel term. Then, with a `gate`, the
    camera check that may switch the branch off (`kept`)."""
    colour = model.colour
    residuals, levels = [], []
    for batch in fit_batches():
        residuals.append(colour.residual(batch).cpu())
        levels.append(batch.float().mean().cpu())
    residuals = torch.cat(residuals)
    centre = residuals.median(0, keepdim=True).values
    # The codec's noise is relative (SPREAD_FLOOR): in linear units it scales with the surface's mean level.
    floor = SPREAD_FLOOR if colour.form_name == "log" else SPREAD_FLOOR * float(torch.stack(levels).mean())
    floor = max(floor, 1e-3)
    spread = (1.4826 * (residuals - centre).abs().median(0, keepdim=True).values).clamp(min=floor)
    colour.centre.copy_(centre.to(colour.centre.device))
    colour.spread.copy_(spread.to(colour.spread.device))
    layout = layout_contrast(centre, spread)
    # In logs a camera's gain is one constant for the whole frame: brightness counts on textures too.
    colour.channels[0, 2] = 1.0 if layout > FIXED_LAYOUT or colour.form_name == "log" else 0.0
    held_out = [(colour(batch), model.feature_map(batch).float()) for batch in held_out_batches()]
    colour_maxima = torch.cat([colour_map.flatten(1).amax(1).cpu() for colour_map, _ in held_out])
    feature_maxima = torch.cat([amap.flatten(1).amax(1).cpu() for _, amap in held_out])
    colour.scale.fill_(float(_spread_ratio(colour_maxima, feature_maxima)))
    scored_maxima = torch.cat([(amap + colour.fused_term(colour_map, amap.shape[-2:])).flatten(1).amax(1).cpu()
                               for colour_map, amap in held_out])
    colour.image_scale.fill_(float(_spread_ratio(colour_maxima, scored_maxima)))
    # The image term of a held-out image of average colour sits `margin` of the score's spreads below the score's
    # mean: colour then wins the maximum where it is out of its normal range, not by the luck of normal images. Only
    # where brightness counts on a texture (the log form): its patch-to-patch brightness is random there and gives the
    # branch a long normal tail; chroma on a texture and every channel on a fixed layout are tight (the margin cost
    # the PCB 3.0 points and cork 0.7, and gained gravel 2.7 and brick 1.4: real_textures_tried.md, item 18).
    margin = colour.margin if colour.form_name == "log" and layout <= FIXED_LAYOUT else 0.0
    spread = float(scored_maxima.std()) if len(scored_maxima) > 1 else 0.0
    colour.offset.fill_(float(scored_maxima.mean() - colour_maxima.mean() * colour.image_weight / colour.image_scale)
                        - margin * colour.image_weight * spread)
    summary = {"colour_weight": colour.weight, "colour_image_weight": colour.image_weight,
               "colour_scale": float(colour.scale), "colour_image_scale": float(colour.image_scale),
               "colour_offset": float(colour.offset), "colour_margin": margin, "colour_floor": floor,
               "colour_grid": list(centre.shape[-2:]),
               "colour_layout": layout, "colour_brightness": colour.counts_brightness, "colour_form": colour.form_name}
    if gate is None:
        return summary
    rng = np.random.default_rng([0, 2**30])  # the same camera views on every run
    camera_maxima = [colour(_camera_views(batch, rng)).flatten(1).amax(1).cpu()
                     for _ in range(CAMERA_VIEWS) for batch in held_out_batches()]
    shift = camera_shift(colour_maxima.numpy(), torch.cat(camera_maxima).numpy())
    colour.kept.fill_(1.0 if shift <= gate else 0.0)
    return {**summary, "colour_camera_shift": shift, "colour_gate": gate, "colour_kept": colour.is_kept}


def _choice_note(summary: dict) -> list[str]:
    """Why colour_form "auto" chose the form it did."""
    reason = summary.get("colour_choice")
    if reason is None:
        return []
    why = {"steady texture": f"a texture that a camera moves only {summary.get('colour_camera_shift', 0.0):.1f} normal "
                             "spreads in linear colours: the linear form with its pixel term (it sees faded and tinted "
                             "patches on coloured surfaces that logs compress)",
           "fixed layout": f"a fixed layout (positions {summary['colour_layout']:.1f} normal spreads apart): the log "
                           "form, brightness against the frame's own",
           "grey surface": "a grey surface (no chroma of its own beyond a codec's noise): the log form, whose "
                           "brightness and casts against the frame's own a codec does not move",
           "camera moves linear": f"a camera moves the linear form {summary.get('colour_linear_camera_shift') or 0.0:.1f}"
                                  f" normal spreads here (gate {summary.get('colour_gate', 0.0):g}): the log form, "
                                  "which a camera's gain and cast do not move",
           "no camera check": "no camera check (colour_gate 0): the log form, which a camera's gain and cast do not move"}
    return [f"colour branch form chosen per surface (colour_form auto): {why[reason]}"]


def fit_notes(summary: dict) -> list[str]:
    """What fit_colour decided, in words for the person training."""
    return _choice_note(summary) + _form_notes(summary)


def _form_notes(summary: dict) -> list[str]:
    if summary.get("colour_form", "linear") == "log":
        kind = "a fixed layout" if summary["colour_layout"] > FIXED_LAYOUT else "a texture"
        notes = [f"colour branch: log colours against the frame's own, so a camera's gain and cast cancel; the "
                 f"positions' normal colours lie {summary['colour_layout']:.1f} normal spreads apart ({kind}), chroma "
                 "and brightness count"]
    else:
        layout = "a fixed layout: chroma and brightness" if summary["colour_brightness"] else "a texture: chroma only"
        notes = [f"colour branch: the positions' normal colours lie {summary['colour_layout']:.1f} normal spreads "
                 f"apart, {layout} count (fixed above {FIXED_LAYOUT:g})"]
    if "colour_kept" in summary:
        verdict = "kept" if summary["colour_kept"] else "left out"
        notes.append(f"colour branch {verdict}: a camera moves it {summary['colour_camera_shift']:.1f} normal spreads "
                     f"on these images (model_options.colour_gate {summary['colour_gate']:g})")
    return notes
