"""The operator dashboard's page in Debian's chromium, against `edgekd run --serve` on a video with defects at
known frames (the server's routes and rules are tests/test_dashboard.py)."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "s3cret-token-for-tests-0123"
BROWSER_DEFECTS = [30, 31, 32, 60, 84]
REQUIRED = os.environ.get("EDGEKD_REQUIRE_TOOLS") == "1"  # .ci/run installs chromium: no silent skip there
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-dev-shm-usage"]


def _chromium():
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("chromium is not installed (apt install chromium); .ci/run installs it")
        pytest.skip("chromium is not installed (apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            pytest.fail("playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed")
    return sync_playwright


class _Lines:
    """A subprocess's stderr, read by a thread so the test can wait for a line without blocking on the pipe."""

    def __init__(self, stream):
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(line) for line in stream], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in: {''.join(self.lines)}")


def _wait_in_page(page, expression: str, timeout: int) -> None:
    """Polls `expression` through the DevTools protocol. (Playwright's wait_for_function evaluates its predicate
    with eval() inside the page, which the dashboard's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never satisfied: {expression}")
        time.sleep(0.1)


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.mark.slow
def test_the_page_in_chromium_follows_a_run(onnx_exports, synth_root, tmp_path):
    from edgekd.data.layouts import load_dataset
    from edgekd.data.video import write_line_video
    from edgekd.stream.cli_run import run_stream
    from edgekd.stream.request import RunRequest
    sync_playwright = _chromium()
    video = write_line_video(load_dataset(synth_root, "wood"), tmp_path / "line.mp4", 96, BROWSER_DEFECTS,
                             fps=12.0)["video"]
    model = onnx_exports["fp32"]
    # The line's threshold sits between this clip's normal and defect scores, as a user calibrates it for a camera.
    scored = tmp_path / "scored.jsonl"
    run_stream(RunRequest(model=str(model), source=str(video), device="cpu", jsonl=scored, batch=4, stats_every=0.0),
               echo=lambda t: None)
    scores = np.array([json.loads(line)["score"] for line in scored.read_text().splitlines()])
    is_defect = np.isin(np.arange(96), BROWSER_DEFECTS)
    threshold = float((scores[is_defect].min() + scores[~is_defect].max()) / 2)
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edgekd", "run", "--model", str(model), "--source", str(video),
                                "--realtime", "--threshold", str(threshold), "--serve", "127.0.0.1:0", "--token-file",
                                str(token_file), "--jsonl", str(events), "--stats-every", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "EDGEKD_OFFLINE": "1"})
    try:
        stderr = _Lines(process.stderr)
        base = stderr.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+/)", 120).group(1)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                stranger = browser.new_page()
                response = stranger.goto(base)
                assert response.status == 401 and "token is required" in stranger.content()
                assert stranger.goto(base + "metrics").status == 401

                page = browser.new_page(viewport={"width": 1400, "height": 900})
                errors = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(f"{base}?token={TOKEN}")
                assert page.url == base  # the token moved into a cookie
                _wait_in_page(page, "document.getElementById('frame').textContent !== '-'", timeout=30_000)
                # the stream: the picture drawn now and a second later differ, because the line moved on
                _wait_in_page(page, "document.getElementById('stream').naturalWidth > 0", timeout=30_000)
                sample = """() => { const img = document.getElementById('stream'); const c = document.createElement('canvas');
                    c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');
                    g.drawImage(img, 0, 0); return Array.from(g.getImageData(0, 0, c.width, c.height).data
                    .filter((_, i) => i % 97 === 0)); }"""
                first_picture = page.evaluate(sample)
                first_points = int(page.get_attribute("#chart", "data-points"))
                first_frame = int(page.text_content("#frame"))
                page.wait_for_timeout(1500)
                assert page.evaluate(sample) != first_picture
                assert int(page.get_attribute("#chart", "data-points")) > first_points
                assert int(page.text_content("#frame")) > first_frame
                assert page.text_content("#verdict") in ("OK", "DEFECT")
                assert float(page.text_content("#threshold")) == pytest.approx(threshold, abs=1e-3)
                # a defect frame reaches the gallery, and it is one of the video's defect frames
                page.wait_for_selector("#gallery img", timeout=30_000)
                shown = [int(f) for f in page.eval_on_selector_all("#gallery img", "els => els.map(e => e.dataset.frame)")]
                assert shown and set(shown) <= set(BROWSER_DEFECTS), shown
                page.click("#gallery figure")
                _wait_in_page(page, "!document.getElementById('viewer').hidden && "
                                       "document.getElementById('viewer-image').naturalWidth > 0", timeout=10_000)
                assert f"frame {shown[0]}" in page.text_content("#viewer-caption")
                # /metrics counts frames as they go
                metrics = page.request.get(base + "metrics", headers=bearer).text()
                counted = _metric(metrics, "edgekd_frames_processed_total")
                page.wait_for_timeout(1000)
                later = _metric(page.request.get(base + "metrics", headers=bearer).text(),
                                "edgekd_frames_processed_total")
                assert 0 < counted < later <= 96
                assert page.request.get(base + "healthz", headers=bearer).json()["status"] == "ok"
                assert errors == []
            finally:
                browser.close()
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, "".join(stderr.lines)
    verdicts = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["frame"] for e in verdicts if e["verdict"] == "defect"] == BROWSER_DEFECTS
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["processed"] == 96 and summary["seconds"] >= 96 / 12 - 1.0  # --realtime held the video's pace
