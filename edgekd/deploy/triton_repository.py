"""`edgekd export-triton`: a Triton model repository a stock Triton container serves as it is.

    repo/NAME/config.pbtxt        platform, tensors (from the artifact), batching, instances, edgekd parameters
    repo/NAME/1/model.plan|.onnx  the engine or the ONNX graph
    repo/NAME/edgekd.json         the artifact's sidecar (thresholds, normalisation, provenance)
    repo/README.md                how to start the container on this repository (one section per model)

The thresholds and the input contract travel inside config.pbtxt as model parameters, so a client can read them
from the server (model config endpoint) instead of trusting a copy of the sidecar.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekd.atomic import write_bytes_atomic
from edgekd.deploy.artifact_io import (PLUGIN_LIBRARY, ArtifactIO, TensorSpec, check_loadable_by_full_tensorrt,
                                       read_artifact_io)
from edgekd.deploy.triton_parameters import check_model_name, model_parameters
from edgekd.artifact_kinds import KINDS
from edgekd.errors import EdgekdError

PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
DEFAULT_CONTAINER = "nvcr.io/nvidia/tritonserver:25.01-py3"


@dataclass(frozen=True)
class RepositoryOptions:
    name: str
    platform: str  # a key of PLATFORMS
    max_batch: int | None = None  # ONNX: the server's batch limit; engines: at most the profile's
    instances: int = 1
    kind: str = "KIND_GPU"  # or KIND_CPU (onnxruntime only)
    queue_delay_us: int = 2000
    container: str = DEFAULT_CONTAINER
    plugin: Path | None = None  # libedgekd_plugin.so, for engines whose scoring is the plugin layer


def default_name(artifact: Path) -> str:
    """wood.fp16.engine -> wood: the part before the first dot, as Triton model names go."""
    return artifact.name.split(".")[0]


def _tensor_block(tensors: tuple[TensorSpec, ...]) -> str:
    entries = []
    for t in tensors:
        # a per-image scalar (the score) is [1] to Triton, reshaped to what the model really has
        dims, reshape = (t.dims, "") if t.dims else ((1,), "\n    reshape: { shape: [ ] }")
        entries.append(f"  {{\n    name: \"{t.name}\"\n    data_type: {t.triton_type}\n"
                       f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n  }}")
    return "[\n" + ",\n".join(entries) + "\n]"


def _parameters(io: ArtifactIO) -> dict[str, str]:
    info = io.info
    return model_parameters(info.model, io.input_size, info.thresholds, precision=info.precision,
                            input=json.dumps({"color": info.input.color, "range": info.input.range,
                                              "layout": info.input.layout}),
                            category=str(info.category))


def config_text(io: ArtifactIO, options: RepositoryOptions, max_batch: int) -> str:
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b > 1})
    lines = [f"name: \"{options.name}\"", f"platform: \"{PLATFORMS[options.platform]}\"", f"max_batch_size: {max_batch}",
             f"input {_tensor_block(io.inputs)}", f"output {_tensor_block(io.outputs)}",
             "dynamic_batching {" + (f"\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else "")
             + f"\n  max_queue_delay_microseconds: {options.queue_delay_us}\n}}",
             f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]"]
    lines += [f"parameters: {{\n  key: \"{k}\"\n  value: {{ string_value: {json.dumps(v)} }}\n}}"
              for k, v in _parameters(io).items()]
    return "\n".join(lines) + "\n"


def _check(io: ArtifactIO, options: RepositoryOptions) -> int:
    """The batch limit, after the checks that must fail before anything is written."""
    check_model_name(options.name)
    if options.platform not in PLATFORMS:
        raise EdgekdError(f"--platform {options.platform!r} is unknown: use one of {', '.join(PLATFORMS)}")
    if options.platform != io.kind.triton_platform:
        want = next(f"{k.description} ({k.suffixes[0]}, from '{k.made_by}')" for k in KINDS
                    if k.triton_platform == options.platform)
        raise EdgekdError(f"--platform {options.platform} serves {want}, not {io.path.name}")
    if options.kind == "KIND_CPU" and options.platform == "tensorrt":
        raise EdgekdError("a TensorRT engine runs on a GPU only: use --kind gpu, or --platform onnxruntime with the ONNX")
    check_loadable_by_full_tensorrt(io, "stock Triton's tensorrt backend loads engines of full TensorRT only: build the "
                                    "engine with TensorRT (inside the Triton container: 'edgekd build-engine MODEL.onnx'), "
                                    "or serve the ONNX with --platform onnxruntime", options.plugin,
                                    "with the container's TensorRT")
    if options.max_batch is not None and options.max_batch < 1:
        raise EdgekdError(f"--max-batch must be at least 1, not {options.max_batch}")
    if io.max_batch is not None:
        if options.max_batch is not None and options.max_batch > io.max_batch:
            raise EdgekdError(f"--max-batch {options.max_batch} exceeds the engine's profile ({io.max_batch}): rebuild "
                              f"the engine with a larger --batch, or ask for at most {io.max_batch}")
        return options.max_batch or io.max_batch
    return options.max_batch or 16


def _readme_section(options: RepositoryOptions, io: ArtifactIO, max_batch: int) -> str:
    gpus = "--gpus all " if options.kind == "KIND_GPU" else ""
    plugin_mount = (f"-v \"$PWD/plugins:/plugins\" -e LD_PRELOAD=/plugins/{PLUGIN_LIBRARY} "
                    if options.plugin is not None else "")
    version = (io.info.tensorrt or {}).get("version")
    lines = [f"## {options.name}", "",
             f"{io.info.model} ({io.info.precision}) from `{io.path.name}`, served as `{PLATFORMS[options.platform]}`, "
             f"input `images` float32 NCHW RGB in [0, 1] at {io.input_size[0]}x{io.input_size[1]} "
             f"(normalisation is inside the model), up to {max_batch} images per batch; outputs "
             + ", ".join(f"`{o.name}`" for o in io.outputs) + ".", "",
             "Start the server on this repository (from the folder that holds it):", "", "```",
             f"docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$PWD:/models\" {plugin_mount}"
             f"{options.container} tritonserver --model-repository=/models", "```", ""]
    if version:
        lines += [f"The engine was built with TensorRT {version} for one GPU model: the container's TensorRT and the "
                  "GPU must be the same, or the model fails to load. Pick the container release whose TensorRT "
                  "matches (Triton's release notes list it), or rebuild the engine inside it.", ""]
    if options.plugin is not None:
        lines += [f"`plugins/{PLUGIN_LIBRARY}` registers the edgekd MultiScaleFeatureDiff layer the engine uses; "
                  "LD_PRELOAD loads it before Triton deserialises the engine.", ""]
    lines += ["Thresholds and the input contract are model parameters (`edgekd_*` in config.pbtxt); "
              f"`curl localhost:8000/v2/models/{options.name}/config` shows them. `edgekd.json` is the full sidecar.", ""]
    return "\n".join(lines)


def write_repository(artifact: str | Path, repo: str | Path, options: RepositoryOptions, overwrite: bool = False) -> Path:
    """Write (or replace, with overwrite) one model in a Triton repository; returns the model's folder."""
    io = read_artifact_io(artifact)
    max_batch = _check(io, options)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise EdgekdError(f"--repo {repo} is a file: name a folder for the model repository")
    target = repo / options.name
    if target.exists() and not overwrite:
        raise EdgekdError(f"{target} already exists: pass --overwrite to replace it, or --name for another model")
    staging = repo / f".{options.name}.partial"  # built aside, then swapped in: no half-written model is ever served
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "1").mkdir(parents=True)
        shutil.copyfile(io.path, staging / "1" / MODEL_FILES[PLATFORMS[options.platform]])
        shutil.copyfile(io.path.with_suffix(".json"), staging / "edgekd.json")
        (staging / "config.pbtxt").write_text(config_text(io, options, max_batch))
        if options.plugin is not None:
            (repo / "plugins").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(options.plugin, repo / "plugins" / PLUGIN_LIBRARY)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise EdgekdError(f"could not write the Triton repository at {repo} ({exc.strerror or exc}): check the path "
                          "and the free space") from None
    try:
        _update_readme(repo, options.name, _readme_section(options, io, max_batch))
    except OSError as exc:
        raise EdgekdError(f"could not write {repo / 'README.md'} ({exc.strerror or exc}): check the path") from None
    return target


def _update_readme(repo: Path, name: str, section: str) -> None:
    """repo/README.md keeps one section per model; writing a model replaces its own section only."""
    readme = repo / "README.md"
    header = "# Triton model repository written by edgekd\n\n"
    sections: dict[str, str] = {}
    if readme.is_file():
        text = readme.read_text()
        for chunk in text.split("\n## ")[1:]:
            sections[chunk.split("\n", 1)[0].strip()] = "## " + chunk.rstrip() + "\n"
    sections[name] = section.rstrip() + "\n"
    write_bytes_atomic(readme, (header + "\n".join(sections[k] for k in sorted(sections))).encode())
