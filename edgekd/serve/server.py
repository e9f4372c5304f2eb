"""Start, watch and stop the tritonserver that nvidia-pytriton's wheel ships, with edgekd's models in it.

The Python backend runs each model in a stub process that embeds libpython. The stub links the shared libpython
of the Python version it was built for; under an interpreter other than the system's (pyenv, conda) the system
library would be picked up and fail, so the running interpreter's library folder goes first on
LD_LIBRARY_PATH, and the interpreter's import path is handed to the stub so it imports this edgekd and its
dependencies.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgekdError

INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0 (its wheel ships the tritonserver binary)"


@dataclass(frozen=True)
class Ports:
    http: int | None = 8000
    grpc: int | None = 8001
    metrics: int | None = 8002


def triton_home() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EdgekdError(f"the Triton server is not installed: {INSTALL_HINT}")
    home = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise EdgekdError(f"{home} has no bin/tritonserver: reinstall with {INSTALL_HINT}")
    return home


def backend_directory(work: Path) -> Path:
    """Triton's Python backend with the stub built for this interpreter's Python version."""
    home = triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (home / "python_backend_stubs").iterdir())
        raise EdgekdError(f"Triton's Python backend has no stub for Python {version} (it has {', '.join(have)}): "
                          "run edgekd under one of those")
    backends = work / "backends"
    shutil.copytree(home / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_environment() -> dict[str, str]:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    library = sysconfig.get_config_var("LDLIBRARY") or ""
    if not library.endswith(".so") and ".so." not in library or not (Path(libdir) / library).exists():
        raise EdgekdError(f"this Python ({sys.executable}) has no shared libpython ({library or 'none'} in {libdir}), which "
                          "Triton's Python backend needs: run edgekd under a Python built with --enable-shared")
    pytriton_libs = triton_home().parents[1] / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(pytriton_libs), env.get("LD_LIBRARY_PATH")) if p)
    # The stub's embedded Python finds its prefix (and so a virtual environment's site-packages) from the
    # `python` on PATH: this interpreter's. The import path covers editable installs and source checkouts.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).exists())
    env["PYTHONNOUSERSITE"] = "1"
    return env


def server_command(repository: Path, backends: Path, ports: Ports, exit_timeout_s: int) -> list[str]:
    command = [str(triton_home() / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", "--exit-on-error=true", "--strict-readiness=true",
               f"--exit-timeout-secs={exit_timeout_s}", "--log-verbose=0"]
    for name, port in (("http", ports.http), ("grpc", ports.grpc), ("metrics", ports.metrics)):
        command += [f"--allow-{name}=true", f"--{name}-port={port}"] if port else [f"--allow-{name}=false"]
    return command


class TritonServer:
    """A running tritonserver: start() returns when every model is ready (or raises with the server's reason)."""

    def __init__(self, repository: Path, ports: Ports, work: Path, exit_timeout_s: int = 30, log=print):
        self.repository, self.ports, self.work, self.log = repository, ports, work, log
        self.exit_timeout_s = exit_timeout_s
        self.process: subprocess.Popen | None = None
        self.log_path = work / "tritonserver.log"

    def start(self, models: list[str], timeout_s: float = 180.0) -> "TritonServer":
        backends = backend_directory(self.work)
        command = server_command(self.repository, backends, self.ports, self.exit_timeout_s)
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=server_environment(), stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EdgekdError(f"tritonserver stopped while loading: {self.failure_line()} (full log: {self.log_path})")
            if self.ready(models):
                return self
            time.sleep(0.25)
        self.stop()
        raise EdgekdError(f"tritonserver did not become ready within {timeout_s:.0f}s (log: {self.log_path})")

    def ready(self, models: list[str]) -> bool:
        if self.ports.http is None:
            return self.process is not None and self.process.poll() is None and self._log_says_started()
        try:
            for name in models:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.http}/v2/models/{name}/ready", timeout=1) as r:
                    if r.status != 200:
                        return False
            return True
        except OSError:
            return False

    def _log_says_started(self) -> bool:
        return b"Started GRPCInferenceService" in self.log_path.read_bytes()

    def failure_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        wanted = [line for line in lines if "failed to load" in line or "UNAVAILABLE" in line or "Error" in line]
        return (wanted or lines or ["no output"])[-1].strip()[:400]

    def request_stop(self) -> None:
        """SIGTERM, without waiting (safe in a signal handler): Triton stops taking requests, finishes the ones in
        flight (up to exit_timeout_s), then exits; wait() returns then."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """request_stop(), then wait for the exit (killing the server if it overstays its drain time)."""
        if self.process is None:
            return 0
        try:
            self.request_stop()
            return self.process.wait(timeout=self.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
        finally:
            self._log_file.close()
            reap_process_group(self.process.pid)

    def wait(self) -> int:
        while True:  # short waits, so a signal handler in this thread gets to run
            try:
                return self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue


SHM_PREFIX = b"triton_python_backend_shm_region_"


def reap_process_group(pgid: int, proc: Path = Path("/proc"), shm: Path = Path("/dev/shm")) -> int:
    """After tritonserver has exited: its Python-backend stubs share its process group (it was started in a session
    of its own) and outlive a server that crashed or was killed, each holding a shared-memory region. Kill what is
    left of the group and remove the regions its stubs named. Returns how many processes were left."""
    left, regions = 0, []
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        left += 1
        regions += [a.decode(errors="replace") for a in arguments if a.startswith(SHM_PREFIX)]
    if left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for region in regions:
        (shm / region).unlink(missing_ok=True)
    return left


def make_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgekd-serve-"))
