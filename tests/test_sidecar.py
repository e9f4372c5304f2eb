"""The typed sidecar (edgekd/sidecar.py): one validating loader, a schema version, unknown keys kept, and no
module reading a sidecar's raw keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgekd.artifacts import read_sidecar, write_sidecar
from edgekd.errors import EdgekdError
from edgekd.sidecar import SCHEMA_VERSION, SIDECAR_FORMAT, InputSpec, Sidecar

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"


def _written(tmp_path: Path, **changes) -> Path:
    artifact = tmp_path / "wood.fp32.onnx"
    artifact.write_bytes(b"\x08graph")
    raw = {"format": SIDECAR_FORMAT, "format_version": 1, "model": "rd", "input_size": [64, 96], "precision": "fp32",
           "input": {"name": "images", "shape": ["batch", 3, 64, 96], "dtype": "float32", "color": "RGB",
                     "range": [0.0, 1.0], "layout": "NCHW", "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}},
           "thresholds": {"image": 1.5, "pixel": 2.0}, "source_checkpoint": {"path": "m.ckpt", "sha256": "a" * 64}}
    raw.update(changes)
    artifact.with_suffix(".json").write_text(json.dumps({k: v for k, v in raw.items() if v is not ...}))
    return artifact


def test_a_sidecar_reads_as_typed_fields_and_writes_back_the_same(tmp_path):
    artifact = _written(tmp_path, future_field={"kept": True})
    info = read_sidecar(artifact)
    assert isinstance(info.input, InputSpec) and info.input.color == "RGB" and info.input_size == (64, 96)
    assert info.thresholds["image"] == 1.5 and info.source_sha256 == "a" * 64 and info.artifact == str(artifact)
    assert info.extra == {"future_field": {"kept": True}}  # a newer minor writer's key survives a rewrite
    before = json.loads(artifact.with_suffix(".json").read_text())
    write_sidecar(artifact, info.replace(thresholds={"image": 2.5, "pixel": 2.0}))
    after = json.loads(artifact.with_suffix(".json").read_text())
    assert after["thresholds"]["image"] == 2.5 and after["future_field"] == {"kept": True}
    assert {k: v for k, v in after.items() if k != "thresholds"}.items() >= \
        {k: v for k, v in before.items() if k != "thresholds"}.items()


@pytest.mark.parametrize("changes, message", [
    ({"format": "something-else"}, "is not an edgekd sidecar"),
    ({"format_version": SCHEMA_VERSION + 1}, f"is schema {SCHEMA_VERSION + 1}, newer than this edgekd"),
    ({"format_version": "1"}, "format_version '1'"),
    ({"model": ...}, "lacks 'model'"),
    ({"input_size": [64]}, "input_size \\[64\\], not \\[height, width\\]"),
    ({"input_size": [64, -1]}, "not \\[height, width\\]"),
    ({"input": {"colour": "RGB"}}, "'input' that is not the graph's input description"),
    ({"thresholds": [1.0, 2.0]}, "thresholds \\[1.0, 2.0\\] of the wrong type"),
    ({"precision": "fp64"}, "precision 'fp64', not one of fp32, fp16, int8"),
    ({"layout": "split"}, "split export without its 'graphs'"),
])
def test_a_bad_sidecar_is_one_line_naming_the_field_and_the_fix(tmp_path, changes, message):
    with pytest.raises(EdgekdError, match=message) as caught:
        read_sidecar(_written(tmp_path, **changes))
    text = str(caught.value)
    assert "\n" not in text and ("edgekd export" in text or "upgrade edgekd" in text)


def test_a_description_without_a_file_has_the_same_shape():
    info = Sidecar(model="rd", input_size=(32, 32), kind="checkpoint")
    assert info.precision == "fp32" and info.is_single_graph and info.label == "this model"
    assert Sidecar.from_dict({**info.to_dict(), "input": {"shape": [], "normalization": {}}}, "x", "fix").model == "rd"


# Raw key reads of a sidecar-shaped record (info["x"], info.get("x"), read_sidecar(p)["x"]) are what the typed
# sidecar replaced; machine.py's `info` is a machine description, not a sidecar.
RAW_READ = re.compile(r"""\b(info|sidecar|described)(\.get\(|\[)["']|read_sidecar\([^)]*\)(\.get\(|\[)""")


def test_no_module_reads_a_sidecars_raw_keys():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{n}" for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name not in ("sidecar.py", "machine.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if RAW_READ.search(line)]
    assert offenders == []


def test_an_engines_largest_batch_comes_from_its_profile():
    assert Sidecar(model="rd", input_size=(8, 8), profile={"batch": {"min": 1, "opt": 4, "max": 8}}).max_batch == 8
    assert Sidecar(model="rd", input_size=(8, 8)).max_batch is None  # a graph: the batch is dynamic
