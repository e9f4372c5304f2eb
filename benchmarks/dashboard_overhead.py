#!/usr/bin/env python
"""Does serving the dashboard slow detection? `edgekd run` on the same video, as fast as it goes, in four
conditions taken in interleaved turns for --rounds rounds:

  off          no --serve
  served       --serve 127.0.0.1:0, nobody watching
  viewer       a client that loads what the page loads (the MJPEG stream, status and scores twice a second,
               the gallery once a second) without rendering it: the server's share of the cost
  chromium     Debian's headless chromium showing the page: adds the browser's own rendering, which on a line runs
               on the operator's PC, here on the same 2 cores

FPS is counted from the run's JSONL over the frames captured after --settle-s seconds (the viewer or browser is
attached by then), so every condition is measured over the same kind of window. Ratios are to `off` in the same
round; medians are reported. Afterwards one paced run (--realtime) with chromium takes the README's screenshot.

    python benchmarks/dashboard_overhead.py runs/wood/export/wood.int8-ort.onnx --data data/synth --category wood
Writes dashboard_overhead.{json,md} and dashboard.png under benchmarks/results/dashboard-overhead/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.machine import machine_info
sys.path.insert(0, str(Path(__file__).resolve().parent))  # studies.py, however this is loaded
from studies import folder_of  # noqa: E402

RESULTS = folder_of("dashboard overhead")  # this study's folder (benchmarks/studies.py)
CONDITIONS = ("off", "served", "viewer", "chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage"]


def start_run(model: Path, video: Path, events: Path, serve: bool, threshold: float | None, realtime: bool = False):
    command = [sys.executable, "-m", "edgekd", "run", "--model", str(model), "--source", str(video), "--jsonl",
               str(events), "--stats-every", "0"]
    if serve:
        command += ["--serve", "127.0.0.1:0"]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    if realtime:
        command += ["--realtime"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = None
    if serve:
        for line in process.stderr:
            if match := re.search(r"dashboard at (http://\S+/)", line):
                url = match.group(1)
                break
        else:
            raise SystemExit(f"edgekd run did not start its dashboard: {process.communicate()}")
    return process, url


class Viewer:
    """What the page requests, without a browser: the stream is read whole, the JSON polled at the page's rates."""

    def __init__(self, url: str):
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        self.stop = threading.Event()
        self.frames = 0
        self.threads = [threading.Thread(target=body, daemon=True) for body in (self._stream, self._poll)]
        for thread in self.threads:
            thread.start()

    def _get(self, path: str) -> None:
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        try:
            connection.request("GET", path)
            connection.getresponse().read()
        finally:
            connection.close()

    def _stream(self) -> None:
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        try:
            connection.request("GET", "/stream.mjpg")
            response = connection.getresponse()
            while not self.stop.is_set():
                if not response.read(65536):
                    return
                self.frames += 1
        except OSError:
            return
        finally:
            connection.close()

    def _poll(self) -> None:
        tick = 0
        while not self.stop.wait(0.5):
            try:
                self._get("/api/status")
                self._get("/api/scores?since=-1" if tick == 0 else "/api/scores?since=1000000000")
                if tick % 2 == 0:
                    self._get("/api/defects")
            except OSError:
                return
            tick += 1

    def close(self) -> None:
        self.stop.set()


def fps_after(events: Path, settle_s: float) -> tuple[float, int]:
    times = np.array([json.loads(line)["time"] for line in events.read_text().splitlines()])
    kept = times[times >= times[0] + settle_s]
    if len(kept) < 20:
        raise SystemExit(f"only {len(kept)} frames after {settle_s} s: use a longer video (--frames)")
    return (len(kept) - 1) / (kept[-1] - kept[0]), len(kept)


def one_turn(condition: str, model: Path, video: Path, work: Path, settle_s: float, browser) -> dict:
    events = work / f"{condition}.jsonl"
    process, url = start_run(model, video, events, condition != "off", None)
    attached = None
    try:
        if condition == "viewer":
            attached = Viewer(url)
        elif condition == "chromium":
            attached = browser.new_page(viewport={"width": 1400, "height": 900})
            attached.goto(url)
        out, err = process.communicate(timeout=1800)
    finally:
        if attached is not None:  # the viewer or the page: both close()
            attached.close()
    if process.returncode != 0:
        raise SystemExit(f"edgekd run failed ({condition}): {err}")
    fps, frames = fps_after(events, settle_s)
    summary = json.loads(out.strip().splitlines()[-1])
    return {"fps": fps, "frames_measured": frames, "latency_ms_p50": summary["latency_ms_p50"],
            "latency_ms_p95": summary["latency_ms_p95"]}


def screenshot(model: Path, video: Path, work: Path, threshold: float | None, browser, out: Path) -> None:
    process, url = start_run(model, video, work / "shot.jsonl", True, threshold, realtime=True)
    page = browser.new_page(viewport={"width": 1400, "height": 860})
    try:
        page.goto(url)
        # polled from here: Playwright's wait_for_function uses eval(), which the page's CSP forbids
        deadline = time.monotonic() + 120
        while not page.evaluate("Array.from(document.querySelectorAll('#gallery img')).filter(i => i.complete)"
                                ".length >= 6 && Number(document.getElementById('frame').textContent) >= 300") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        page.wait_for_timeout(1500)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, page.screenshot(full_page=True))
    finally:
        page.close()
        process.terminate()
        process.communicate(timeout=60)


def write_results(rows: list[dict], args, chromium_version: str) -> dict:
    table = {}
    for condition in CONDITIONS:
        fps = [r["fps"] for r in rows if r["condition"] == condition]
        ratios = [r["fps"] / next(o["fps"] for o in rows if o["condition"] == "off" and o["round"] == r["round"])
                  for r in rows if r["condition"] == condition]
        table[condition] = {"fps_median": round(float(np.median(fps)), 2), "ratio_to_off_median": round(float(np.median(ratios)), 3),
                            "ratio_to_off_per_round": [round(x, 3) for x in ratios],
                            "latency_ms_p50_median": round(float(np.median([r["latency_ms_p50"] for r in rows
                                                                             if r["condition"] == condition])), 1)}
    result = {"machine": machine_info(), "chromium": chromium_version, "model": str(args.model),
              "frames": args.frames, "rounds": args.rounds, "settle_s": args.settle_s,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "conditions": table, "turns": rows}
    write_bytes_atomic(RESULTS / "dashboard_overhead.json", json.dumps(result, indent=2).encode())
    machine = result["machine"]
    lines = ["# Does the dashboard slow detection?", "",
             f"`python benchmarks/dashboard_overhead.py {args.model} --frames {args.frames} --rounds {args.rounds}` "
             f"on {result['when']}: {machine['cpu']}, {machine['cores']} cores; {chromium_version}.", "",
             f"`edgekd run` on a {args.frames}-frame line video as fast as it goes; FPS over the frames captured "
             f"after {args.settle_s:g} s; turns interleaved; ratio = FPS / FPS without --serve in the same round.", "",
             "| condition | FPS (median) | x no dashboard (median) | per round | latency p50 ms |", "|---|---|---|---|---|"]
    names = {"off": "no --serve", "served": "--serve, nobody watching",
             "viewer": "--serve, a client loading what the page loads", "chromium": "--serve, chromium showing the page "
             "(same 2 cores)"}
    for condition in CONDITIONS:
        row = table[condition]
        lines.append(f"| {names[condition]} | {row['fps_median']:.1f} | {row['ratio_to_off_median']:.3f} | "
                     f"{', '.join(f'{x:.2f}' for x in row['ratio_to_off_per_round'])} | {row['latency_ms_p50_median']:.0f} |")
    lines += ["", "The live picture is encoded only while someone watches, at most 10 times a second, in the "
              "dashboard's own thread; defect pictures once per defect second. On a line the browser runs on the "
              "operator's PC: the `viewer` row is what the Jetson pays; the `chromium` row adds a browser sharing "
              "this VM's 2 cores with the detector.", "", "![the dashboard](dashboard.png)", ""]
    write_bytes_atomic(RESULTS / "dashboard_overhead.md", "\n".join(lines).encode())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--category", default="wood")
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--threshold", type=float, default=None, help="for the screenshot run (default: the model's)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt install chromium")
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        video = work / "line.mp4"
        subprocess.run([sys.executable, "-m", "edgekd", "data", "video", str(args.data), str(video), "--category",
                        args.category, "--frames", str(args.frames), "--defect-every", "25", "--normal-part", "second"],
                       check=True, capture_output=True)
        rows = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                for round_index in range(args.rounds):
                    for condition in CONDITIONS:
                        row = one_turn(condition, args.model, video, work, args.settle_s, browser)
                        rows.append({"round": round_index, "condition": condition, **row})
                        print(f"round {round_index + 1}/{args.rounds} {condition:9s} {row['fps']:.1f} fps", flush=True)
                result = write_results(rows, args, version)
                short = work / "shot.mp4"
                subprocess.run([sys.executable, "-m", "edgekd", "data", "video", str(args.data), str(short),
                                "--category", args.category, "--frames", "480", "--defect-every", "40",
                                "--normal-part", "second", "--fps", "12"], check=True, capture_output=True)
                screenshot(args.model, short, work, args.threshold, browser, RESULTS / "dashboard.png")
            finally:
                browser.close()
    print(json.dumps(result["conditions"], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("EDGEKD_OFFLINE", "1")
    main()
