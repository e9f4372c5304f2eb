"""A benchmark's report folder: report.md (the table users choose by), report.json, report.csv, PNG plots, and
the comparison with an earlier report."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np

from edgekd.atomic import write_bytes_atomic
from edgekd.bench.plan import OK, REFERENCES, Row
from edgekd.data.images import write_image_atomic
from edgekd.errors import EdgekdError

COLUMNS = ("model", "family", "backend", "precision", "batch", "status", "size_mb", "image_auroc", "pixel_auroc",
           "aupro", "dice", "area_ratio", "ms_p50", "ms_p99", "fps", "x_rd", "x_dskd", "mem_mb", "e2e_fps", "reason")
ACCURACY_SLACK = 0.5  # points of image AUROC / AUPRO a later run may lose before it counts as a regression
MIN_SPEED_SLACK = 0.05  # at least 5%: two runs on one machine rarely agree closer


def row_record(row: Row) -> dict:
    r = row.results
    return {"model": row.model.name, "family": row.model.family, "backend": row.backend, "precision": row.precision,
            "batch": row.batch, "status": row.status, "reason": row.reason, "artifact": str(row.artifact or ""),
            "size_mb": r.get("artifact_mb"), **{k: v for k, v in r.items() if k != "artifact_mb"}}


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ("image_auroc", "pixel_auroc", "aupro"):
        return f"{100 * value:.1f}"
    if column in ("x_rd", "x_dskd"):
        return f"{value:.2f}x"
    if column in ("dice", "area_ratio"):  # the masks at the pixel threshold: a fraction and a ratio, not %
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def where_it_ran(env: dict) -> list[str]:
    """The machine, one Markdown bullet per part, from machine.environment_info()."""
    gpu, nvidia, trt, ort = env.get("gpu"), env.get("nvidia"), env.get("tensorrt"), env.get("onnxruntime")
    gpu_text = f"{gpu['name']} (sm {gpu['compute_capability']})" if gpu else "none"
    if nvidia:
        gpu_text += f", driver {nvidia['driver']}"
    lines = [f"- CPU: {env.get('cpu')} ({env.get('cores')} cores), torch {env.get('torch')} "
             f"({env.get('torch_threads')} threads), Python {env.get('python')}",
             f"- GPU: {gpu_text}, CUDA {env.get('cuda') or '-'}",
             f"- TensorRT: {trt['flavour'] + ' ' + trt['version'] if trt else 'not installed'}",
             f"- onnxruntime: {ort['version'] + ' (' + ', '.join(ort['providers']) + ')' if ort else 'not installed'}"]
    if env.get("jetson"):
        lines.append(f"- Jetson: {env['jetson']}")
    if env.get("tegrastats"):
        lines.append(f"- tegrastats during the run: {env['tegrastats']}")
    return lines


def markdown(records: list[dict], environment: dict, outcome_notes: list[str], started: str, seconds: float,
             comparison: list[dict] | None = None) -> str:
    where = where_it_ran(environment)
    header = "| " + " | ".join(c for c in COLUMNS if c != "reason") + " |"
    lines = ["# edgekd benchmark\n", f"Run {started}, {seconds:.0f} s. Speed: median and p99 latency per call of the "
             "row's batch size, FPS = batch / median latency, all rows timed in the same interleaved rounds; "
             "x rd / x dskd = this row's FPS over the rd / dskd row with the same backend, precision and batch. "
             "mem_mb: peak resident memory of the row's artifact at its batch size, in a process of its own, above "
             "an interpreter with edgekd imported. "
             "Accuracy: the test split, as `edgekd eval` measures it; dice and area_ratio: the median over defect images "
             "of the mask at the artifact's pixel threshold against the true mask (Dice, predicted/true area).\n", "## Where it ran\n", *where, "",
             "## Rows\n", header, "|" + "---|" * (len(COLUMNS) - 1)]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(c), c) for c in COLUMNS if c != "reason") + " |")
    failed = [r for r in records if r["status"] != OK]
    if failed:
        lines += ["", "## Rows that did not run\n"]
        lines += [f"- {r['model']} {r['backend']} {r['precision']} batch {r['batch']}: {r['status']}: {r['reason']}"
                  for r in failed]
    if comparison is not None:
        lines += ["", "## Against the earlier report\n",
                  "A speed change counts only beyond the noise: twice the larger spread of per-round medians of the two "
                  f"runs, and at least {100 * MIN_SPEED_SLACK:.0f}%; accuracy beyond {ACCURACY_SLACK} points.\n",
                  "| row | FPS then | FPS now | change | noise (+-) | image AUROC change | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for c in comparison:
            lines.append(f"| {c['row']} | {_cell(c['fps_then'], 'fps')} | {_cell(c['fps_now'], 'fps')} | "
                         f"{_change(c)} | {100 * c['speed_slack']:.1f}% | "
                         f"{'-' if c['image_auroc_change'] is None else format(c['image_auroc_change'], '+.2f') + ' pts'}"
                         f" | {c['verdict']} |")
    for note in outcome_notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def csv_text(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({c: record.get(c) for c in COLUMNS})
    return buffer.getvalue()


def _change(c: dict) -> str:
    return "-" if c["fps_change"] is None else f"{100 * c['fps_change']:+.1f}%"


def comparison_lines(comparison: list[dict]) -> list[str]:
    """One line per compared row for the terminal: the change beside the noise that decides its verdict."""
    return [f"{c['row']}: FPS {_change(c)} (noise +-{100 * c['speed_slack']:.1f}%) -> {c['verdict']}"
            for c in comparison]


def _axes(width: int, height: int, title: str, x_label: str, y_label: str) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, title, (60, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(image, (60, height - 50), (width - 20, height - 50), (0, 0, 0), 1)
    cv2.line(image, (60, 45), (60, height - 50), (0, 0, 0), 1)
    cv2.putText(image, x_label, (width // 2 - 60, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, y_label, (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return image


REFERENCE_COLOURS = {"rd": ("red", (0, 0, 220)), "dskd": ("blue", (220, 80, 0))}


def fps_vs_accuracy_title(points: list[dict]) -> str:
    """The title names the colour of each reference family that has a point; others are grey."""
    present = [f"{family} {REFERENCE_COLOURS[family][0]}" for family in REFERENCE_COLOURS
               if any(p["family"] == family for p in points)]
    return "FPS vs image AUROC" + (f" ({', '.join(present)})" if present else "")


def fps_vs_accuracy_png(records: list[dict], path: Path) -> Path | None:
    """One point per row that has both figures; rd and dskd rows in their own colours."""
    points = [r for r in records if r["status"] == OK and r.get("fps") and r.get("image_auroc") is not None
              and not math.isnan(r["image_auroc"])]
    if not points:
        return None
    width, height = 900, 560
    image = _axes(width, height, fps_vs_accuracy_title(points), "frames per second (log)", "image AUROC %")
    fps = np.log10([p["fps"] for p in points])
    auroc = np.array([100 * p["image_auroc"] for p in points])
    fx0, fx1 = fps.min() - 0.1, fps.max() + 0.1
    ay0, ay1 = max(0.0, auroc.min() - 2), min(100.0, auroc.max() + 1) + 1e-6
    placed: list[tuple[int, int]] = []
    fastest = {}  # one label per model, at its fastest row: labels on every point would cover each other
    for index, p in enumerate(points):
        if p["model"] not in fastest or p["fps"] > points[fastest[p["model"]]]["fps"]:
            fastest[p["model"]] = index
    for index, (p, f, a) in enumerate(zip(points, fps, auroc)):
        x = int(60 + (f - fx0) / (fx1 - fx0) * (width - 100))
        y = int(height - 50 - (a - ay0) / (ay1 - ay0) * (height - 110))
        colour = REFERENCE_COLOURS.get(p["family"], ("grey", (60, 60, 60)))[1]
        if p["precision"] == "fp32":  # FP32 a ring, FP16 and INT8 a dot; batch 1 small, larger batches large
            cv2.circle(image, (x, y), 4 if p["batch"] == 1 else 7, colour, 2, cv2.LINE_AA)
        else:
            cv2.circle(image, (x, y), 4 if p["batch"] == 1 else 7, colour, -1, cv2.LINE_AA)
        if fastest[p["model"]] == index:
            ly = y - 8
            while any(abs(x - px) < 70 and abs(ly - py) < 14 for px, py in placed):
                ly -= 14  # stack labels of neighbouring points instead of printing them over each other
            placed.append((x, ly))
            cv2.putText(image, p["model"], (x + 9, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    cv2.putText(image, "ring: fp32, dot: fp16/int8; small: batch 1, large: larger batch", (width - 420, 28),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90, 90, 90), 1, cv2.LINE_AA)  # beside the title, off the axes
    for value in np.linspace(ay0, ay1, 5):
        y = int(height - 50 - (value - ay0) / (ay1 - ay0) * (height - 110))
        cv2.putText(image, f"{value:.1f}", (15, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for value in np.linspace(fx0, fx1, 5):
        x = int(60 + (value - fx0) / (fx1 - fx0) * (width - 100))
        cv2.putText(image, f"{10 ** value:.0f}", (x - 10, height - 33), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    write_image_atomic(path, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return path


def latency_png(records: list[dict], path: Path) -> Path | None:
    """Median (bar) and p99 (tick) latency per row."""
    rows = [r for r in records if r["status"] == OK and r.get("ms_p50")]
    if not rows:
        return None
    width, height = 900, 80 + 22 * len(rows)
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, "latency per call: median (bar), p99 (tick), ms", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (0, 0, 0), 1, cv2.LINE_AA)
    top = max(r["ms_p99"] for r in rows)
    for i, r in enumerate(rows):
        y = 50 + 22 * i
        label = f"{r['model']} {r['backend'][:4]} {r['precision']} b{r['batch']}"
        cv2.putText(image, label, (10, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x0, span = 330, width - 420
        cv2.rectangle(image, (x0, y + 2), (x0 + int(span * r["ms_p50"] / top), y + 16), (200, 140, 60), -1)
        tick = x0 + int(span * r["ms_p99"] / top)
        cv2.line(image, (tick, y), (tick, y + 18), (0, 0, 200), 2)
        cv2.putText(image, f"{r['ms_p50']:.1f} / {r['ms_p99']:.1f}", (width - 85, y + 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.38, (0, 0, 0), 1, cv2.LINE_AA)
    write_image_atomic(path, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return path


def read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgekdError(f"--compare {path} does not exist: pass the report.json of an earlier 'edgekd benchmark'") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgekdError(f"--compare {path} is not valid JSON: pass a report.json written by 'edgekd benchmark'") from None
    if not isinstance(report, dict) or report.get("format") != "edgekd-benchmark":
        raise EdgekdError(f"--compare {path} is not an edgekd benchmark report (report.json)")
    rows = report.get("rows")
    if not isinstance(rows, list):
        raise EdgekdError(f"--compare {path} has no list of rows: pass a report.json written by 'edgekd benchmark'")
    for index, row in enumerate(rows):  # checked now, not after the whole run's timing work
        problem = _row_problem(row)
        if problem:
            raise EdgekdError(f"--compare {path}: row {index} {problem}: pass an unedited report.json written by "
                              "'edgekd benchmark'")
    return report


def _row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "is not an object"
    missing = [k for k in ("model", "backend", "precision", "batch", "status") if k not in row]
    if missing:
        return f"lacks '{missing[0]}'"
    for key in ("fps", "noise", "image_auroc"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            return f"has a {key} that is not a finite number ({value!r})"
    return None


def compare(records: list[dict], earlier: dict) -> list[dict]:
    """Per row present in both: FPS and accuracy change, and whether it is a regression beyond the noise of
    either run (the spread of per-round medians; at least 5%) or beyond 0.5 accuracy points."""
    key = lambda r: (r["model"], r["backend"], r["precision"], r["batch"])
    then = {key(r): r for r in earlier.get("rows", [])}
    out = []
    for record in records:
        old = then.get(key(record))
        if old is None or record["status"] != OK or old.get("status") != OK:
            continue
        fps_change = record["fps"] / old["fps"] - 1 if old.get("fps") and record.get("fps") else None
        slack = max(MIN_SPEED_SLACK, 2 * (record.get("noise") or 0), 2 * (old.get("noise") or 0))
        auroc_change = None
        if record.get("image_auroc") is not None and old.get("image_auroc") is not None:
            auroc_change = round(100 * (record["image_auroc"] - old["image_auroc"]), 3)
        verdict = "same"
        if fps_change is not None and fps_change < -slack:
            verdict = "SLOWER"
        elif fps_change is not None and fps_change > slack:
            verdict = "faster"
        if auroc_change is not None and auroc_change < -ACCURACY_SLACK:
            verdict = "LESS ACCURATE" if verdict == "same" else verdict + ", LESS ACCURATE"
        out.append({"row": " ".join(map(str, key(record))), "fps_then": old.get("fps"), "fps_now": record.get("fps"),
                    "fps_change": None if fps_change is None else round(fps_change, 4), "speed_slack": round(slack, 4),
                    "image_auroc_change": auroc_change, "verdict": verdict})
    return out


def write_report(out: Path, rows: list[Row], environment: dict, started: str, seconds: float, notes: list[str],
                 earlier: dict | None = None) -> dict:
    records = [row_record(row) for row in rows]
    comparison = compare(records, earlier) if earlier is not None else None
    payload = {"format": "edgekd-benchmark", "version": 1, "started": started, "seconds": seconds,
               "environment": environment, "references": list(REFERENCES), "rows": records, "notes": notes,
               **({"comparison": comparison} if comparison is not None else {})}
    write_bytes_atomic(out / "report.json", json.dumps(payload, indent=2, default=str).encode())
    write_bytes_atomic(out / "report.csv", csv_text(records).encode())
    write_bytes_atomic(out / "report.md", markdown(records, environment, notes, started, seconds, comparison).encode())
    plots = [p for p in (fps_vs_accuracy_png(records, out / "fps_vs_accuracy.png"),
                         latency_png(records, out / "latency.png")) if p]
    payload["plots"] = [str(p) for p in plots]
    return payload
