"""`edgekd bundle`: everything a line box needs for one model, in one archive; `edgekd run --bundle` runs from it.

    MODEL (.engine or .onnx) + its sidecar (input contract, thresholds) + the calibration plot when there is one
    + the plugin's source (to rebuild it on the box) + the service unit and an example line file
    + edgekd-bundle.json: what is inside, with checksums and sizes (written first, so it is read first)

A bundle runs only what it carries. Opening one reads the archive as a stream: every member must be a regular
file with a plain relative name that the manifest lists, within the size limits; the manifest's model must be one
of those files, an exported model with its sidecar beside it. The unpacked copy lives in a per-user cache
(edgekd/cache.py, mode 0700) and every file of it is checked against the archive's own manifest on every use, so
a cache folder filled by someone else, or edited since, is unpacked afresh instead of run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from edgekd import __version__
from edgekd.artifacts import read_sidecar
from edgekd.backbones.weights import sha256_of
from edgekd.cache import prune_cache, user_cache_dir
from edgekd.artifact_kinds import KINDS
from edgekd.errors import EdgekdError

MANIFEST = "edgekd-bundle.json"
FORMAT = "edgekd-bundle"
MODEL_SUFFIXES = tuple(s for kind in KINDS if kind.has_sidecar for s in kind.suffixes)  # exported models only
REPO = Path(__file__).resolve().parents[2]
EXTRAS = {"plugin/MultiScaleFeatureDiffPlugin.cu": REPO / "engines" / "plugin" / "MultiScaleFeatureDiffPlugin.cu",
          "plugin/CMakeLists.txt": REPO / "engines" / "plugin" / "CMakeLists.txt",
          "service/edgekd@.service": REPO / "jetson" / "edgekd@.service",
          "service/example.yaml": REPO / "jetson" / "example.yaml"}
# An engine of a large model is a few hundred MB; a member or an unpack beyond these is a decompression bomb.
MAX_MEMBER_BYTES = 2 << 30
MAX_UNPACKED_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBERS = 64
CACHE_KEEP_BYTES = 8 << 30  # older unpacked bundles are removed beyond this (least recently used first)
SAFE_NAME = re.compile(r"[A-Za-z0-9._@+-]+")  # each part of a member name
SHA256 = re.compile(r"[0-9a-f]{64}")


def write_bundle(artifact: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    artifact, out = Path(artifact), Path(out)
    if artifact.suffix.lower() not in MODEL_SUFFIXES:
        raise EdgekdError(f"{artifact} is not an exported model: bundle an .engine from 'edgekd build-engine' or an "
                          ".onnx from 'edgekd export'")
    if not artifact.is_file():
        raise EdgekdError(f"{artifact} does not exist: pass the engine or ONNX file to ship")
    info = read_sidecar(artifact)  # a model without its sidecar cannot run anywhere
    if not str(out).endswith((".tar.gz", ".tgz")):
        raise EdgekdError(f"--out {out} must end in .tar.gz")
    if out.is_dir():
        raise EdgekdError(f"--out {out} is a folder: name the archive to write, e.g. {out / 'model.tar.gz'}")
    if out.exists() and not overwrite:
        raise EdgekdError(f"{out} already exists: pass --overwrite to replace it")
    files = {artifact.name: artifact, artifact.with_suffix(".json").name: artifact.with_suffix(".json")}
    plot = artifact.with_name(f"{artifact.stem}.calibration.png")
    if plot.is_file():
        files[plot.name] = plot
    files.update({name: path for name, path in EXTRAS.items() if path.is_file()})
    manifest = {"format": FORMAT, "edgekd_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "model": artifact.name, "model_family": info.model, "precision": info.precision,
                "thresholds": info.thresholds, "files": {name: sha256_of(path) for name, path in files.items()},
                "sizes": {name: path.stat().st_size for name, path in files.items()}}
    partial = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(partial, "w:gz") as archive:
            data = json.dumps(manifest, indent=1).encode()
            entry = tarfile.TarInfo(MANIFEST)
            entry.size, entry.mtime, entry.mode = len(data), int(time.time()), 0o644
            archive.addfile(entry, io.BytesIO(data))
            for name, path in files.items():
                archive.add(path, arcname=name, recursive=False)
        partial.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise EdgekdError(f"could not write {out} ({exc.strerror or exc}): check the path and the free space") from None
    return out


# -- opening ------------------------------------------------------------------------------------------------------
class _Refused(Exception):
    """The archive breaks a rule: the message names the member and the rule."""


def _member_name(name: str) -> str:
    """A plain relative POSIX path: no absolute, parent, empty or odd parts."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p != "."]
    if name.startswith("/") or "\\" in name or not parts or any(p == ".." or not SAFE_NAME.fullmatch(p) for p in parts):
        raise _Refused(f"member '{name}' is not a plain relative file name")
    return "/".join(parts)


def _check_manifest(manifest, bundle: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgekdError(f"{bundle} is not an edgekd bundle (no {MANIFEST} of format '{FORMAT}'): make one with "
                          "'edgekd bundle'")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise EdgekdError(f"{bundle}: {MANIFEST} lists no files: make the bundle again with 'edgekd bundle'")
    try:
        names = {_member_name(str(name)) for name in files}
    except _Refused as exc:
        raise EdgekdError(f"bundle {bundle} refused: its manifest names {exc}") from None
    if names != set(files) or not all(isinstance(v, str) and SHA256.fullmatch(v) for v in files.values()):
        raise EdgekdError(f"bundle {bundle} refused: its manifest's file list is malformed (names must be plain "
                          "relative paths, checksums SHA-256): make the bundle again with 'edgekd bundle'")
    model = manifest.get("model")
    if not isinstance(model, str) or model not in files:
        raise EdgekdError(f"bundle {bundle} refused: its model {model!r} is not one of the files it carries (a bundle "
                          "runs only what it carries): make the bundle again with 'edgekd bundle'")
    if PurePosixPath(model).suffix.lower() not in MODEL_SUFFIXES:
        raise EdgekdError(f"bundle {bundle} refused: its model {model} is not an exported .onnx or .engine (checkpoints "
                          "are never run from a bundle)")
    sidecar = str(PurePosixPath(model).with_suffix(".json"))
    if sidecar not in files:
        raise EdgekdError(f"bundle {bundle} refused: it does not carry {sidecar}, the model's sidecar")
    return manifest


def _unpack(bundle: Path, staging: Path) -> dict:
    """Stream the archive into `staging`, member by member, under the rules; returns the manifest."""
    manifest, seen, total = None, set(), 0
    with tarfile.open(bundle, "r|gz") as archive:
        for count, member in enumerate(archive, start=1):
            if count > MAX_MEMBERS:
                raise _Refused(f"more than {MAX_MEMBERS} members")
            name = _member_name(member.name)
            if not member.isreg():
                raise _Refused(f"member '{name}' is a {'link' if member.issym() or member.islnk() else 'special file'}, "
                               "not a regular file")
            if name in seen:
                raise _Refused(f"member '{name}' appears twice")
            seen.add(name)
            limit = MAX_MANIFEST_BYTES if name == MANIFEST else MAX_MEMBER_BYTES
            total += member.size
            if member.size > limit or total > MAX_UNPACKED_BYTES:
                raise _Refused(f"member '{name}' would unpack past the size limit ({member.size} bytes; at most "
                               f"{limit} a member and {MAX_UNPACKED_BYTES} in all)")
            if manifest is not None and name not in manifest["files"]:
                raise _Refused(f"member '{name}' is not listed in the manifest")
            source = archive.extractfile(member)
            if name == MANIFEST:
                try:
                    manifest = _check_manifest(json.loads(source.read()), bundle)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise _Refused(f"{MANIFEST} is not valid JSON") from None
                extra = sorted(seen - {MANIFEST} - set(manifest["files"]))
                if extra:
                    raise _Refused(f"member '{extra[0]}' is not listed in the manifest")
                (staging / MANIFEST).write_text(json.dumps(manifest))
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    if manifest is None:
        raise _Refused(f"it has no {MANIFEST}")
    return manifest


def _read_manifest(bundle: Path) -> dict:
    """The manifest inside the archive (the first member of bundles written since it came first; older ones are
    read through to it)."""
    try:
        with tarfile.open(bundle, "r|gz") as archive:
            for member in archive:
                if _member_name(member.name) == MANIFEST and member.isreg() and member.size <= MAX_MANIFEST_BYTES:
                    return _check_manifest(json.loads(archive.extractfile(member).read()), bundle)
    except _Refused as exc:
        raise EdgekdError(f"bundle {bundle} refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise EdgekdError(f"bundle {bundle} cannot be unpacked ({exc.__class__.__name__}): copy it again or make it "
                          "again with 'edgekd bundle'") from None
    raise EdgekdError(f"bundle {bundle} has no {MANIFEST}: it is not an edgekd bundle")


def _verify(folder: Path, manifest: dict) -> str | None:
    """The first way the unpacked folder differs from the manifest, or None when every file is as listed."""
    expected = set(manifest["files"]) | {MANIFEST}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or (not path.is_dir() and not path.is_file()):
            return f"{relative} is not a regular file"
        if path.is_file() and relative not in expected:
            return f"{relative} is not listed in the manifest"
    for name, digest in manifest["files"].items():
        path = folder / name
        if path.is_symlink() or not path.is_file() or sha256_of(path) != digest:
            return f"{name} is missing or differs from its manifest"
    return None


def _archive_digest(bundle: Path) -> str:
    digest = hashlib.sha256()
    with open(bundle, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fresh_unpack(bundle: Path, cache: Path, target: Path) -> dict:
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        try:
            manifest = _unpack(bundle, staging)
        except _Refused as exc:
            raise EdgekdError(f"bundle {bundle} refused: {exc}; a bundle carries only the files its manifest lists "
                              "(make it again with 'edgekd bundle')") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise EdgekdError(f"bundle {bundle} cannot be unpacked ({exc.__class__.__name__}): copy it again or make "
                              "it again with 'edgekd bundle'") from None
        problem = _verify(staging, manifest)
        if problem:
            raise EdgekdError(f"bundle {bundle}: {problem}: the archive was damaged or edited; copy it again or make "
                              "it again")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_bundle(bundle: str | Path, cache: str | Path | None = None, log=None) -> Path:
    """The model file inside the bundle, unpacked into the per-user cache and checked against the archive's own
    manifest on every use."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise EdgekdError(f"bundle {bundle} does not exist: make one with 'edgekd bundle MODEL --out {bundle.name}'")
    cache = user_cache_dir("bundles", cache)
    target = cache / _archive_digest(bundle)
    manifest = None
    if target.is_dir():
        manifest = _read_manifest(bundle)  # the archive's, never the cached copy's
        problem = _verify(target, manifest)
        if problem is not None:
            manifest = None
            if log is not None:
                log(f"warning: the cached copy of {bundle.name} differs from the archive ({problem}): unpacking it again")
    if manifest is None:
        manifest = _fresh_unpack(bundle, cache, target)
    os.utime(target)  # most recently used: the last to be pruned
    prune_cache(cache, CACHE_KEEP_BYTES, keep=target)
    return target / manifest["model"]
