#!/usr/bin/env python
"""Every result under benchmarks/results/, as studies: the question each answers, the script that measures it,
today's figure and the runs it replaced. `python benchmarks/studies.py` writes benchmarks/results/INDEX.md from
this table (date from git, machine from the result itself); tests/test_docs.py checks that the index is current and
that every result file belongs to exactly one study.

Each study has its own folder, benchmarks/results/<study>/ (its name in lower case, words joined by '-'), where its
script writes by default. A study's `files` are its current results there (the first is the one to read);
`superseded` are earlier runs kept for the record (an earlier default, a replaced method), under the study's
archive/ folder and listed apart, so a reader finds today's figure first.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
INDEX = RESULTS / "INDEX.md"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    script: str
    files: tuple[str, ...]
    superseded: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return slug(self.name)

    def paths(self) -> tuple[list[str], list[str]]:
        """(current, superseded) files, relative to benchmarks/results/."""
        return ([posixpath.normpath(f"{self.folder}/{f}") for f in self.files],
                [f"{self.folder}/{ARCHIVE}{f}" for f in self.superseded])


STUDIES = (
    Study("real-texture accuracy", "How accurate is the default detector on real surfaces, beside anomalib?",
          "real_texture_accuracy.py, colour_forms.py, stain_detectability.py",
          ("real_textures_layout.md", "real_textures_layout.json", "real_textures_tried.md", "colour_forms.md",
           "colour_forms.json", "stain_detectability.md", "stain_detectability.json", *(f"real32_{run}.{ext}" for run in ("final_a", "final_b", "linear_a", "linear_b",
                                                                    "plain", "default", "others", "auto_a", "auto_b",
                                                                    "floor_a", "floor_b", "grey_b")
                                  for ext in ("md", "json"))),
          ("real_textures_rd_lite0.md", "real_textures_rd_lite0.json", "real_textures_rd_lite0_memory.md",
           "real_textures_rd_lite0_memory.json", "real_textures_colour.md", "real_textures_colour.json",
           "real_textures_colour_both.md", "real_textures_colour_both.json", "real_textures_colour_gate.md",
           "real_textures_colour_gate.json", "real_textures_colour_max.md", "real_textures_colour_max.json",
           "colour_cost.md", "colour_cost.json")),
    Study("verdicts on video", "With thresholds from a clip of good parts, how many line defects are found and how "
          "many good frames flagged?", "video_targets.py",
          ("video_targets_layout.md", "video_targets_layout.json", "video_targets_layout_int8.md",
           "video_targets_layout_int8.json", "video_targets_layout_int8_swapped.md",
           "video_targets_layout_int8_swapped.json", "video_targets_layout_int8_float.md",
           "video_targets_layout_int8_float.json", "video_targets_layout_int8_float_swapped.md",
           "video_targets_layout_int8_float_swapped.json", "video_targets_real32.md", "video_targets_real32.json",
           "video_targets_real32_linear.md", "video_targets_real32_linear.json", "video_targets_real32_auto_a.md",
           "video_targets_real32_auto_a.json", "video_targets_real32_floor_a.md", "video_targets_real32_floor_a.json",
           "video_targets_real32_grey_b.md", "video_targets_real32_grey_b.json"),
          ("video_targets_rd_lite0.md", "video_targets_rd_lite0.json", "video_targets_camera_neutral.md",
           "video_targets_camera_neutral.json", "video_targets_colour.md", "video_targets_colour.json",
           "video_targets_colour_both.md", "video_targets_colour_both.json", "video_targets_colour_gate.md",
           "video_targets_colour_gate.json", "video_targets_colour_max.md", "video_targets_colour_max.json")),
    Study("calibration margin", "How wide must the calibration margin be so no good frame is flagged?",
          "threshold_margin.py",
          ("layout/threshold_margin.md", "layout/threshold_margin.json", "layout/threshold_margin_swapped.md",
           "layout/threshold_margin_swapped.json"),
          ("threshold_margin.md", "threshold_margin.json", "threshold_margin_swapped.md",
           "threshold_margin_swapped.json", "colour_both/threshold_margin.md", "colour_both/threshold_margin.json",
           "colour_both/threshold_margin_swapped.md", "colour_both/threshold_margin_swapped.json",
           "colour_gate/threshold_margin_swapped.md", "colour_gate/threshold_margin_swapped.json",
           "colour_max/threshold_margin.md", "colour_max/threshold_margin.json",
           "colour_max/threshold_margin_swapped.md", "colour_max/threshold_margin_swapped.json")),
    Study("calibration poisoning", "With bad parts in the calibration clip, are the line's defects still found?",
          "calibration_poisoning.py", ("calibration_poisoning.md", "calibration_poisoning.json"),
          ("calibration_poisoning_cut6.md", "calibration_poisoning_cut6.json")),
    Study("line outputs", "What do MQTT, OPC UA, the webhook and the event store cost, how old is a verdict when "
          "each receiver gets it, and does a broker outage lose any?", "line_outputs.py",
          ("line_outputs.md", "line_outputs.json")),
    Study("mask fidelity", "Do the masks at the operating point match the defects' outlines and sizes?",
          "mask_fidelity.py, peer_masks.py, mask_cost.py",
          ("mask_fidelity.md", "mask_fidelity.json", "masks_tried.md", "peer_masks_patchcore.json", "peer_masks_stfpm.json", "mask_cost.md",
           "mask_cost.json",
                               *(f"masks_{c}.png" for c in ("gravel", "grass", "pcb", "package", "brick", "cork",
                                                            "fibre_paper")))),
    Study("camera shift", "How far do normal scores move between PNG files and the same images as video?",
          "camera_shift.py", ("camera_shift_memory.json",
                              *(f"camera_shift_real32_{c}.json" for c in ("gravel", "grass", "pcb", "package", "brick",
                                                                           "cork", "fibre_paper")))),
    Study("benchmark report", "Which family, backend, precision and batch is fastest and most accurate on this CPU?",
          "../edgekd/bench (edgekd benchmark)",
          ("benchmark_cpu.md", "benchmark_cpu.json", "benchmark_cpu.csv", "benchmark_cpu_fps_vs_accuracy.png",
           "benchmark_cpu_latency.png")),
    Study("beside anomalib (speed)", "How fast are edgekd's STFPM and RD beside anomalib's STFPM in onnxruntime?",
          "vs_anomalib.py", ("../../vs_anomalib.md", "vs_anomalib.json", "vs_anomalib.txt", "speed_tried.md"),
          ("vs_anomalib_before.md", "vs_anomalib_before.json", "vs_anomalib_before.txt")),
    Study("INT8 forms", "Which form of the onnxruntime INT8 export is fastest for the accuracy it keeps?",
          "int8_forms.py", ("int8_forms.md", "int8_forms.json", "int8_forms_stfpm_stems.md",
                            "int8_forms_stfpm_stems.json", "memory_int8.md", "memory_int8.json")),
    Study("INT8 stems", "What do INT8 stem segments cost in accuracy, per category?", "int8_stems.py",
          ("int8_stems.md", "int8_stems.json"),
          ("int8_stem_stfpm_cork.md", "int8_stem_stfpm_cork_deltas.json", "int8_stem_stfpm_cork_speed.json")),
    Study("precision deltas", "How much accuracy do FP16 and INT8 exports lose against FP32?", "precision_deltas.py",
          ("precision_deltas.md", "precision_deltas.json")),
    Study("scoring grid", "Does scoring on a coarser grid cost accuracy?", "scoring_grid.py",
          ("scoring_grid.md", "scoring_grid.json")),
    Study("scoring lowering", "Which way of writing the scoring op's body runs fastest in onnxruntime?",
          "scoring_lowering.py", ("scoring_lowering.md", "scoring_lowering.json")),
    Study("fused op", "How does the fused MultiScaleFeatureDiff compare with the unfused ops, and do its kernels "
          "match the reference?", "fused_op.py, verify_fused_kernels.py",
          ("fused_op_cpu.md", "fused_op_cpu.json", "fused_op_cpu.png", "fused_kernels_host-emulation.md",
           "fused_kernels_host-emulation.json")),
    Study("runner FPS", "How close does `edgekd run` come to the bare model's speed?", "runner_fps.py",
          ("runner_fps_cpu.md", "runner_fps_cpu.json", "runner_fps_cpu.png")),
    Study("CPU ceiling", "How many frames/s does this CPU's arithmetic allow each model at most?", "cpu_ceiling.py",
          ("cpu_ceiling.md", "cpu_ceiling.json")),
    Study("runner soak", "Does a long live run keep its memory bounded through drop-outs?", "runner_soak.py",
          ("runner_soak.md", "runner_soak.json", "runner_soak.png")),
    Study("dashboard overhead", "Does watching the dashboard slow detection?", "dashboard_overhead.py",
          ("dashboard_overhead.md", "dashboard_overhead.json", "dashboard.png")),
    Study("serve throughput", "How does `edgekd serve` compare with the local runtime?", "serve_throughput.py",
          ("serve_throughput.md", "serve_throughput.json")),
    Study("RD family", "How do rd, afkd, logicrd and dskd do on structural and logical anomalies?", "rd_family.py",
          ("rd_family.md", "rd_family.json", "rd_family.png", "other_designs.md", "other_designs.json",
           "other_designs.png")),
    Study("paper fidelity", "Where does each family depart from its paper, and what did following it change?",
          "rd_family.py, real_texture_accuracy.py, graph_speed.py",
          ("paper_fidelity.md", "paper_fidelity_figures.md", "paper_fidelity_speed.md", "paper_fidelity_speed.json",
           "family_real_after.md", "family_real_after.json", "family_synth_after.md", "family_synth_after.json",
           "family_real_mthf_loss.md", "family_real_mthf_loss.json", "family_synth_mthf_loss.md",
           "family_synth_mthf_loss.json"),
          ("family_real_before.md", "family_real_before.json", "family_synth_before.md", "family_synth_before.json",
           "family_real_mthf_map.md", "family_real_mthf_map.json", "family_real_vitkd_lr002.md",
           "family_real_vitkd_lr002.json", "family_synth_vitkd_lr002.md", "family_synth_vitkd_lr002.json")),
    Study("RD quality (synthetic)", "How does RD with the Lite0 teacher do on every synthetic category?",
          "quality_rd.py",
          ("quality_rd_lite0.md", "quality_rd_lite0.json", "quality_rd_lite0.png",
           *(f"quality_rd_lite0_montage_{c}.png" for c in ("chip", "fabric", "granite", "metal", "tile", "washer",
                                                           "wood")))),
)


def result_files() -> set[str]:
    """Every result file, relative to benchmarks/results/ (the index itself aside)."""
    return {str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_file() and p != INDEX}


ARCHIVE = "archive/"  # superseded runs live under benchmarks/results/<study>/archive/, by the same names


def folder_of(name: str) -> Path:
    """Where the study called `name` keeps its results: a script's default output folder."""
    return RESULTS / slug(name)


def listed_files() -> list[str]:
    return [f for s in STUDIES for group in s.paths() for f in group if not f.startswith("../")]


def _date(path: Path) -> str:
    """When the result last changed (a move into its study folder is not a new run)."""
    done = subprocess.run(["git", "log", "--follow", "--diff-filter=AM", "-1", "--format=%cs", "--", str(path)],
                          capture_output=True, text=True, cwd=RESULTS)
    return done.stdout.strip() or "not committed"


def _machine(path: Path) -> str:
    """The machine the result records: its JSON's machine/environment, else the "(CPU xN)" of its title."""
    twin = path.with_suffix(".json")
    if twin.is_file():
        try:
            payload = json.loads(twin.read_text())
        except ValueError:
            payload = {}
        info = payload.get("machine") or payload.get("environment") or {}
        if isinstance(info, dict) and info.get("cpu"):
            return f"{info['cpu']}, {info.get('cores', '?')} cores" + (f", {info['gpu']}" if info.get("gpu") else "")
    title = path.read_text().splitlines()[0] if path.suffix == ".md" and path.is_file() else ""
    found = re.search(r"\(([^()]*(?:EPYC|Xeon|Core|Ryzen)[^()]*)\)", title)
    return found.group(1) if found else "not recorded"


def _headline(path: Path) -> str:
    """The first row of the first table in the result: today's figure at a glance."""
    if path.suffix != ".md" or not path.is_file():
        return ""
    rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
    if len(rows) < 3:
        return ""
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    values = [c.strip() for c in rows[2].strip("|").split("|")]
    return "; ".join(f"{h} {v}" for h, v in list(zip(header, values))[:5] if h or v).replace("|", "/")


def index_text() -> str:
    lines = ["# Benchmark results, by study", "",
             "Generated by `python benchmarks/studies.py` from its table of studies; do not edit by hand. The first "
             "file of each study is today's figure; superseded runs are listed apart.", "",
             "| study | question | script | date | machine | headline (first row of the first file) | files | superseded |",
             "|---|---|---|---|---|---|---|---|"]
    for study in STUDIES:
        current, superseded = study.paths()
        main = RESULTS / current[0]
        link = lambda f: f"[{Path(f).name}]({f})"
        lines.append(f"| {study.name} | {study.question} | {study.script} | {_date(main)} | {_machine(main)} | "
                     f"{_headline(main)} | {', '.join(map(link, current))} | {', '.join(map(link, superseded)) or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    missing = result_files() - set(listed_files())
    if missing:
        sys.exit(f"results without a study: {', '.join(sorted(missing))}: add them to STUDIES in {__file__}")
    INDEX.write_text(index_text())
    print(f"wrote {INDEX}")


if __name__ == "__main__":
    main()
