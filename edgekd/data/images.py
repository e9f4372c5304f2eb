"""Reading images and masks from disk and turning them into model input. The one place that decodes files."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.errors import EdgekdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_decoder():
    """libpng and libjpeg print their own complaints ("libpng error: ...") straight to file descriptor 2; edgekd
    says what is wrong with the file in one line instead, so their lines are dropped while a file decodes."""
    with _STDERR_LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def decode(path: Path, flags: int) -> np.ndarray | None:
    """The decoded image, or None for anything that is not one: a corrupt file, a header claiming more pixels than
    OpenCV allows, a folder or a link loop under an image's name."""
    with quiet_decoder():
        try:
            return cv2.imread(str(path), flags)
        except (cv2.error, OSError):
            return None


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB; greyscale and 16-bit files are converted; unreadable files are a clear error."""
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"image {path} does not exist: check the path")
    image = decode(path, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise EdgekdError(f"image {path} cannot be decoded (corrupt or not an image): replace or remove the file")
    if image.dtype == np.uint16:
        image = (image / 257).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(paths: list[Path] | tuple[Path, ...], shape: tuple[int, int], image_path: Path) -> np.ndarray:
    """Union of one or more mask files (MVTec LOCO has several per image) as HxW bool."""
    mask = np.zeros(shape, dtype=bool)
    for path in paths:
        layer = decode(path, cv2.IMREAD_GRAYSCALE)
        if layer is None:
            raise EdgekdError(f"mask {path} cannot be decoded (missing or corrupt): replace the file")
        if layer.shape != tuple(shape):
            raise EdgekdError(f"mask {path} is {layer.shape[1]}x{layer.shape[0]} but image {image_path} is "
                              f"{shape[1]}x{shape[0]}: masks must match their image's size")
        mask |= layer > 0
    return mask


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (H, W); area interpolation when shrinking keeps thin defects visible."""
    h, w = size
    shrink = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N,H,W,3) uint8 RGB -> (N,3,H,W) float32 in [0, 1]: the input every edgekd model and artifact takes."""
    # One pass straight into the NCHW buffer: converting the transposed view first and dividing after costs
    # 4-5x more, which the live runner pays per frame on a 2-core box.
    out = np.empty((images.shape[0], images.shape[3], images.shape[1], images.shape[2]), np.float32)
    np.divide(images.transpose(0, 3, 1, 2), np.float32(255), out=out, dtype=np.float32)
    return out


def write_image_atomic(path: str | Path, image_rgb_or_grey: np.ndarray) -> None:
    """Write a PNG/JPEG via a temp file and rename, so a crash never leaves a half-written image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image_rgb_or_grey
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise EdgekdError(f"cannot encode {path}: use a .png or .jpg name")
    write_bytes_atomic(path, encoded.tobytes())
