"""Graph rewrites applied to every export keep the outputs and remove what they promise to remove."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgekd.backbones.efficientnet_lite import SameConv2d
from edgekd.export.graph_passes import fold_pads_into_convs


class _Strided(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = SameConv2d(3, 8, 3, stride=2)
        self.b = SameConv2d(8, 8, 5, stride=2, groups=8)  # depthwise, 5x5: pads (1, 2) per side
        self.c = SameConv2d(8, 4, 3, stride=1)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_tf_same_pads_fold_into_convs_without_changing_outputs():
    torch.manual_seed(0)
    module, x = _Strided().eval(), torch.rand(2, 3, 37, 30)  # odd and even sides: different pads
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert [n.op_type for n in model.graph.node].count("Pad") == 2
    assert fold_pads_into_convs(model) == 2
    assert "Pad" not in [n.op_type for n in model.graph.node]
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        expected = module(x).numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    single = session.run(None, {"x": x[:1].numpy()})[0]  # batch stays dynamic
    assert np.allclose(single, expected[:1], atol=1e-5)
