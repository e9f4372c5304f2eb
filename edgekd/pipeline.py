"""From a checkpoint to what a runtime opens: checkpoint -> ONNX (edgekd/export/) -> engine (edgekd/engine/).
The way through the layers lives here, above both; `edgekd build-engine` and `edgekd benchmark` call it, and neither
layer imports the other."""

from __future__ import annotations

from pathlib import Path

from edgekd.artifact_kinds import CHECKPOINT, kind_by_suffix
from edgekd.engine.builder import EngineResult, build_engine


def engine_from(source: str | Path, out_dir: str | Path = "engines", precision: str = "fp16", batch: str = "1,4,8",
                workspace_gb: float = 2.0, timing_cache: str | Path | None = None, dla_core: int | None = None,
                flavour: str | None = None, export_dir: str | Path = "export", progress=None,
                plugin: bool | None = None) -> EngineResult:
    """A checkpoint is exported to ONNX at `precision` first (with the export's parity and accuracy checks); an ONNX
    file is built at the precision it was exported with."""
    source = Path(source)
    if kind_by_suffix(source) is CHECKPOINT:
        from edgekd.export.exporter import export_checkpoint
        source = export_checkpoint(source, precision, out_dir=export_dir, progress=progress).artifact
    return build_engine(source, out_dir, batch, workspace_gb, timing_cache, dla_core, flavour, plugin)
