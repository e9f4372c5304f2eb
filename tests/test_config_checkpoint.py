from pathlib import Path

import pytest
import torch

from edgekd.checkpoint import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from edgekd.config import load_config
from edgekd.errors import EdgekdError


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: rd\ntrain:\n  epochs: 7\nmodel_options:\n  width: 32\n")
    cfg = load_config(path, ["train.lr=0.01", "scoring.sigma=2", "train.betas=[0.9, 0.99]"])
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["lr"] == 0.01 and cfg["scoring"]["sigma"] == 2
    assert cfg["train"]["betas"] == [0.9, 0.99] and cfg["model_options"] == {"width": 32}
    assert cfg["train"]["batch_size"] == 16  # defaults survive a partial file


def test_config_errors(tmp_path):
    with pytest.raises(EdgekdError, match="unknown config key 'train.epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(EdgekdError, match="not KEY=VALUE"):
        load_config(None, ["train.epochs"])
    with pytest.raises(EdgekdError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [rd\n")
    with pytest.raises(EdgekdError, match="not valid YAML"):
        load_config(bad)


def test_unknown_model_name():
    with pytest.raises(EdgekdError, match="unknown model 'rd2'.*rd, stfpm"):
        build_model(load_config(None, ["model=rd2"]))


def _small_config():
    return load_config(None, ["input_size=64", "model_options={width: 16, embed: 32, decoder_widths: [8, 16, 24]}"])


def test_checkpoint_round_trip(tmp_path):
    model = build_model(_small_config()).eval()
    path = save_checkpoint(tmp_path / "m.ckpt", model, _small_config(), thresholds={"image": 1.0, "pixel": 1.0})
    loaded, payload = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], loaded(x)[0])
    assert payload["teacher"]["name"] == "efficientnet_lite0" and len(payload["teacher"]["weights_sha256"]) == 64
    assert payload["normalization"]["mean"] == [0.5, 0.5, 0.5] and payload["input_size"] == [64, 64]
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors(tmp_path):
    model = build_model(_small_config())
    path = save_checkpoint(tmp_path / "m.ckpt", model, _small_config())
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EdgekdError, match="truncated or corrupt"):
        read_checkpoint(truncated)
    with pytest.raises(EdgekdError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"weights": 1}, other)
    with pytest.raises(EdgekdError, match="not an edgekd checkpoint"):
        read_checkpoint(other)
    payload = torch.load(path, weights_only=False)
    payload["config"]["model_options"]["width"] = 24  # a checkpoint from an incompatible build
    torch.save(payload, other)
    with pytest.raises(EdgekdError, match="does not match model 'rd'"):
        load_checkpoint(other)
    payload["format_version"] = 99
    torch.save(payload, other)
    with pytest.raises(EdgekdError, match="newer than this edgekd"):
        read_checkpoint(other)


def test_checkpoint_of_an_earlier_revision_of_a_family_is_refused(tmp_path):
    """A family whose method changed (logicrd: position-aware GSE; vitkd: distances and the paper's layer
    indexing) refuses its old checkpoints: their thresholds belong to the old score."""
    config = load_config(None, ["model=logicrd", "input_size=64", "model_options={width: 8, embed: 16}"])
    model = build_model(config)
    path = save_checkpoint(tmp_path / "m.ckpt", model, config)
    assert read_checkpoint(path)["model_revision"] == model.revision == 2
    payload = torch.load(path, weights_only=False)
    del payload["model_revision"]  # written before revisions existed: revision 1
    torch.save(payload, tmp_path / "old.ckpt")
    with pytest.raises(EdgekdError, match=r"'logicrd' model of revision 1; .* builds revision 2 .*re-train"):
        load_checkpoint(tmp_path / "old.ckpt")
    rd = build_model(_small_config())  # a family that never changed reads its old checkpoints as before
    payload = torch.load(save_checkpoint(tmp_path / "rd.ckpt", rd, _small_config()), weights_only=False)
    del payload["model_revision"]
    torch.save(payload, tmp_path / "rd-old.ckpt")
    load_checkpoint(tmp_path / "rd-old.ckpt")


def test_setting_one_model_option_keeps_the_others():
    """`--set model_options.memory_size=0` on the default config once replaced the whole section, silently dropping
    the config's width, memory and colour settings for the family's own defaults."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    base = load_config(configs / "rd_lite0.yaml")["model_options"]
    changed = load_config(configs / "rd_lite0.yaml", ["model_options.memory_size=0"])["model_options"]
    assert changed == {**base, "memory_size": 0} and len(base) > 1
