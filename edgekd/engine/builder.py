"""`edgekd build-engine`: ONNX (or a checkpoint, exported first) -> a raw TensorRT plan + JSON sidecar.

The plan file holds nothing but the serialized engine, so trtexec, Triton and DeepStream load it as is;
what edgekd needs to know about it lives in the sidecar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.artifacts import check_onnx_matches_sidecar, read_sidecar, write_sidecar
from edgekd.sidecar import Sidecar
from edgekd.backbones.weights import sha256_of
from edgekd.atomic import write_bytes_atomic
from edgekd.engine.gpu import gpu_description
from edgekd.engine.trt import TensorRT, load_tensorrt
from edgekd.artifact_kinds import ONNX, kind_by_suffix
from edgekd.errors import EdgekdError
from edgekd.outputs import check_output_file, check_output_folder


@dataclass
class EngineResult:
    engine: Path
    sidecar: Path
    inputs: list[dict]
    outputs: list[dict]
    profile: dict
    seconds: float
    tensorrt: str
    extra_engines: list[Path] = field(default_factory=list)


def parse_batch(spec: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise EdgekdError(f"--batch '{spec}' is not MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX (e.g. 1,4,8)")
    return values[0], values[1], values[2]


def _collecting_logger(trt: TensorRT):
    class Collector(trt.module.ILogger):
        def __init__(self):
            super().__init__()
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.module.ILogger.Severity.ERROR:
                self.errors.append(msg)
    return Collector()


def plugin_by_default(trt: TensorRT) -> bool:
    """Full TensorRT imports the fused op as our plugin. TensorRT-RTX 1.7 aborts the process in its ONNX parser
    as soon as a Python-defined IPluginV3 is created (NVIDIA's own Python plugin sample does the same), so there
    the op is built from its ONNX function body."""
    return trt.flavour == "tensorrt"


def _onnx_for_parser(trt: TensorRT, onnx_path: Path, plugin: bool, parser) -> bytes:
    """The ONNX bytes to parse. With the plugin: register it; the node's `plugin_namespace` attribute makes the
    parser prefer it over the function body, and ENABLE_PLUGIN_OVERRIDE does the same for parsers that ignore the
    attribute (and for files exported before edgekd wrote it)."""
    if not plugin:
        return onnx_path.read_bytes()
    import onnx
    from edgekd.fused.onnx_function import fused_nodes
    from edgekd.fused.trt_plugin import NAMESPACE, register_plugin
    model = onnx.load(str(onnx_path))
    nodes = fused_nodes(model)
    if not nodes:
        return onnx_path.read_bytes()
    register_plugin(trt.module)
    if hasattr(trt.module.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.module.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    for node in nodes:
        if not any(a.name == "plugin_namespace" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("plugin_namespace", NAMESPACE))
    return model.SerializeToString()


def _parse(trt: TensorRT, builder, onnx_path: Path, logger, strongly_typed: bool, plugin: bool = False):
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.module.OnnxParser(network, logger)
    if not parser.parse(_onnx_for_parser(trt, onnx_path, plugin, parser)):
        error = parser.get_error(0)
        node = getattr(error, "node_name", lambda: "?")()
        op = getattr(error, "node_operator", lambda: "?")()
        desc = error.desc().splitlines()[0]
        raise EdgekdError(f"{trt.label} cannot parse {onnx_path}: node '{node}' (op {op}): {desc}")
    return network, parser


def _fused_op_form(network, info: Sidecar, trt: TensorRT) -> str:
    """How the engine computes the scoring: 'plugin' (one MultiScaleFeatureDiff plugin layer, whose creator must be
    registered before the plan is deserialised), 'function body' (stock layers from the ONNX function) or 'stock ops'."""
    kinds = {network.get_layer(i).type for i in range(network.num_layers)}
    plugin_kinds = {getattr(trt.module.LayerType, name) for name in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.module.LayerType, name)}
    if kinds & plugin_kinds:
        return "plugin"
    return "function body" if (info.fused_op or "function") == "function" else "stock ops"


def _tensor_info(tensor) -> dict:
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}


def check_onnx_file(onnx_path: Path, info: dict) -> None:
    """A readable ONNX model that matches its sidecar, before TensorRT parses it (whose own words for garbage
    are "Network must have at least one output")."""
    import onnx
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise EdgekdError(f"{onnx_path} is not a readable ONNX file ({exc.__class__.__name__}): re-export it with "
                          "'edgekd export model.ckpt'") from None
    check_onnx_matches_sidecar(onnx_path, info, {entry.key: entry.value for entry in model.metadata_props})


def build_from_onnx(onnx_path: Path, out_dir: Path, name: str, batch: tuple[int, int, int], workspace_gb: float,
                    timing_cache: Path | None, dla_core: int | None, flavour: str | None = None,
                    plugin: bool | None = None) -> EngineResult:
    info = read_sidecar(onnx_path)
    check_onnx_file(onnx_path, info)
    precision = info.precision
    if (info.int8_for or "tensorrt") != "tensorrt":
        raise EdgekdError(f"{onnx_path} is an INT8 export for onnxruntime (uint8 activations with zero points, which "
                          "TensorRT does not build): build from the checkpoint, or export with --int8-for tensorrt")
    trt = load_tensorrt(flavour)
    logger = _collecting_logger(trt)
    builder = trt.module.Builder(logger)
    # Strongly typed where it is the only mode (TensorRT 11, TensorRT-RTX) or for INT8 Q/DQ graphs; TensorRT 10.x
    # builds FP32 and FP16 ONNX weakly typed, FP16 with the builder flag, as JetPack users expect.
    strongly_typed = not trt.weakly_typed or precision == "int8"
    plugin = plugin_by_default(trt) if plugin is None else plugin
    network, _parser = _parse(trt, builder, onnx_path, logger, strongly_typed, plugin)
    fused_op = _fused_op_form(network, info, trt)
    config = builder.create_builder_config()
    if not strongly_typed and precision == "fp16":
        config.set_flag(trt.module.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.module.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))

    profile = builder.create_optimization_profile()
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = {}
    for tensor in inputs:
        dims = list(tensor.shape)
        if dims[0] != -1:
            raise EdgekdError(f"{onnx_path} input '{tensor.name}' has a fixed batch {dims[0]}: re-export it with "
                              "'edgekd export' (dynamic batch)")
        shapes[tensor.name] = [[b] + dims[1:] for b in batch]
        profile.set_shape(tensor.name, *shapes[tensor.name])
    config.add_optimization_profile(profile)

    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise EdgekdError(f"--dla-core {dla_core} asked for, but this platform has no DLA cores "
                              "(Jetson AGX Orin and Orin NX have two): drop --dla-core")
        config.default_device_type = trt.module.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.module.BuilderFlag.GPU_FALLBACK)

    cache = None
    if timing_cache is not None and trt.flavour == "tensorrt":  # TensorRT-RTX keeps no timing cache
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)

    started = time.time()
    plan = builder.build_serialized_network(network, config)
    seconds = time.time() - started
    if plan is None:
        detail = logger.errors[-1] if logger.errors else "no message"
        raise EdgekdError(f"{trt.label} could not build an engine from {onnx_path}: {detail}")

    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / f"{name}.engine"
    write_bytes_atomic(engine_path, bytes(plan))
    if cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    outputs = [_tensor_info(network.get_output(i)) for i in range(network.num_outputs)]
    sidecar = info.replace(
        kind="engine", engine_sha256=sha256_of(engine_path), onnx={"path": str(onnx_path), "sha256": sha256_of(onnx_path)},
        tensorrt={"flavour": trt.flavour, "version": trt.version, "strongly_typed": strongly_typed},
        built_on_gpu=gpu_description(), dla_core=dla_core,
        profile={"batch": {"min": batch[0], "opt": batch[1], "max": batch[2]}, "shapes": shapes},
        network={"inputs": [_tensor_info(t) for t in inputs], "outputs": outputs}, build_seconds=round(seconds, 2),
        workspace_gb=workspace_gb, fused_op=fused_op, timing_cache=str(timing_cache) if cache is not None else None)
    sidecar_path = write_sidecar(engine_path, sidecar)
    return EngineResult(engine_path, sidecar_path, sidecar.network["inputs"], outputs, sidecar.profile, seconds,
                        trt.label)


def build_engine(source: str | Path, out_dir: str | Path = "engines", batch: str = "1,4,8",
                 workspace_gb: float = 2.0, timing_cache: str | Path | None = None, dla_core: int | None = None,
                 flavour: str | None = None, plugin: bool | None = None) -> EngineResult:
    """An engine from an ONNX file, at the precision it was exported with (edgekd/pipeline.py takes a checkpoint
    there first)."""
    source, out_dir = Path(source), check_output_folder(out_dir, "--out")
    sizes = parse_batch(batch)
    if timing_cache is not None:
        check_output_file(timing_cache, "--timing-cache")
        if load_tensorrt(flavour).flavour != "tensorrt":
            raise EdgekdError("--timing-cache is for full TensorRT, and this build uses TensorRT-RTX, which keeps no "
                              "timing cache: drop --timing-cache")
    if kind_by_suffix(source) is not ONNX:
        raise EdgekdError(f"build-engine takes a .ckpt or an .onnx file, not {source}")
    if not source.is_file():
        raise EdgekdError(f"ONNX file {source} does not exist: create it with 'edgekd export'")
    info = read_sidecar(source)
    cache = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
    if info.layout != "split":
        return build_from_onnx(source, out_dir, source.stem, sizes, workspace_gb, cache, dla_core, flavour, plugin)
    # Split layout: one engine per graph; the teacher is the part that goes to a DLA core when asked.
    results = {role: build_from_onnx(source.parent / graph, out_dir, Path(graph).stem, sizes, workspace_gb, cache,
                                     dla_core if role == "teacher" else None, flavour, plugin)
               for role, graph in info.graphs.items()}
    engines = {role: r.engine.name for role, r in results.items()}
    for result in results.values():
        write_sidecar(result.engine, read_sidecar(result.engine).replace(graphs=engines))
    student = results["student"]
    student.extra_engines = [results["teacher"].engine]
    return student
