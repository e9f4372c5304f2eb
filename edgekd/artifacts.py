"""The sidecar file next to every exported artifact (ONNX graph, TensorRT engine): where it lives, how it is written
and replaced together with its graph, read back (edgekd/sidecar.py is its schema), and checked against the file it
describes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgekd.backbones.weights import sha256_of
from edgekd.atomic import write_bytes_atomic
from edgekd.artifact_kinds import ONNX, ArtifactKind, kind_by_suffix
from edgekd.errors import EdgekdError
from edgekd.sidecar import INPUT_NAME, InputSpec, Sidecar, now

OUTPUT_NAMES = ("anomaly_map", "score", "mask")


def exported_stem(name: str, precision: str, int8_for: str = "tensorrt") -> str:
    """NAME.PRECISION of an exported graph; the onnxruntime INT8 form is NAME.int8-ort, so it never overwrites the
    TensorRT form beside it."""
    return f"{name}.{precision}{'-ort' if precision == 'int8' and int8_for == 'onnxruntime' else ''}"


def sidecar_path(artifact: str | Path) -> Path:
    return Path(artifact).with_suffix(".json")


def describe_payload(payload: dict, kind: str = "checkpoint", artifact: str | Path | None = None) -> Sidecar:
    """A checkpoint's description in the sidecar's shape (read without hashing the file)."""
    h, w = payload["input_size"]
    training = payload.get("training", {})
    return Sidecar(
        model=payload["model"], input_size=(h, w), kind=kind, created=now(), teacher=payload["teacher"]["name"],
        input=InputSpec(name=INPUT_NAME, shape=["batch", 3, h, w],
                        normalization={**payload["normalization"], "in_graph": True}),
        thresholds=payload.get("thresholds"), score_stats=payload.get("score_stats"),
        scoring=payload["config"]["scoring"], category=training.get("category"), dataset=training.get("dataset"),
        thresholds_history=list(payload.get("thresholds_history", [])),
        artifact=str(artifact) if artifact is not None else None)


def describe_checkpoint(payload: dict, checkpoint: str | Path) -> Sidecar:
    """The fields every artifact made from this checkpoint shares (the source named by path and checksum)."""
    described = describe_payload(payload, "onnx")
    described.source_checkpoint = {"path": str(checkpoint), "sha256": sha256_of(checkpoint)}
    return described


def write_sidecar(artifact: str | Path, sidecar: Sidecar) -> Path:
    path = sidecar_path(artifact)
    write_bytes_atomic(path, json.dumps(sidecar.to_dict(), indent=2, default=float).encode())
    return path


def _remake(artifact: str | Path) -> str:
    kind = kind_by_suffix(artifact) or ONNX
    return f"make it again with '{kind.made_by}'"


def read_info(path: str | Path, kind: ArtifactKind) -> Sidecar:
    """What an artifact says about itself, read without loading it: a checkpoint's payload, or the sidecar."""
    if not kind.has_sidecar:
        from edgekd.checkpoint import read_checkpoint
        return describe_payload(read_checkpoint(path), kind.name, path)
    return read_sidecar(path)


def _journal(artifact: str | Path) -> Path:
    return Path(artifact).with_name(f".{Path(artifact).name}.update.json")


def replace_together(artifact: str | Path, staged: list[tuple[Path, Path]]) -> None:
    """Move staged files (temp -> final: a graph and its sidecar) into place as one update. A journal naming the
    pairs is written first; a kill between the renames leaves it behind, and the next read of the artifact
    (read_sidecar) finishes the renames, so the graph and sidecar never stay from different updates."""
    journal = _journal(artifact)
    write_bytes_atomic(journal, json.dumps([[str(tmp), str(final)] for tmp, final in staged]).encode())
    for tmp, final in staged:
        os.replace(tmp, final)
    journal.unlink()


def update_pending(artifact: str | Path) -> bool:
    """An update's journal is there: its temps belong to it and must stay until it is finished."""
    return _journal(artifact).is_file()


def finish_interrupted_update(artifact: str | Path) -> bool:
    """Complete an update replace_together began and a kill cut short; True when there was one."""
    journal = _journal(artifact)
    if not journal.is_file():
        return False
    try:
        pairs = [(Path(tmp), Path(final)) for tmp, final in json.loads(journal.read_text())]
    except (OSError, ValueError, TypeError):
        journal.unlink(missing_ok=True)  # torn journal: it was never complete, so no rename had begun
        return False
    for tmp, final in pairs:
        if tmp.parent == journal.parent and tmp.is_file():  # already renamed when missing
            os.replace(tmp, final)
    journal.unlink(missing_ok=True)
    return True


def read_sidecar(artifact: str | Path) -> Sidecar:
    finish_interrupted_update(artifact)
    path = sidecar_path(artifact)
    if not path.is_file():
        raise EdgekdError(f"{artifact} has no sidecar {path}: {_remake(artifact)} (the sidecar holds its input size, "
                          "normalisation and thresholds, and both files travel together)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdError(f"sidecar {path} is not valid JSON ({exc.__class__.__name__}): {_remake(artifact)}") from None
    sidecar = Sidecar.from_dict(raw, str(path), _remake(artifact))
    sidecar.artifact = str(artifact)
    return sidecar


def check_single_graph(artifact: str | Path, info: Sidecar) -> None:
    """Servers (Triton, DeepStream, `edgekd serve`) run one graph per request: a teacher or student part of a
    split export (`--layout split`) is refused in one line."""
    if not info.is_single_graph:
        role = info.role if info.role != "detector" else "teacher or student"
        raise EdgekdError(f"{artifact} is one part of a split export ({role}): "
                          "export with --layout single for a server, which runs one graph per request")


# Fields the exporter stamps into the ONNX file itself (metadata_props) and that must agree with its sidecar: a
# sidecar copied from another model would otherwise bring its thresholds, input size or colour order along.
STAMPED_FIELDS = ("model", "precision", "layout", "input_size", "color", "thresholds", "source_sha256")


def stamped_fields(info: Sidecar) -> dict:
    """What the ONNX file carries about itself, taken from its description."""
    return {"model": info.model, "precision": info.precision, "layout": info.layout,
            "input_size": list(info.input_size), "color": info.input.color,
            "thresholds": info.thresholds, "source_sha256": info.source_sha256}


def check_onnx_matches_sidecar(artifact: str | Path, info: Sidecar, metadata: dict[str, str]) -> None:
    """Compare the ONNX file's own metadata with its sidecar; one line naming the first disagreement."""
    if not metadata.get("edgekd_version"):
        raise EdgekdError(f"{artifact} carries no edgekd metadata, so its sidecar cannot be checked against it: "
                          f"{_remake(artifact)}")
    if info.source_sha256 is None:
        raise EdgekdError(f"sidecar {sidecar_path(artifact)} lacks fields edgekd writes: {_remake(artifact)}")
    expected = stamped_fields(info)
    for key in STAMPED_FIELDS:
        raw = metadata.get(key)  # set_metadata stores text as it is and everything else as JSON
        try:
            stamped = raw if isinstance(expected[key], str) else json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            stamped = raw
        if stamped != expected[key]:
            raise EdgekdError(f"{artifact} and its sidecar {sidecar_path(artifact)} disagree on {key} (file: {stamped!r}, "
                              f"sidecar: {expected[key]!r}): they come from different exports; {_remake(artifact)}")


def check_engine_matches_sidecar(path: str | Path, info: Sidecar) -> None:
    """The plan is the one its sidecar describes (a copied sidecar, a half-copied or replaced plan are caught here,
    before TensorRT reads a byte of it)."""
    expected = info.engine_sha256
    if expected and sha256_of(path) != expected:
        source = (info.onnx or {}).get("path", "MODEL.onnx")
        raise EdgekdError(f"engine {path} does not match its sidecar {sidecar_path(path)} (different checksum): the "
                          f"plan was replaced, truncated or paired with another sidecar; rebuild it with "
                          f"'edgekd build-engine {source}'")


def onnx_metadata(path: str | Path, model=None) -> dict[str, str]:
    """The edgekd fields an ONNX file carries about itself (metadata_props); `model` when already loaded."""
    if model is None:
        import onnx
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises several types for damaged files
            raise EdgekdError(f"{path} is not a readable ONNX file ({exc.__class__.__name__}): {_remake(path)}") from None
    return {entry.key: entry.value for entry in model.metadata_props}


# How each kind's file is matched with its sidecar (the kinds table names the check in sidecar_check).
PAIR_CHECKS = {
    # a plan carries no metadata of its own: its bytes are the check
    "checksum": lambda path, info, metadata: check_engine_matches_sidecar(path, info),
    "graph metadata": lambda path, info, metadata: check_onnx_matches_sidecar(
        path, info, onnx_metadata(path) if metadata is None else metadata),
}


def check_artifact_pair(artifact: str | Path, info: Sidecar, metadata: dict[str, str] | None = None,
                        thresholds: bool = True) -> None:
    """What every consumer of an exported artifact checks before trusting its sidecar (the runtimes, `serve`,
    `export-triton`, `export-deepstream`, `doctor`): the file is the one the sidecar describes, and its thresholds
    are finite numbers (a NaN threshold would call every defect normal in any server that reads it). A runtime
    passes thresholds=False: it checks them on every use, and `calibrate` opens it to replace bad ones."""
    from edgekd.calibration import check_thresholds
    path = Path(artifact)
    kind = kind_by_suffix(path) or ONNX
    if kind.sidecar_check is not None:
        PAIR_CHECKS[kind.sidecar_check](path, info, metadata)
    if thresholds:
        check_thresholds(info.thresholds, str(path))
