"""What cameras and codecs do to a picture, applied to training images so normal scores barely move on video.

A line camera's frames differ from the PNG files a detector was trained on: the codec quantises 8x8 blocks and
halves the colour resolution, the lens and motion soften edges, the sensor adds noise, the light drifts. A
student that never saw any of it reads it as anomalous. `camera_augment` draws each of these per image.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgekd.errors import EdgekdError

# camera_neutral: the same without the per-channel colour cast (light drifts in brightness only), for surfaces
# where a colour shift is the defect to catch.
AUGMENTATIONS = ("none", "camera", "camera_neutral")


def check_augment(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise EdgekdError(f"train.augment '{name}' is unknown: use one of {', '.join(AUGMENTATIONS)}")
    return name


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else image


def _chroma_420(image: np.ndarray) -> np.ndarray:
    """Colour at half resolution, as in 4:2:0 video."""
    ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    h, w = ycc.shape[:2]
    chroma = cv2.resize(cv2.resize(ycc[..., 1:], (w // 2, h // 2), interpolation=cv2.INTER_AREA), (w, h),
                        interpolation=cv2.INTER_LINEAR)
    ycc[..., 1:] = chroma
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def camera_augment(image: np.ndarray, rng: np.random.Generator, colour_cast: bool = True) -> np.ndarray:
    """One HxWx3 uint8 RGB image as a camera and a codec might deliver it; each effect is drawn with its own chance."""
    out = image
    if rng.random() < 0.5:  # light: gain, offset and a slight colour cast
        level = rng.uniform(0.9, 1.1)
        cast = rng.uniform(0.97, 1.03, 3)  # drawn either way: the other effects see the same random stream
        gain = level * (cast if colour_cast else 1.0)
        out = np.clip(out.astype(np.float32) * gain + rng.uniform(-8, 8), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:  # focus and motion
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.3:  # sensor noise
        out = np.clip(out + rng.normal(0, rng.uniform(1.0, 4.0), out.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # the codec: 4:2:0 colour, then block quantisation
        out = _jpeg(_chroma_420(out), int(rng.integers(35, 92)))
    return np.ascontiguousarray(out)


def augment_batch(images: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """(N,H,W,3) uint8 -> the same, augmented per image (unchanged for 'none')."""
    if name == "none":
        return images
    return np.stack([camera_augment(image, rng, colour_cast=name == "camera") for image in images])
