"""`edgekd train --nproc-per-node 2`: real torch.distributed (torchrun, gloo on CPU), compared with one process."""

import pytest

from cli_runner import edgekd
from edgekd.distributed import Rank, strip_launch_options
from edgekd.evaluate import evaluate
from edgekd.runtime.torch_backend import TorchRuntime
from edgekd.train import shard_of

from edgekd.config import DEFAULT_DETECTOR

COMMON = ["--config", DEFAULT_DETECTOR.parent / "rd_plain_lite0.yaml", "--set", "input_size=128",
          "--set", "train.batch_size=8", "--set", "train.seed=0"]


def test_launch_options_are_not_passed_to_the_ranks():
    argv = ["train", "--data", "d", "--nproc-per-node", "2", "--nnodes=1", "--master-port", "29511", "--epochs", "3"]
    assert strip_launch_options(argv) == ["train", "--data", "d", "--epochs", "3"]


def test_each_rank_trains_on_its_own_share():
    shares = [set(shard_of(10, Rank(r, 3, r))) for r in range(3)]
    assert set().union(*shares) == set(range(10)) and sum(map(len, shares)) == 10  # disjoint, all covered
    assert list(shard_of(4, None)) == [0, 1, 2, 3]


def test_the_process_group_goes_with_its_wrapper_not_in_the_teardown(monkeypatch):
    """The DDP test's rare abort ("terminate called without an active exception" in rank 1): the wrapper kept the
    gloo group alive past destroy_process_group into the interpreter's teardown. Ending the group must leave nothing
    of it behind, even a wrapper caught in a reference cycle."""
    import gc
    import socket
    import weakref
    import torch
    import torch.distributed as dist
    from edgekd.distributed import end_process_group
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    wrapper = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    wrapper(torch.ones(2, 4)).sum().backward()
    wrapper.cycle = [wrapper]  # only the collector frees it
    gone = weakref.ref(wrapper)
    gc.disable()
    try:
        del wrapper
        end_process_group()
        assert gone() is None and not dist.is_initialized()
    finally:
        gc.enable()


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(synth_root, tmp_path):
    one = edgekd("train", "--data", synth_root, "--category", "wood", "--out", tmp_path / "one", "--epochs", "4", *COMMON)
    assert one.returncode == 0, one.stderr
    two = edgekd("train", "--data", synth_root, "--category", "wood", "--out", tmp_path / "two", "--epochs", "2",
                 "--nproc-per-node", "2", "--master-port", "29513", *COMMON)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("checkpoint:") == 1 and two.stdout.count("trained rd") == 1  # rank 0 alone reports
    resumed = edgekd("train", "--data", synth_root, "--category", "wood", "--out", tmp_path / "two", "--epochs", "4",
                     "--resume", "--nproc-per-node", "2", "--master-port", "29514", *COMMON)
    assert resumed.returncode == 0, resumed.stderr
    assert "for 2 epochs (resumed after epoch 2)" in resumed.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix in (".ckpt", ".tmp")) == ["last.ckpt", "model.ckpt"]
    rows = {}
    for name in ("one", "two"):
        runtime = TorchRuntime.from_checkpoint(tmp_path / name / "model.ckpt")
        assert runtime.payload["training"]["epochs"] == 4
        rows[name] = evaluate(runtime, synth_root, "wood", tmp_path / f"eval-{name}", name).row
    # Same global batch and epochs, different batches drawn: the detectors agree within these margins.
    assert abs(rows["one"]["image_auroc"] - rows["two"]["image_auroc"]) <= 0.05, rows
    assert abs(rows["one"]["pixel_auroc"] - rows["two"]["pixel_auroc"]) <= 0.02, rows


def test_bad_input_fails_once_before_any_rank_starts(tmp_path):
    result = edgekd("train", "--data", tmp_path / "missing", "--nproc-per-node", "2")
    assert result.returncode != 0 and "torch.distributed" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


# -- the launcher: bad values before torchrun, nothing left behind, one line when a rank dies --------------------------
def test_impossible_launches_are_one_line_before_torchrun(synth_root, tmp_path):
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        for args, said in ((("--nproc-per-node", "100000"), "is more than this machine has"),
                           (("--nproc-per-node", "2", "--master-port", "70000"), "--master-port 70000 is not a port"),
                           (("--nproc-per-node", "2", "--master-port", str(busy)), f"--master-port {busy}:")):
            result = edgekd("train", "--data", synth_root, "--category", "wood", "--out", tmp_path / "run", *args)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode != 0 and len(lines) == 1 and said in lines[0], result.stderr
            assert "torch.distributed" not in result.stderr


def _children_of(pid: int) -> list[int]:
    from pathlib import Path
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    from pathlib import Path
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_long_training(synth_root, tmp_path, port):
    import subprocess
    import sys
    import time
    launcher = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "train", "--data", str(synth_root), "--category",
                                 "wood", "--out", str(tmp_path / "run"), "--epochs", "500", "--nproc-per-node", "2",
                                 "--master-port", str(port), *COMMON], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        torchrun = _children_of(launcher.pid)
        ranks = [r for t in torchrun for r in _children_of(t)]
        if len(ranks) == 2:
            time.sleep(3)  # past start-up, into training
            return launcher, torchrun, ranks
        time.sleep(0.2)
    launcher.kill()
    raise AssertionError("the ranks did not start")


@pytest.mark.slow
def test_killing_the_launcher_stops_torchrun_and_its_ranks(synth_root, tmp_path):
    import os
    import signal
    import time
    launcher, torchrun, ranks = _start_long_training(synth_root, tmp_path, 29531)
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in torchrun + ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in torchrun + ranks)


@pytest.mark.slow
def test_a_killed_rank_is_one_edgekd_line(synth_root, tmp_path):
    import os
    import signal
    launcher, _, ranks = _start_long_training(synth_root, tmp_path, 29532)
    os.kill(max(ranks), signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: distributed training stopped: rank") and "was killed by SIGKILL" in last, err
