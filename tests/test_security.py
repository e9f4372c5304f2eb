"""The attacks of the security model (docs/security.md), each reproduced through the real command line: a bundle
runs only what it carries, the bundle cache cannot be poisoned, no code runs from a model file."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from cli_runner import edgekd, run_main

from edgekd.backbones.weights import sha256_of


def assert_refused(result, *fragments):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for entry, data in members:
            if data is not None:
                entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data) if data is not None else None)
    return path


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    entry = tarfile.TarInfo(name)
    entry.mode = 0o644
    return entry, data


def bundle_of(artifact: Path, path: Path, model: str | None = None, extra: dict[str, bytes] | None = None,
              listed_extra: bool = True, special: list = ()) -> Path:
    """A hand-made bundle carrying `artifact` and its sidecar; `model` overrides the manifest's model entry."""
    carried = {artifact.name: artifact.read_bytes(), artifact.with_suffix(".json").name: artifact.with_suffix(".json").read_bytes()}
    import hashlib
    files = {name: hashlib.sha256(data).hexdigest() for name, data in carried.items()}
    if listed_extra:
        files.update({name: hashlib.sha256(data).hexdigest() for name, data in (extra or {}).items()})
    manifest = {"format": "edgekd-bundle", "model": model or artifact.name, "files": files}
    members = [file_entry("edgekd-bundle.json", json.dumps(manifest).encode())]
    members += [file_entry(name, data) for name, data in {**carried, **(extra or {})}.items()]
    members += [item if isinstance(item, tuple) else (item, None) for item in special]
    return write_archive(path, members)


@pytest.fixture
def line_video(synth_root, tmp_path):
    video = tmp_path / "line.mp4"
    made = edgekd("data", "video", synth_root, video, "--category", "wood", "--frames", "10", "--defect-every", "5")
    assert made.returncode == 0, made.stderr
    return video


# -- 1. a bundle runs only what it carries ------------------------------------------------------------------------
def test_a_bundle_whose_manifest_names_a_model_outside_it_is_refused(onnx_exports, line_video, tmp_path):
    """The reported attack: the manifest's model is an absolute path or '../..' to another model on the box."""
    outside = tmp_path / "elsewhere" / "other.onnx"
    outside.parent.mkdir()
    shutil.copyfile(onnx_exports["fp32"], outside)
    shutil.copyfile(onnx_exports["fp32"].with_suffix(".json"), outside.with_suffix(".json"))
    for name, model in (("absolute", str(outside)), ("parent", "../../elsewhere/other.onnx")):
        archive = bundle_of(onnx_exports["fp32"], tmp_path / f"{name}.tar.gz", model=model)
        result = edgekd("run", "--bundle", archive, "--source", line_video, "--jsonl", tmp_path / f"{name}.jsonl")
        assert_refused(result, "refused", "runs only what it carries")
        assert not (tmp_path / f"{name}.jsonl").exists()


@pytest.mark.parametrize("case", ["unlisted", "symlink", "hardlink", "fifo", "device", "absolute", "parent", "twice"])
def test_bundle_members_outside_the_rules_are_refused(onnx_exports, tmp_path, capsys, monkeypatch, case):
    artifact = onnx_exports["fp32"]
    extra, special, listed = {}, [], True
    if case == "unlisted":
        extra, listed = {"notes.txt": b"not in the manifest"}, False
    elif case in ("symlink", "hardlink"):
        entry = tarfile.TarInfo("link.onnx")
        entry.type, entry.linkname = (tarfile.SYMTYPE, "/etc/passwd") if case == "symlink" else (tarfile.LNKTYPE, artifact.name)
        special = [entry]
    elif case in ("fifo", "device"):
        entry = tarfile.TarInfo("dev0")
        entry.type = tarfile.FIFOTYPE if case == "fifo" else tarfile.CHRTYPE
        special = [entry]
    elif case in ("absolute", "parent"):
        extra, listed = {("/tmp/x.txt" if case == "absolute" else "../x.txt"): b"x"}, False
    elif case == "twice":
        special = [file_entry(artifact.with_suffix(".json").name, b"{}")]
    archive = bundle_of(artifact, tmp_path / "b.tar.gz", extra=extra, listed_extra=listed, special=special)
    code, _, err = run_main(capsys, monkeypatch, "run", "--bundle", archive, "--source", tmp_path / "none.mp4",
                            "--jsonl", tmp_path / "out.jsonl")  # the CLI entry point, in this process
    assert code == 2 and err.startswith("error: ") and "refused" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.jsonl").exists() and not Path("/tmp/x.txt").exists()


def test_a_bundle_cannot_smuggle_a_checkpoint_to_run(onnx_exports, wood_checkpoint, line_video, tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copyfile(wood_checkpoint, checkpoint)
    (tmp_path / "model.json").write_text("{}")
    archive = bundle_of(checkpoint, tmp_path / "ckpt.tar.gz")
    assert_refused(edgekd("run", "--bundle", archive, "--source", line_video), "checkpoints are never run from a bundle")


def test_a_decompression_bomb_stops_at_the_size_limit(onnx_exports, capsys, monkeypatch, tmp_path):
    """A small archive that unpacks to far more than its model may be: refused while streaming, nothing kept."""
    from edgekd.deploy import bundle
    monkeypatch.setattr(bundle, "MAX_MEMBER_BYTES", 32 << 20)
    archive = bundle_of(onnx_exports["fp32"], tmp_path / "bomb.tar.gz", extra={"padding.bin": bytes(64 << 20)})
    assert archive.stat().st_size < (onnx_exports["fp32"].stat().st_size + (1 << 20))  # the zeros compress away
    code, _, err = run_main(capsys, monkeypatch, "run", "--bundle", archive, "--source", tmp_path / "none.mp4")
    assert code == 2 and "padding.bin" in err and "size limit" in err, err
    cache = Path(os.environ["EDGEKD_CACHE"])
    assert not any(p.name.startswith(".unpack-") for p in cache.iterdir())  # the staging folder was removed


# -- 2. the bundle cache ------------------------------------------------------------------------------------------
def test_a_poisoned_cache_folder_is_never_run(onnx_exports, line_video, tmp_path, monkeypatch):
    """Pre-filled (or edited after unpacking) with another model under the archive's checksum name: the files are
    checked against the archive's own manifest on every use, and the archive is unpacked afresh."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKD_CACHE", str(cache))
    archive = edgekd("bundle", onnx_exports["fp32"], "--out", tmp_path / "wood.tar.gz")
    assert archive.returncode == 0, archive.stderr
    bundle = tmp_path / "wood.tar.gz"
    folder = cache / "bundles" / sha256_of(bundle)
    other = onnx_exports["fp16"]
    for attempt in ("prefilled", "edited"):
        if attempt == "prefilled":  # before the first use: someone guessed the folder name
            folder.mkdir(parents=True)
            (folder / "edgekd-bundle.json").write_text(json.dumps({"format": "edgekd-bundle", "model": onnx_exports["fp32"].name,
                                                                   "files": {}}))
        shutil.copyfile(other, folder / onnx_exports["fp32"].name)
        shutil.copyfile(other.with_suffix(".json"), folder / onnx_exports["fp32"].with_suffix(".json").name)
        ran = edgekd("run", "--bundle", bundle, "--source", line_video, "--jsonl", tmp_path / f"{attempt}.jsonl",
                     "--stats-every", "0")
        assert ran.returncode == 0, ran.stderr
        assert sha256_of(folder / onnx_exports["fp32"].name) == sha256_of(onnx_exports["fp32"])
        events = [json.loads(line) for line in (tmp_path / f"{attempt}.jsonl").read_text().splitlines()]
        assert events and all(e.get("model", "").find("fp16") < 0 for e in events)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700 and stat.S_IMODE(os.stat(cache / "bundles").st_mode) == 0o700
    assert "unpacking it again" in ran.stderr


def test_the_cache_is_private_and_bounded(tmp_path, monkeypatch):
    from edgekd.cache import prune_cache, user_cache_dir
    from edgekd.errors import EdgekdError
    open_root = tmp_path / "open"
    open_root.mkdir(mode=0o777)
    os.chmod(open_root, 0o777)
    monkeypatch.setenv("EDGEKD_CACHE", str(open_root))
    assert stat.S_IMODE(os.stat(user_cache_dir("bundles")).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(open_root).st_mode) == 0o700  # ours but open to others: closed first
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "open")
    monkeypatch.setenv("EDGEKD_CACHE", str(link))
    with pytest.raises(EdgekdError, match="is a link"):
        user_cache_dir("bundles")
    folder = tmp_path / "lru"
    for age, name in enumerate(("old", "middle", "new")):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.onnx").write_bytes(bytes(1000))
        os.utime(folder / name, (1000 + age, 1000 + age))
    stale = folder / ".unpack-killed"
    stale.mkdir()
    os.utime(stale, (0, 0))
    removed = prune_cache(folder, keep_bytes=2000, keep=folder / "old")
    assert sorted(p.name for p in removed) == [".unpack-killed", "middle"]
    assert (folder / "old").is_dir() and (folder / "new").is_dir()


# -- 3. no code runs from a model file ----------------------------------------------------------------------------
def test_a_checkpoint_with_a_pickle_payload_is_refused_before_it_runs(tmp_path, capsys, monkeypatch):
    import torch
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.ckpt"
    torch.save({"format": "edgekd-checkpoint", "format_version": 1, "model": "rd", "payload": Payload()}, evil)
    image = tmp_path / "x.png"
    import cv2
    import numpy as np
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    for command in (("predict", evil, image, "--out", tmp_path / "preds"), ("eval", evil, "--data", tmp_path),
                    ("export", evil, "--out", tmp_path / "export"), ("calibrate", evil, "--source", image),
                    ("doctor", "--model", evil)):
        code, out, err = run_main(capsys, monkeypatch, *command)  # the CLI entry point, in this process
        assert code != 0 and "Traceback" not in err, err
        said = " ".join((err + out).split())
        assert "refused" in said and "loading it would run posix.system" in said, said
        assert not marker.exists(), command


def test_checkpoints_written_by_this_edgekd_load_safely(wood_checkpoint, tmp_path):
    """The safe loader reads every field today's writer stores (finished model and resume checkpoint)."""
    import torch
    from edgekd.checkpoint import load_checkpoint, read_checkpoint
    model, payload = load_checkpoint(wood_checkpoint)
    assert payload["thresholds"]["image"] > 0 and payload["training"]["category"] == "wood"
    resume = read_checkpoint(Path(wood_checkpoint).with_name("last.ckpt"), resume=True)
    assert "optimizer" in resume
    torch.load(wood_checkpoint, weights_only=True)  # no global beyond the allow-list
