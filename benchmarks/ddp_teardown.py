#!/usr/bin/env python
"""How often a two-rank gloo run aborts at exit, with the process group left to the interpreter's teardown and
with edgekd's order (the DDP wrapper dropped, then end_process_group).

Each round starts torchrun with 2 ranks that train a small DDP model a few steps, meet at a barrier and end the
group, rank 0 going on a moment longer (as train's rank 0 does). In the "outlives" mode the wrapper still holds
the group when the interpreter exits (what train did before); in the "edgekd" mode it goes first. Both modes run
interleaved, `--parallel` rounds at a time (a loaded machine makes the race likelier). An abort shows as exit code -6 and "terminate called without an active exception".
The abort is rare: on the 2-core VM of 2026-12-07, 4 of 220 "outlives" runs (in batches of 30-80) and none of 190
"edgekd" runs; a batch of 40 may show none, so run a few hundred rounds before reading a difference.

    python benchmarks/ddp_teardown.py --rounds 40 --parallel 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgekd.machine import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_files import write_results  # noqa: E402
from studies import folder_of  # noqa: E402

RANK_SCRIPT = '''
import os, sys, time, torch, torch.distributed as dist
from edgekd.distributed import end_process_group
dist.init_process_group("gloo")
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
wrapper = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # as train
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(20):
    loss = wrapper(torch.randn(16, 64)).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
total = torch.tensor([float(loss)])
dist.all_reduce(total)
dist.barrier()
if sys.argv[1] == "edgekd":
    del wrapper
end_process_group()
if os.environ["RANK"] == "0":
    time.sleep(0.2)  # rank 0 goes on (train calibrates) while the others exit
'''
MODES = ("outlives", "edgekd")


def one_round(script: Path, mode: str, port: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                           f"--master-port={port}", str(script), mode], capture_output=True, text=True)
    return {"mode": mode, "code": done.returncode,
            "aborted": "terminate called without an active exception" in done.stderr}


def report(payload: dict) -> str:
    lines = ["# Two-rank gloo runs: aborts at exit", "",
             f"{payload['rounds']} rounds per mode, {payload['parallel']} at a time, interleaved; "
             f"machine: {payload['machine']['cpu']} ({payload['machine']['cores']} cores); {payload['seconds']:.0f} s.", "",
             "| mode | runs | aborted at exit | other failures |", "|---|---|---|---|"]
    for mode in MODES:
        rows = [r for r in payload["runs"] if r["mode"] == mode]
        aborted = sum(r["aborted"] for r in rows)
        other = sum(bool(r["code"]) and not r["aborted"] for r in rows)
        lines.append(f"| {mode} | {len(rows)} | {aborted} | {other} |")
    lines += ["", "outlives: the DDP wrapper still holds the group when the interpreter exits (train before the fix); "
              "edgekd: the wrapper is dropped, then edgekd.distributed.end_process_group.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--port", type=int, default=31000)
    parser.add_argument("--out", type=Path, default=folder_of("DDP teardown"))
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "rank.py"
        script.write_text(RANK_SCRIPT)
        jobs = [(MODES[i % 2], args.port + i) for i in range(2 * args.rounds)]
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(pool.map(lambda job: one_round(script, *job), jobs))
    payload = {"rounds": args.rounds, "parallel": args.parallel, "machine": machine_info(),
               "seconds": time.time() - started, "runs": runs}
    write_results(args.out, "ddp_teardown", payload, report)


if __name__ == "__main__":
    main()
