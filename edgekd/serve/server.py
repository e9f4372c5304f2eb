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
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgekd.deploy.triton_parameters import API_KEY_HEADER, api_key_headers
from edgekd.errors import EdgekdError

INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0 (its wheel ships the tritonserver binary)"


@dataclass(frozen=True)
class Ports:
    http: int | None = 8000
    grpc: int | None = 8001
    metrics: int | None = 8002


def serving_ports(http: int, grpc: int, metrics: int) -> Ports:
    """--http/--grpc/--metrics as given (0: that endpoint off), checked: in range, distinct, something to serve."""
    given = {"--http": http, "--grpc": grpc, "--metrics": metrics}
    for option, port in given.items():
        if not 0 <= port <= 65535:
            raise EdgekdError(f"{option} {port} is not a port: use 1-65535, or 0 to turn that endpoint off")
    used = [port for port in given.values() if port]
    if len(set(used)) != len(used):
        raise EdgekdError(f"two endpoints on port {next(p for p in used if used.count(p) > 1)}: give --http, --grpc "
                          "and --metrics different ports")
    if not http and not grpc:
        raise EdgekdError("--http 0 and --grpc 0 leave nothing to serve: keep at least one of them")
    return Ports(http or None, grpc or None, metrics or None)


# Triton's restricted APIs: with an API key every one of them needs the key header (HTTP) or metadata (gRPC).
RESTRICTED_APIS = "health,metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"


@dataclass(frozen=True)
class Exposure:
    """Where Triton listens and what guards it. Loopback needs nothing; any other address needs an API key, which
    Triton checks on every HTTP and gRPC API. Its metrics endpoint has no such check, so it stays on loopback."""
    address: str = "127.0.0.1"
    loopback: bool = True
    api_key: str | None = None

    @property
    def metrics_address(self) -> str:
        return self.address if self.loopback else "127.0.0.1"


def serving_exposure(address: str, api_key: str | None) -> Exposure:
    from edgekd.dashboard.access import parse_serve_address
    host = address.strip()
    parsed = parse_serve_address(f"[{host}]:0" if ":" in host else f"{host}:0")
    if not parsed.loopback and api_key is None:
        raise EdgekdError(f"--address {host} is reachable from other machines, and Triton would serve anyone there: "
                          "pass --api-key-file FILE (every HTTP and gRPC request must then carry it), or keep the default "
                          "127.0.0.1 and put a reverse proxy with authentication in front (docs/security.md)")
    return Exposure(host, parsed.loopback, api_key)


def check_ports_free(exposure: Exposure, ports: Ports) -> None:
    """A taken port is one line now, not a Triton start-up failure later."""
    for option, port, host in (("--http", ports.http, exposure.address), ("--grpc", ports.grpc, exposure.address),
                               ("--metrics", ports.metrics, exposure.metrics_address)):
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise EdgekdError(f"{option} {port} on {host}: {exc.strerror or exc} (another server?): pick another "
                                  "port, or stop what holds it (ss -ltnp)") from None


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


def server_command(repository: Path, backends: Path, ports: Ports, exit_timeout_s: int,
                   exposure: Exposure = Exposure()) -> list[str]:
    command = [str(triton_home() / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", "--exit-on-error=true", "--strict-readiness=true",
               f"--exit-timeout-secs={exit_timeout_s}", "--log-verbose=0"]
    addresses = {"http": exposure.address, "grpc": exposure.address, "metrics": exposure.metrics_address}
    for name, port in (("http", ports.http), ("grpc", ports.grpc), ("metrics", ports.metrics)):
        command += ([f"--allow-{name}=true", f"--{name}-port={port}", f"--{name}-address={addresses[name]}"] if port
                    else [f"--allow-{name}=false"])
    if exposure.api_key is not None:
        restriction = f"{RESTRICTED_APIS}:{API_KEY_HEADER}={exposure.api_key}"
        if ports.http:
            command.append(f"--http-restricted-api={restriction}")
        if ports.grpc:
            command.append(f"--grpc-restricted-protocol={restriction}")
    return command


class TritonServer:
    """A running tritonserver: start() returns when every model is ready (or raises with the server's reason)."""

    def __init__(self, repository: Path, ports: Ports, work: Path, exit_timeout_s: int = 30, log=print,
                 exposure: Exposure = Exposure()):
        self.repository, self.ports, self.work, self.log = repository, ports, work, log
        self.exit_timeout_s, self.exposure = exit_timeout_s, exposure
        self.process: subprocess.Popen | None = None
        self.watchdog: subprocess.Popen | None = None
        self.log_path = work / "tritonserver.log"

    def start(self, models: list[str], timeout_s: float = 180.0) -> "TritonServer":
        backends = backend_directory(self.work)
        command = server_command(self.repository, backends, self.ports, self.exit_timeout_s, self.exposure)
        self._log_file = open(self.log_path, "wb")
        # The watchdog starts first and outlives us: whenever this process ends, even by SIGKILL, its pipe closes and
        # the watchdog stops the server's whole process group (server and stubs), so nothing is left holding ports.
        self.watchdog = subprocess.Popen([sys.executable, "-m", "edgekd.serve.watchdog", str(self.exit_timeout_s)],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        self.process = subprocess.Popen(command, env=server_environment(), stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.watchdog.stdin.write(f"{self.process.pid}\n".encode())
        self.watchdog.stdin.flush()
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
        host = self.exposure.address if self.exposure.address not in ("0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        headers = api_key_headers("http", self.exposure.api_key) or {}
        try:
            for name in models:
                request = urllib.request.Request(f"http://{host}:{self.ports.http}/v2/models/{name}/ready", headers=headers)
                with urllib.request.urlopen(request, timeout=1) as r:
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
            if self.watchdog is not None:  # the server is gone: let the watchdog go too
                self.watchdog.stdin.close()
                self.watchdog.wait(timeout=10)

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
