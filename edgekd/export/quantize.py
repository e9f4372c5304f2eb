"""INT8 by explicit Q/DQ (what strongly typed TensorRT builders need): onnxruntime's static quantiser,
symmetric per-channel weights and symmetric activations, calibrated on normal training images. The input
normalisation, the scoring and the mask are excluded, so they stay FP32."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

from edgekd.errors import EdgekdError
from edgekd.export.onnx_export import float32_nodes

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def quantize_int8(fp32_path: Path, out_path: Path, calibration: dict[str, np.ndarray], method: str = "percentile",
                  batch_size: int = 8) -> Path:
    """calibration: graph input name -> (N, ...) float32 arrays from normal images (e.g. {'images': ...})."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise EdgekdError(f"calibration method '{method}' is unknown: use one of {', '.join(CALIBRATION_METHODS)}")
    count = min(len(v) for v in calibration.values())
    if count == 0:
        raise EdgekdError("INT8 calibration needs normal images: the training split is empty")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= count:
                return None
            batch = {name: values[self.start:self.start + batch_size] for name, values in calibration.items()}
            self.start += batch_size
            return batch

    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            keep_float = float32_nodes(onnx.load(str(prepared)).graph)
            quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float,
                            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                              "entropy": CalibrationMethod.Entropy}[method],
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False})  # TensorRT takes no INT32 bias Q/DQ
    finally:
        prepared.unlink(missing_ok=True)
    return out_path
