"""`edgekd bundle`: everything a line box needs for one model, in one archive; `edgekd run --bundle` runs from it.

    MODEL (.engine or .onnx) + its sidecar (input contract, thresholds) + the calibration plot when there is one
    + the plugin's source (to rebuild it on the box) + the service unit and an example env file
    + edgekd-bundle.json: what is inside, with checksums

Opening a bundle unpacks it once into a cache folder named by the archive's checksum, refuses members that would
land outside it, and checks every file against the manifest, so a truncated or edited archive is refused whole.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from edgekd import __version__
from edgekd.artifacts import read_sidecar
from edgekd.backbones.weights import sha256_of
from edgekd.errors import EdgekdError

MANIFEST = "edgekd-bundle.json"
FORMAT = "edgekd-bundle"
REPO = Path(__file__).resolve().parents[2]
EXTRAS = {"plugin/MultiScaleFeatureDiffPlugin.cu": REPO / "engines" / "plugin" / "MultiScaleFeatureDiffPlugin.cu",
          "plugin/CMakeLists.txt": REPO / "engines" / "plugin" / "CMakeLists.txt",
          "service/edgekd@.service": REPO / "jetson" / "edgekd@.service",
          "service/example.env": REPO / "jetson" / "example.env"}


def write_bundle(artifact: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    artifact, out = Path(artifact), Path(out)
    if artifact.suffix.lower() not in (".onnx", ".engine", ".plan"):
        raise EdgekdError(f"{artifact} is not an exported model: bundle an .engine from 'edgekd build-engine' or an "
                          ".onnx from 'edgekd export'")
    if not artifact.is_file():
        raise EdgekdError(f"{artifact} does not exist: pass the engine or ONNX file to ship")
    info = read_sidecar(artifact)  # a model without its sidecar cannot run anywhere
    if not str(out).endswith((".tar.gz", ".tgz")):
        raise EdgekdError(f"--out {out} must end in .tar.gz")
    if out.exists() and not overwrite:
        raise EdgekdError(f"{out} already exists: pass --overwrite to replace it")
    files = {artifact.name: artifact, artifact.with_suffix(".json").name: artifact.with_suffix(".json")}
    plot = artifact.with_name(f"{artifact.stem}.calibration.png")
    if plot.is_file():
        files[plot.name] = plot
    files.update({name: path for name, path in EXTRAS.items() if path.is_file()})
    manifest = {"format": FORMAT, "edgekd_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "model": artifact.name, "model_family": info.get("model"), "precision": info.get("precision"),
                "thresholds": info.get("thresholds"), "files": {name: sha256_of(path) for name, path in files.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with tarfile.open(partial, "w:gz") as archive:
            for name, path in files.items():
                archive.add(path, arcname=name)
            data = json.dumps(manifest, indent=1).encode()
            entry = tarfile.TarInfo(MANIFEST)
            entry.size, entry.mtime = len(data), int(time.time())
            archive.addfile(entry, io.BytesIO(data))
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise EdgekdError(f"could not write {out} ({exc.strerror or exc}): check the path and the free space") from None
    return out


def open_bundle(bundle: str | Path, cache: str | Path | None = None) -> Path:
    """The model file inside the bundle, unpacked (once) and checked against the manifest."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise EdgekdError(f"bundle {bundle} does not exist: make one with 'edgekd bundle MODEL --out {bundle.name}'")
    digest = sha256_of(bundle)[:16]
    cache = Path(cache) if cache else Path(tempfile.gettempdir()) / "edgekd-bundles"
    target = cache / digest
    if not (target / MANIFEST).is_file():
        staging = cache / f".{digest}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(bundle, "r:gz") as archive:
                archive.extractall(staging, filter="data")  # refuses absolute paths, '..' and links out of it
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise EdgekdError(f"bundle {bundle} cannot be unpacked ({exc.__class__.__name__}): copy it again or make "
                              "it again with 'edgekd bundle'") from None
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        raise EdgekdError(f"{bundle} has no readable {MANIFEST}: it is not an edgekd bundle") from None
    if manifest.get("format") != FORMAT:
        raise EdgekdError(f"{bundle} is not an edgekd bundle: make one with 'edgekd bundle'")
    for name, expected in manifest["files"].items():
        path = target / name
        if not path.is_file() or sha256_of(path) != expected:
            shutil.rmtree(target, ignore_errors=True)
            raise EdgekdError(f"bundle {bundle}: {name} is missing or differs from its manifest: the archive was "
                              "damaged or edited; copy it again or make it again")
    return target / manifest["model"]
