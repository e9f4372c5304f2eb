import os
import tempfile

import pytest

os.environ["EDGEKD_OFFLINE"] = "1"  # tests never try to download weights
# unpacked bundles go to a private cache of this test session, not the user's ~/.cache/edgekd
os.environ["EDGEKD_CACHE"] = tempfile.mkdtemp(prefix="edgekd-test-cache-")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (128 px) shared by the tests that train."""
    from edgekd.data.synth import synthesize
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, ["wood", "washer"], seed=0, size=128, n_train=40, n_test_good=10, n_per_defect=3)
    return root


@pytest.fixture(scope="session")
def tray_root(tmp_path_factory):
    """The synthetic tray assembly (128 px, MVTec LOCO layout) with logical and structural anomalies."""
    from edgekd.data.synth import synthesize
    root = tmp_path_factory.mktemp("tray")
    synthesize(root, ["tray"], seed=0, size=128, n_train=48, n_test_good=12, n_per_defect=2)
    return root


@pytest.fixture(scope="session")
def lite0_teacher():
    from edgekd.backbones import build_teacher
    return build_teacher("efficientnet_lite0")


@pytest.fixture(scope="session")
def wood_checkpoint(synth_root, tmp_path_factory):
    """A short RD run at 128 px that export and engine tests share."""
    from pathlib import Path

    from edgekd.config import load_config
    from edgekd.train import train
    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(configs / "rd_lite0.yaml", ["input_size=128", "train.batch_size=8", "train.epochs=4"])
    return train(cfg, synth_root, "wood", tmp_path_factory.mktemp("run") / "wood").checkpoint


@pytest.fixture(scope="session")
def exports(wood_checkpoint, tmp_path_factory):
    from edgekd.export.exporter import export_checkpoint
    out = tmp_path_factory.mktemp("export")
    # force: this 4-epoch model is too rough for the INT8 gate; the gate has a test of its own
    return out, {p: export_checkpoint(wood_checkpoint, p, out_dir=out, calib_images=16, calibration_method="minmax",
                                      force=True) for p in ("fp32", "fp16", "int8")}


@pytest.fixture(scope="session")
def onnx_exports(exports):
    return {precision: result.artifact for precision, result in exports[1].items()}


@pytest.fixture(scope="session")
def split_export(wood_checkpoint, tmp_path_factory):
    from edgekd.export.exporter import export_checkpoint
    return export_checkpoint(wood_checkpoint, "fp32", layout="split", out_dir=tmp_path_factory.mktemp("split")).artifact


@pytest.fixture
def builds_engine(tmp_path):
    """Checks that TensorRT-RTX (it builds on a CPU-only machine) parses an export and builds a real engine."""
    def check(onnx_path):
        pytest.importorskip("tensorrt_rtx")
        from edgekd.engine.builder import build_engine
        built = build_engine(onnx_path, tmp_path / "engines", batch="1,1,2", flavour="tensorrt_rtx")
        assert built.engine.is_file() and built.engine.stat().st_size > 0
    return check
