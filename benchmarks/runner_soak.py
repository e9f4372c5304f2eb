"""Memory of a long `edgekd run`: a live MJPEG stream that also drops out now and then, for --seconds, with the
process's resident memory sampled every second. Bounded queues and fixed-size statistics windows should keep it
flat after warm-up.

    python benchmarks/runner_soak.py --model export/wood.fp32.onnx --seconds 300

Writes benchmarks/results/runner-soak/runner_soak.{json,md,png}: RSS over time, its peak, its slope over the second half of
the run (after warm-up: onnxruntime grows its memory arena the first time a larger micro-batch comes through, e.g.
after a reconnect lets frames pile up), frames processed, reconnects.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mjpeg_server import MjpegServer  # noqa: E402  (the tests' live source: an HTTP MJPEG camera)

RESULTS = folder_of("runner soak")  # this study's folder (benchmarks/studies.py)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported .onnx (or any artifact)")
    parser.add_argument("--frames-from", type=Path, required=True, help="folder of images the fake camera shows")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    images = [cv2.imread(str(p)) for p in sorted(args.frames_from.glob("*.png"))[:20]]
    if not images:
        print(f"error: no .png images in {args.frames_from}", file=sys.stderr)
        return 2
    samples = []
    with tempfile.TemporaryDirectory() as scratch, \
            MjpegServer(images, frames_per_connection=int(args.fps * 60), fps=args.fps, offline_after_drop=2.0) as camera:
        events = Path(scratch) / "events.jsonl"
        process = subprocess.Popen([sys.executable, "-m", "edgekd", "run", "--source", camera.url, "--model",
                                    str(args.model), "--jsonl", str(events), "--save-masks", str(Path(scratch) / "m"),
                                    "--device", "cpu", "--stats-every", "30"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        while time.monotonic() - started < args.seconds and process.poll() is None:
            time.sleep(1.0)
            samples.append((round(time.monotonic() - started, 1), round(rss_mib(process.pid), 1)))
        process.terminate()
        out, err = process.communicate(timeout=60)
    if process.returncode != 0:
        print(err, file=sys.stderr)
        return 1
    summary = json.loads(out.strip().splitlines()[-1])
    times, rss = np.array(samples).T
    second_half = times >= times[-1] / 2
    slope = float(np.polyfit(times[second_half], rss[second_half], 1)[0]) * 60  # MiB per minute
    middle, last, peak = float(rss[second_half][0]), float(rss[-1]), float(rss.max())
    report = {"machine": machine_info(), "seconds": args.seconds, "fps": args.fps, "model": str(args.model),
              "rss_mib_peak": peak, "rss_mib_half_way": middle, "rss_mib_end": last,
              "second_half_slope_mib_per_min": round(slope, 3),
              "processed": summary["processed"], "dropped": summary["dropped"], "reconnects": summary["reconnects"],
              "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "runner_soak"
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2).encode())
    write_bytes_atomic(stem.with_suffix(".md"), (
        f"# Long run memory ({machine_info().get('cpu')} x{machine_info().get('cores')})\n\n"
        f"{args.seconds:g} s of a {args.fps:g} FPS live MJPEG stream that drops out every minute, JSONL and masks on.\n\n"
        f"| processed | dropped | reconnects | peak RSS (MiB) | RSS half-way | RSS at the end | slope, 2nd half (MiB/min) |\n"
        f"|---|---|---|---|---|---|---|\n| {summary['processed']} | {summary['dropped']} | {summary['reconnects']} | "
        f"{peak:.1f} | {middle:.1f} | {last:.1f} | {slope:+.3f} |\n").encode())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot(times, rss, color="#4477aa")
        ax.set_xlabel("seconds")
        ax.set_ylabel("resident memory (MiB)")
        ax.set_ylim(0, max(rss) * 1.2)
        ax.set_title(f"edgekd run, live stream with drop-outs: {summary['processed']} frames, "
                     f"{summary['reconnects']} reconnects")
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=110)
        plt.close(fig)
    except ImportError:
        pass
    print(f"RSS peak {peak:.1f} MiB, half-way {middle:.1f} -> end {last:.1f} ({slope:+.3f} MiB/min), "
          f"{summary['processed']} frames; wrote {stem}.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
