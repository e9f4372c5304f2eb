"""Which detectors a benchmark compares: checkpoints and artifacts given on the command line, or one model per
family trained first with that family's config."""

from __future__ import annotations

from pathlib import Path

from edgekd.bench.plan import Model, unique_names
from edgekd.errors import EdgekdError

CONFIG_OF = {"vitkd": "vitkd_vit_b16.yaml"}  # every other family: <family>_lite0.yaml
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def model_from_file(path: Path) -> Model:
    from edgekd.artifact_kinds import kind_of
    from edgekd.artifacts import read_info
    from edgekd.export.exporter import default_name
    if not path.is_file():
        raise EdgekdError(f"{path} does not exist: pass model.ckpt files (or exported .onnx / .engine files)")
    kind = kind_of(path)
    info = read_info(path, kind)
    if not kind.has_sidecar:  # a checkpoint: exported to each precision by the benchmark itself
        return Model(default_name(path), info.model, path)
    return Model(f"{path.stem}", info.model, None, path, kind.backend, info.precision)


def config_for(family: str, configs: Path) -> Path:
    path = configs / CONFIG_OF.get(family, f"{family}_lite0.yaml")
    if not path.is_file():
        raise EdgekdError(f"no config for family '{family}' at {path}: pass --configs, the folder of edgekd's configs/")
    return path


def trained_models(families: list[str], configs: Path, data: Path, category: str | None, out: Path,
                   epochs: int | None, overrides: list[str], log=lambda text: None) -> list[Model]:
    """Train one model per family (its config, --epochs and --set applied); an existing model.ckpt in the run
    folder is reused, so an interrupted benchmark picks up where it stopped."""
    from edgekd.config import load_config
    from edgekd.train import train
    paths = {family: config_for(family, configs) for family in families}  # every config checked before training
    configs_loaded = {family: load_config(path, overrides + ([f"train.epochs={epochs}"] if epochs else []))
                      for family, path in paths.items()}
    models = []
    for family in families:
        run = out / family
        if not (run / "model.ckpt").is_file():
            log(f"training {family} ({paths[family].name}) into {run}")
            try:
                train(configs_loaded[family], data, category, run)
            except EdgekdError as exc:  # e.g. a teacher whose weights are not on this machine: its rows say so
                log(f"training {family} failed: {exc}")
                models.append(Model(family, family, None, error=f"training failed: {exc}"))
                continue
        models.append(Model(family, family, run / "model.ckpt"))
    return models


def check_families(text: str) -> list[str]:
    from edgekd.models import available_models
    families = [f.strip().lower() for f in text.split(",") if f.strip()]
    known = available_models()
    unknown = [f for f in families if f not in known]
    if unknown or not families:
        raise EdgekdError(f"--families '{text}': {', '.join(unknown) or 'nothing given'} is not a model family "
                          f"(known: {', '.join(known)})")
    return list(dict.fromkeys(families))


def gather(files: list[Path], families: list[str] | None) -> list[Model]:
    models = [model_from_file(Path(f)) for f in files]
    if families:
        models = [m for m in models if m.family in families]
    if not models:
        raise EdgekdError("nothing to benchmark: pass model.ckpt files, or --families rd,dskd --train --data ...")
    return unique_names(models)
