"""The kinds of artifact edgekd runs, in one table: how each is recognised (suffix, first bytes), which runtime opens
it, where its thresholds live, what reading it without loading needs, and what serving and Triton need to know.
A new backend is one runtime module plus one row here; nothing else asks "which kind is this?" with its own rule.

The table is the bottom layer: it imports nothing of edgekd's but errors and named.resolve, and opens a runtime by
the module name in its row, so the runtimes (above it) register themselves by name only.

The split export (a teacher and a student graph) is an ONNX or engine whose sidecar has `layout: split`; the
runtimes that can run it say so, the others refuse it with `check_single_graph`. A Triton URL (grpc://, http://) is
the server's model, opened by `edgekd run --server` (edgekd/runtime/triton_client.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgekdError
from edgekd.named import resolve


@dataclass(frozen=True)
class ArtifactKind:
    name: str  # checkpoint, onnx, engine
    backend: str  # the runtime that opens it (--backend names it)
    suffixes: tuple[str, ...]
    description: str  # "a PyTorch checkpoint", for messages
    made_by: str  # how a user makes one: the fix when it is missing or wrong
    thresholds_in: str  # where calibrate writes thresholds: checkpoint, graph+sidecar or sidecar
    opener: str  # "module:callable(path, device, cuda_graph)" that returns the Runtime, imported when used
    loads_without_gpu: bool  # False: opening needs an NVIDIA GPU (doctor and serve check the sidecar instead)
    triton_platform: str | None  # its platform in a stock Triton repository; None: not served as is
    sidecar_check: str | None  # how check_artifact_pair (edgekd/artifacts.py) matches its sidecar; None: none
    magic: bytes | None = None  # first bytes that say so (engines have none of their own)
    runs_in_torch: bool = False  # opened by PyTorch in this process (memory is read from torch's allocator)

    @property
    def has_sidecar(self) -> bool:
        return self.thresholds_in != "checkpoint"

    def open(self, path: Path, device: str = "auto", cuda_graph: bool = False):
        return resolve(self.opener)(path, device, cuda_graph)


CHECKPOINT = ArtifactKind("checkpoint", "torch", (".ckpt", ".pt"), "a PyTorch checkpoint", "edgekd train",
                          "checkpoint", "edgekd.runtime.torch_backend:open_checkpoint", True, None, None,
                          b"PK\x03\x04", runs_in_torch=True)
ONNX = ArtifactKind("onnx", "onnxruntime", (".onnx",), "an ONNX graph", "edgekd export model.ckpt", "graph+sidecar",
                    "edgekd.runtime.onnx_backend:open_onnx", True, "onnxruntime", "graph metadata", b"\x08")
ENGINE = ArtifactKind("engine", "tensorrt", (".engine", ".plan"), "a TensorRT engine", "edgekd build-engine MODEL.onnx",
                      "sidecar", "edgekd.runtime.tensorrt_backend:open_engine", False, "tensorrt", "checksum")
KINDS: tuple[ArtifactKind, ...] = (CHECKPOINT, ONNX, ENGINE)
BACKENDS = tuple(kind.backend for kind in KINDS)


def kind_for_backend(backend: str) -> ArtifactKind:
    for kind in KINDS:
        if kind.backend == backend:
            return kind
    raise EdgekdError(f"unknown backend '{backend}': use {', '.join(BACKENDS)}")


def kind_by_suffix(path: str | Path) -> ArtifactKind | None:
    suffix = Path(path).suffix.lower()
    return next((kind for kind in KINDS if suffix in kind.suffixes), None)


def kind_by_content(path: str | Path) -> ArtifactKind | None:
    """What the file's first bytes say it is: torch.save writes a zip; an ONNX ModelProto starts with its ir_version
    field (tag 0x08). None when the bytes do not tell (engines, garbage)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return None
    return next((kind for kind in KINDS if kind.magic and head.startswith(kind.magic)), None)


def kind_of(path: str | Path, backend: str | None = None) -> ArtifactKind:
    """The kind a path is opened as: --backend when given, else its suffix; then its content must agree."""
    path = Path(path)
    kind = kind_for_backend(backend) if backend else kind_by_suffix(path)
    if kind is None:
        names = ", ".join(s for k in KINDS for s in k.suffixes[:1])
        raise EdgekdError(f"cannot tell the backend of {path} from its suffix '{path.suffix.lower()}': pass a "
                          f"{names} file, or --backend")
    if not path.is_file():
        return kind  # each runtime says how to create the missing file
    named = kind_by_suffix(path)
    if backend and named and named is not kind:
        fix = (f"export it first ('edgekd export {path}')" if named is CHECKPOINT else
               f"build an engine first ('edgekd build-engine {path}')" if kind is ENGINE else "drop --backend")
        raise EdgekdError(f"--backend {kind.backend} runs {kind.description}, and {path} is {named.description}: {fix}")
    found = kind_by_content(path)
    if found is not None and found is not kind:
        raise EdgekdError(f"{path} is {found.description}, not {kind.description} as its name says: rename it to "
                          f"{found.suffixes[0]}, or pass the file you meant")
    return kind

