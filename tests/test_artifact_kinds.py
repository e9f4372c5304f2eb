"""One table of artifact kinds: recognition by suffix and first bytes, the runtime each opens with, and no rule of
its own about kinds anywhere else in the package."""

import importlib
import re
from pathlib import Path

import pytest

from edgekd.artifact_kinds import CHECKPOINT, ENGINE, KINDS, ONNX, kind_by_content, kind_for_backend, kind_of
from edgekd.errors import EdgekdError

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
# A comparison of a backend, kind or suffix with a kind's own name or suffix: the table's job alone.
KIND_RULE = re.compile(r'(backend|kind|suffix)[\w.]*\s*(!=|==|in)\s*\(?"(torch|onnxruntime|tensorrt|engine|onnx|'
                       r'checkpoint|\.onnx|\.engine|\.plan|\.ckpt)"|"\.(onnx|engine|plan|ckpt)"')


def test_no_kind_rule_outside_the_table():
    found = [f"{path.relative_to(PACKAGE)}:{number}" for path in PACKAGE.rglob("*.py") if path.name != "artifact_kinds.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if KIND_RULE.search(line)]
    assert found == []


def test_every_suffix_and_backend_names_one_row_and_every_row_opens():
    suffixes = [s for kind in KINDS for s in kind.suffixes]
    assert len(suffixes) == len(set(suffixes)) and len({k.backend for k in KINDS}) == len(KINDS)
    for kind in KINDS:
        module, _, function = kind.opener.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert kind_for_backend(kind.backend) is kind


def test_kinds_are_recognised_by_name_and_by_content(tmp_path):
    zipped, graph, plan = tmp_path / "m.ckpt", tmp_path / "m.onnx", tmp_path / "m.engine"
    zipped.write_bytes(b"PK\x03\x04rest")
    graph.write_bytes(b"\x08\x07rest")
    plan.write_bytes(b"ftrt")
    assert [kind_of(p) for p in (zipped, graph, plan)] == [CHECKPOINT, ONNX, ENGINE]
    assert kind_by_content(plan) is None and kind_of(tmp_path / "missing.plan") is ENGINE
    renamed = tmp_path / "really_a_checkpoint.onnx"
    renamed.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(EdgekdError, match="is a PyTorch checkpoint, not an ONNX graph as its name says: rename it to .ckpt"):
        kind_of(renamed)
    with pytest.raises(EdgekdError, match="--backend tensorrt runs a TensorRT engine, and .* is an ONNX graph: build an engine"):
        kind_of(graph, "tensorrt")
    with pytest.raises(EdgekdError, match="cannot tell the backend of .*model.pb"):
        kind_of(tmp_path / "model.pb")
    with pytest.raises(EdgekdError, match="unknown backend 'tflite'"):
        kind_of(graph, "tflite")


def test_every_kinds_pair_check_exists():
    from edgekd.artifact_kinds import KINDS
    from edgekd.artifacts import PAIR_CHECKS
    assert {kind.sidecar_check for kind in KINDS} - {None} <= set(PAIR_CHECKS)
    assert [kind.name for kind in KINDS if kind.runs_in_torch] == ["checkpoint"]
