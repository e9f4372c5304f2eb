"""`edgekd doctor`: what this machine has for edgekd, what is missing or wrong, and the one-line fix for each.

Every check reads files and asks libraries; nothing creates a TensorRT runtime (that segfaults without a GPU) or
opens a camera. Jetson facts come from the files JetPack writes (/etc/nv_tegra_release, nvpmodel's status, the CPU
frequency limits jetson_clocks pins, the DLA device nodes); `root` points all of them at another tree (tests).
With an artifact, the exit code says whether `edgekd run --model ARTIFACT` can work here.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.metadata
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

OK, MISSING, WRONG, INFO = "ok", "missing", "wrong", "info"
# L4T release -> JetPack (the major lines edgekd supports; others are reported as they are)
JETPACK = {"36.4": "6.1/6.2", "36.3": "6.0", "36.2": "6.0 DP", "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2"}
MIN_FREE_DISK_GB = 2.0
MIN_AVAILABLE_MEMORY_GB = 1.0


@dataclass
class Check:
    name: str
    status: str  # ok, missing, wrong, info (a fact, neither good nor bad)
    detail: str
    fix: str = ""
    blocks_run: bool = False  # with an artifact: this result means `edgekd run` cannot work


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # broken installs raise all kinds
        return False


def check_python() -> list[Check]:
    from edgekd import __version__
    version = platform.python_version()
    ok = sys.version_info >= (3, 10)
    return [Check("python", OK if ok else WRONG, f"{version} ({sys.executable})",
                  "" if ok else "edgekd needs Python >= 3.10: use JetPack 6's python3 or a newer interpreter"),
            Check("edgekd", OK, __version__)]


def check_torch() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("torch", MISSING, "not installed", "pip install torch (on a Jetson: NVIDIA's JetPack wheel)", True)]
    cuda = torch.version.cuda
    available = torch.cuda.is_available()
    status = OK if available or not cuda else WRONG
    detail = f"{torch.__version__}, CUDA build {cuda or 'none (CPU build)'}, CUDA usable: {available}"
    fix = "" if status == OK else "the CUDA build of torch sees no GPU: check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
    return [Check("torch", status, detail, fix)]


def check_gpus() -> list[Check]:
    from edgekd.engine.gpu import gpu_count, gpu_description
    count = gpu_count()
    if not count:
        return [Check("gpu", MISSING, "no NVIDIA GPU visible",
                      "engines need one: install the NVIDIA driver, or run .onnx artifacts with onnxruntime on the CPU")]
    names = [f"{d['name']} (sm {d['compute_capability']})" for d in (gpu_description(i) for i in range(count)) if d]
    return [Check("gpu", OK, f"{count}: " + ", ".join(names))]


def check_tensorrt(engines: Path | None) -> list[Check]:
    from edgekd.engine.trt import INSTALL_HINT, load_tensorrt
    try:
        trt = load_tensorrt()
    except Exception:
        return [Check("tensorrt", MISSING, "neither tensorrt nor tensorrt_rtx is importable", INSTALL_HINT)]
    checks = [Check("tensorrt", OK, trt.label)]
    if engines is not None:
        checks += check_engine_folder(engines, trt)
    return checks


def check_engine_folder(folder: Path, trt) -> list[Check]:
    """Whether each engine in the folder was built by this TensorRT for this GPU (from its sidecar)."""
    from edgekd.artifacts import read_sidecar
    from edgekd.engine.gpu import gpu_description
    from edgekd.runtime.tensorrt_backend import engine_mismatches
    if not folder.is_dir():
        return [Check("engines", MISSING, f"{folder} is not a folder", "pass the folder 'edgekd build-engine --out' wrote")]
    gpu = gpu_description()
    checks = []
    for engine in sorted(folder.glob("*.engine")) + sorted(folder.glob("*.plan")):
        try:
            info = read_sidecar(engine)
        except Exception as exc:
            checks.append(Check(f"engine {engine.name}", WRONG, str(exc).split(":")[0], "rebuild it with 'edgekd build-engine'"))
            continue
        made_for = info.built_on_gpu or {}
        problems = engine_mismatches(info, trt, gpu)
        if problems:
            checks.append(Check(f"engine {engine.name}", WRONG, "; ".join(p for p, _ in problems), problems[0][1]))
        else:
            checks.append(Check(f"engine {engine.name}", OK, f"{trt.label}" + (f", {made_for.get('name')}" if made_for else "")))
    return checks or [Check("engines", INFO, f"no .engine files in {folder}")]


def check_cuda_bindings() -> list[Check]:
    cuda_python, pycuda = _version("cuda-python") or _version("cuda-bindings"), _version("pycuda")
    found = ", ".join(f"{n} {v}" for n, v in (("cuda-python", cuda_python), ("pycuda", pycuda)) if v)
    checks = [Check("cuda bindings", OK if found else MISSING, found or "neither cuda-python nor pycuda",
                    "" if found else "engines need one: pip install 'edgekd[cuda]' (cuda-python)")]
    nvrtc = ctypes.util.find_library("nvrtc") or _version("nvidia-cuda-nvrtc") or _version("nvidia-cuda-nvrtc-cu12")
    checks.append(Check("nvrtc", OK if nvrtc else MISSING, str(nvrtc) if nvrtc else "not found",
                        "" if nvrtc else "the fused CUDA kernels compile with NVRTC: it comes with the CUDA toolkit and "
                        "JetPack, or pip install nvidia-cuda-nvrtc"))
    return checks


def check_onnxruntime() -> list[Check]:
    try:
        import onnxruntime as ort
    except ImportError:
        return [Check("onnxruntime", MISSING, "not installed", "pip install onnxruntime (onnxruntime-gpu for CUDA)")]
    return [Check("onnxruntime", OK, f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}")]


def opencv_build(info: str) -> dict[str, bool]:
    """GStreamer / FFMPEG / V4L2 support from cv2.getBuildInformation()'s Video I/O section."""
    def has(pattern: str) -> bool:
        match = re.search(pattern + r"\s*:\s*(\S+)", info, re.IGNORECASE)
        return bool(match) and match.group(1).upper().startswith(("YES", "ON"))
    return {"gstreamer": has(r"GStreamer"), "ffmpeg": has(r"FFMPEG"), "v4l2": has(r"v4l/v4l2")}


def check_opencv(jetson: bool) -> list[Check]:
    try:
        import cv2
    except ImportError:
        return [Check("opencv", MISSING, "not installed", "pip install opencv-python (JetPack: python3-opencv)", True)]
    build = opencv_build(cv2.getBuildInformation())
    detail = f"{cv2.__version__}: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in build.items())
    if jetson and not build["gstreamer"]:
        return [Check("opencv", WRONG, detail, "CSI cameras and hardware decoding need GStreamer: use JetPack's OpenCV "
                      "(pip uninstall opencv-python; the venv sees the system's python3-opencv)")]
    return [Check("opencv", OK, detail)]


def check_cameras(root: Path) -> list[Check]:
    videos = sorted(p.name for p in (root / "dev").glob("video*"))
    checks = [Check("cameras", OK if videos else INFO, ", ".join(f"/dev/{v}" for v in videos) if videos else
                    "no /dev/video* (no USB/V4L2 camera plugged in)")]
    if (root / "usr" / "sbin" / "nvargus-daemon").exists():
        checks.append(Check("csi", OK, "nvargus-daemon installed (CSI cameras: --source csi://N)"))
    return checks


def jetson_release(root: Path) -> str | None:
    path = root / "etc" / "nv_tegra_release"
    if not path.is_file():
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", path.read_text(errors="replace"))
    return f"{match.group(1)}.{match.group(2).split('.')[0]}" if match else "unknown"


def check_jetson(root: Path) -> list[Check]:
    release = jetson_release(root)
    if release is None:
        return [Check("jetson", INFO, "not a Jetson (no /etc/nv_tegra_release)")]
    jetpack = JETPACK.get(release)
    checks = [Check("jetpack", OK if jetpack and jetpack.startswith("6") else WRONG,
                    f"L4T {release} (JetPack {jetpack or 'unknown'})",
                    "" if jetpack and jetpack.startswith("6") else "edgekd's Jetson kit targets JetPack 6.x: flash it with SDK Manager")]
    status = root / "var" / "lib" / "nvpmodel" / "status"
    mode = re.search(r"pmode:(\d+)", status.read_text()) if status.is_file() else None
    checks.append(Check("nvpmodel", OK if mode and int(mode.group(1)) == 0 else WRONG,
                        f"mode {int(mode.group(1))}" if mode else "mode unknown",
                        "" if mode and int(mode.group(1)) == 0 else "for the full clock budget: sudo nvpmodel -m 0"))
    cpufreq = root / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    try:
        pinned = (cpufreq / "scaling_min_freq").read_text().strip() == (cpufreq / "scaling_max_freq").read_text().strip()
    except OSError:
        pinned = None
    checks.append(Check("jetson_clocks", OK if pinned else WRONG, "clocks pinned at maximum" if pinned else
                        "clocks scale with load" if pinned is False else "cpufreq not readable",
                        "" if pinned else "steady frame times: sudo jetson_clocks (jetson/setup.sh enables it at boot)"))
    dla = sorted((root / "dev").glob("nvhost-nvdla*")) + sorted((root / "dev").glob("nvhost-ctrl-nvdla*"))
    cores = len({p.name[-1] for p in dla})
    checks.append(Check("dla", INFO, f"{cores} DLA core(s)" + (": edgekd build-engine --dla-core N" if cores else "")))
    return checks


def check_resources(root: Path, where: Path) -> list[Check]:
    free_gb = shutil.disk_usage(where).free / 2**30
    checks = [Check("disk", OK if free_gb >= MIN_FREE_DISK_GB else WRONG, f"{free_gb:.1f} GiB free at {where}",
                    "" if free_gb >= MIN_FREE_DISK_GB else "videos, masks and engines need room: free some space")]
    meminfo = root / "proc" / "meminfo"
    match = re.search(r"MemAvailable:\s*(\d+)", meminfo.read_text()) if meminfo.is_file() else None
    if match:
        available = int(match.group(1)) / 2**20
        checks.append(Check("memory", OK if available >= MIN_AVAILABLE_MEMORY_GB else WRONG, f"{available:.1f} GiB available",
                            "" if available >= MIN_AVAILABLE_MEMORY_GB else "close other programs (or add swap on a Jetson)"))
    return checks


def check_artifact(path: Path) -> list[Check]:
    """Can `edgekd run --model PATH` work here? Asks what opening it would ask, without loading a TensorRT runtime."""
    from edgekd.errors import EdgekdError
    from edgekd.artifact_kinds import kind_of
    try:
        if not path.is_file():
            raise EdgekdError(f"{path} does not exist: pass a model.ckpt, .onnx or .engine")
        from edgekd.calibration import Thresholds
        kind = kind_of(path)
        if not kind.loads_without_gpu:  # no TensorRT runtime without a GPU (it crashes the process): its checks only
            from edgekd.runtime.tensorrt_backend import check_engine_compatible
            from edgekd.artifacts import read_info
            info = read_info(path, kind)
            check_engine_compatible(path, info)
            thresholds = info.thresholds
        else:
            from edgekd.runtime import open_runtime
            with open_runtime(path, kind.backend, "cpu") as runtime:  # what `edgekd run` opens: model built, pair checked
                thresholds = runtime.thresholds  # a NaN threshold is refused here as `edgekd run` would
        Thresholds.resolve(thresholds, None)  # and a missing one, as `edgekd run` refuses it
    except EdgekdError as exc:
        message = str(exc)
        detail, _, fix = message.partition(": ")
        return [Check(f"artifact {path.name}", WRONG, detail, fix or message, blocks_run=True)]
    return [Check(f"artifact {path.name}", OK, f"edgekd run can open it ({kind.backend})")]


def diagnose(artifact: Path | None = None, engines: Path | None = None, root: Path = Path("/"),
             where: Path = Path(".")) -> list[Check]:
    jetson = jetson_release(root) is not None
    checks = [*check_python(), *check_torch(), *check_gpus(), *check_tensorrt(engines), *check_cuda_bindings(),
              *check_onnxruntime(), *check_opencv(jetson), *check_cameras(root), *check_jetson(root),
              *check_resources(root, where)]
    if artifact is not None:
        checks += check_artifact(artifact)
    return checks


def exit_code(checks: list[Check], artifact: Path | None) -> int:
    """0: `edgekd run` can work (with the artifact, when one is given); 1: it cannot."""
    return 1 if any(c.blocks_run and c.status != OK for c in checks) else 0


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<8} {c.name:<{width}}  {c.detail}" + (f"\n{'':<8} {'':<{width}}  fix: {c.fix}" if c.fix else ""))
    return "\n".join(lines)
