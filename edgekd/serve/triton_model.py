"""The Python-backend model Triton runs for `edgekd serve` (copied into the repository as model.py).

Triton's dynamic batcher hands execute() several requests at once: their frames are concatenated into one batch
for edgekd's runtime (torch, onnxruntime or TensorRT, chosen from the artifact) and the results split back.
A request brings either uint8 frames (N, H, W, 3) RGB at the model's input size, or float tensors (N, 3, H, W)
in [0, 1]; anything else gets an error response, never a crash of the model.

Tensors cross into and out of the backend as torch DLPack capsules, not as_numpy()/Tensor(numpy): the stub's
numpy bridge was compiled against NumPy 1 and, under NumPy 2, reads inputs wrongly and sends outputs with 0 bytes;
NumPy 2's own DLPack capsules are the versioned kind the stub does not take.
"""

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend
from torch.utils import dlpack

from edgekd.runtime import open_runtime
from edgekd.calibration import Thresholds


INPUT_SLACK = 1e-3  # rounding of a client's own scaling; anything further out is another convention, refused


def _as_model_input(request, size):
    frames = pb_utils.get_input_tensor_by_name(request, "frames")
    images = pb_utils.get_input_tensor_by_name(request, "images")
    if (frames is None) == (images is None):
        raise ValueError("send exactly one of 'frames' (uint8 N,H,W,3 RGB) or 'images' (float32 N,3,H,W in [0, 1])")
    if frames is not None:
        batch = _array(frames)
        if batch.shape[1:3] != tuple(size):
            raise ValueError(f"frames are {batch.shape[1]}x{batch.shape[2]}; this model takes {size[0]}x{size[1]}")
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    batch = _array(images)
    if batch.shape[1:] != (3, *size):
        raise ValueError(f"images are {'x'.join(map(str, batch.shape[1:]))}; this model takes 3x{size[0]}x{size[1]}")
    if not np.isfinite(batch).all():
        raise ValueError("images contain NaN or infinity")
    low, high = float(batch.min(initial=0.0)), float(batch.max(initial=0.0))
    if low < -INPUT_SLACK or high > 1.0 + INPUT_SLACK:
        hint = (" (they look like 0..255 pixels: divide by 255, or send uint8 'frames')" if high <= 255.0 + INPUT_SLACK
                and low >= -INPUT_SLACK else "")
        raise ValueError(f"images must be float32 RGB in [0, 1]; these reach [{low:.4g}, {high:.4g}]{hint}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _array(tensor):
    return dlpack.from_dlpack(tensor.to_dlpack()).numpy()


def _tensor(name, array):
    return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(torch.from_numpy(np.ascontiguousarray(array))))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        backend = params.get("edgekd_backend") or None
        self.runtime = open_runtime(params["edgekd_artifact"], backend=backend, device=params.get("edgekd_device", "auto"))
        self.size = tuple(self.runtime.input_size)
        self.mask_thresholds = Thresholds.for_masks(self.runtime.thresholds)

    def execute(self, requests):
        responses, batches, good = [None] * len(requests), [], []
        for i, request in enumerate(requests):
            try:
                batches.append(_as_model_input(request, self.size))
                good.append(i)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        if batches:
            maps, scores = self.runtime.run(np.concatenate(batches))
            maps = np.asarray(maps, dtype=np.float32)
            scores = np.asarray(scores, dtype=np.float32).reshape(-1, 1)
            masks = (self.mask_thresholds.masks(maps[:, 0])[:, None] if self.mask_thresholds is not None
                     else np.zeros(maps.shape, np.uint8))
            start = 0
            for i, batch in zip(good, batches):
                end = start + len(batch)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    _tensor("anomaly_map", maps[start:end]), _tensor("score", scores[start:end]),
                    _tensor("mask", masks[start:end].astype(np.uint8))])
                start = end
        return responses

    def finalize(self):
        self.runtime.close()
