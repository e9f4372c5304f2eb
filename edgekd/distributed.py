"""Training across processes and machines with torch.distributed: the launcher (torchrun) and what a rank needs.

`edgekd train --nproc-per-node N` starts N copies of the same command under torchrun (torch.distributed.run), which
sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address for each. Every rank trains its share of each batch
(DistributedDataParallel averages the gradients: NCCL on GPUs, gloo on CPUs); rank 0 alone shows progress,
writes checkpoints and sets the thresholds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

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
    import torch.distributed as dist
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


def launch(argv: list[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 29500) -> int:
    """Run `edgekd <argv>` as nproc_per_node ranks on this machine (of nnodes) under torchrun; returns its exit code."""
    if nproc_per_node < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise EdgekdError(f"--nproc-per-node {nproc_per_node}, --nnodes {nnodes} and --node-rank {node_rank} must be "
                          "positive, with the node rank below the number of nodes")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
               f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
               f"--master-port={master_port}", "-m", "edgekd.cli", *strip_launch_options(argv)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))}
    return subprocess.call(command, env=env)
