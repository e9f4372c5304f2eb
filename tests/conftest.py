import os

import pytest

os.environ["EDGEKD_OFFLINE"] = "1"  # tests never try to download weights


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (128 px) shared by the tests that train."""
    from edgekd.data.synth import synthesize
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, ["wood", "washer"], seed=0, size=128, n_train=40, n_test_good=10, n_per_defect=3)
    return root


@pytest.fixture(scope="session")
def lite0_teacher():
    from edgekd.backbones import build_teacher
    return build_teacher("efficientnet_lite0")
