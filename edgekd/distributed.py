"""Training across processes and machines with torch.distributed: the launcher (torchrun) and what a rank needs.

`edgekd train --nproc-per-node N` starts N copies of the same command under torchrun (torch.distributed.run), which
sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address for each. Every rank trains its share of each batch
(DistributedDataParallel averages the gradients: NCCL on GPUs, gloo on CPUs); rank 0 alone shows progress,
writes checkpoints and sets the thresholds.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from edgekd.errors import EdgekdError

LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def rank_from_environment() -> Rank | None:
    """This process's place when torchrun started it; None for a plain single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start_process_group(rank: Rank, device: torch.device) -> torch.device:
    """Join the group (NCCL for CUDA, gloo otherwise); a CUDA rank takes the GPU of its local rank."""
    import torch.distributed as dist
    if device.type == "cuda":
        if rank.local_rank >= torch.cuda.device_count():
            raise EdgekdError(f"local rank {rank.local_rank} has no GPU ({torch.cuda.device_count()} here): lower "
                              "--nproc-per-node to the number of GPUs")
        device = torch.device("cuda", rank.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def mean_over_ranks(value: float, device: torch.device) -> float:
    import torch.distributed as dist
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


def end_process_group() -> None:
    """Destroy the group once nothing holds it. The caller drops its DistributedDataParallel wrapper first (the
    reducer keeps a reference to the group); collecting here frees one kept alive by a reference cycle. A group
    that outlives destroy_process_group is destroyed in the interpreter's teardown instead, where its gloo threads
    race the other ranks' exit and abort the process ("terminate called without an active exception": 4 of 220
    two-rank runs on a 2-core machine, none of 190 with the wrapper dropped first; benchmarks/ddp_teardown.py)."""
    import gc
    import torch.distributed as dist
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def strip_launch_options(argv: list[str]) -> list[str]:
    """The command line without the launcher's own options (each rank runs the rest)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def check_launch(nproc_per_node: int, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> None:
    """Everything torchrun would fail on later (or hang on), as one line now."""
    if nproc_per_node < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise EdgekdError(f"--nproc-per-node {nproc_per_node}, --nnodes {nnodes} and --node-rank {node_rank} must be "
                          "positive, with the node rank below the number of nodes")
    slots = max(os.cpu_count() or 1, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if nproc_per_node > slots:
        raise EdgekdError(f"--nproc-per-node {nproc_per_node} is more than this machine has ({os.cpu_count()} CPU cores, "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} GPUs): use one process per GPU, "
                          "or at most one per core")
    if not 1 <= master_port <= 65535:
        raise EdgekdError(f"--master-port {master_port} is not a port: use 1-65535 (e.g. 29500)")
    if node_rank == 0:  # this machine hosts the rendezvous: the port must be free here
        try:
            infos = socket.getaddrinfo(master_addr, master_port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise EdgekdError(f"--master-addr {master_addr} does not resolve: give node 0's address") from None
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("" if nnodes > 1 else address[0], master_port))
            except OSError as exc:
                raise EdgekdError(f"--master-port {master_port}: {exc.strerror or exc} (another training run?): pick a "
                                  "free port, e.g. --master-port 29600") from None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, however it dies (torchrun then stops its ranks)."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


TORCHRUN_LOG = re.compile(r"[WEIF]\d{4} .*torch/distributed/")  # torchrun's own log lines (glog style)
# A traceback, torchrun's or a rank's (prefixed "[rankN]: "): a rank that lost its peer reports one before torchrun
RANK_TRACEBACK = re.compile(r"(\[rank\d+\]:\s*)?Traceback \(most recent call last\):")
FAILURE = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def launch(argv: list[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 29500) -> int:
    """Run `edgekd <argv>` as nproc_per_node ranks on this machine (of nnodes) under torchrun; returns its exit code.
    The ranks' own lines pass through; torchrun's failure report (a traceback) becomes one edgekd line, with the
    report kept in a file."""
    check_launch(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
               f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
               f"--master-port={master_port}", "-m", "edgekd.cli", *strip_launch_options(argv)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    report: list[str] = []
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        if report or RANK_TRACEBACK.match(line) or TORCHRUN_LOG.match(line):
            report.append(line)  # torchrun's own report from here on
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    code = process.wait()
    if code and report:
        text = "".join(report)
        kept = Path(tempfile.mkstemp(prefix="edgekd-torchrun-", suffix=".log")[1])
        kept.write_text(text)
        failed = FAILURE.search(text.split("Root Cause", 1)[-1])  # the first observed failure, not the ranks stopped after it
        who = (f"rank {failed.group(1)} {_how(int(failed.group(2)))}" if failed else f"torchrun exited with code {code}")
        raise EdgekdError(f"distributed training stopped: {who}; torchrun's report is in {kept}")
    return code


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
