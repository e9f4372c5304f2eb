"""Power, temperature and GPU load of a Jetson while a benchmark runs, sampled from `tegrastats` (absent
elsewhere: the sampler then records nothing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading

TEMPERATURE = re.compile(r"(\w+)@(-?\d+(?:\.\d+)?)C")
# The board's input rail: VDD_IN (Orin, Xavier), VIN_SYS_5V0 (Orin Nano), POM_5V_IN (Nano, TX2); "now/average".
POWER = re.compile(r"\b(VDD_IN|VIN_SYS_5V0|POM_5V_IN)\s+(\d+)(?:mW)?/(\d+)")
GPU_LOAD = re.compile(r"GR3D_FREQ\s+(\d+)%")


def parse_line(line: str) -> dict:
    sample = {}
    power = POWER.search(line)
    if power:
        sample["power_mw"] = int(power.group(2))
        sample["rail"] = power.group(1)
    temperatures = {name: float(value) for name, value in TEMPERATURE.findall(line)}
    if temperatures:
        sample["max_temp_c"] = max(temperatures.values())
    load = GPU_LOAD.search(line)
    if load:
        sample["gpu_load_pct"] = int(load.group(1))
    return sample


def summarise(samples: list[dict]) -> dict | None:
    if not samples:
        return None
    pick = lambda key: [s[key] for s in samples if key in s]
    power, temps, load = pick("power_mw"), pick("max_temp_c"), pick("gpu_load_pct")
    return {"samples": len(samples),
            **({"power_mw_mean": round(sum(power) / len(power)), "power_mw_max": max(power),
                "rail": next(s["rail"] for s in samples if "rail" in s)} if power else {}),
            **({"temp_c_max": max(temps)} if temps else {}),
            **({"gpu_load_pct_mean": round(sum(load) / len(load), 1)} if load else {})}


class TegraStats:
    """with TegraStats() as stats: ... ; stats.summary() -> dict or None."""

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self.samples, self.process, self.reader = interval_ms, [], None, None

    def __enter__(self):
        if shutil.which("tegrastats"):
            try:
                self.process = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.process = None
        if self.process is not None:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
        return self

    def _read(self):
        for line in self.process.stdout:
            sample = parse_line(line)
            if sample:
                self.samples.append(sample)

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return False

    def summary(self) -> dict | None:
        return summarise(self.samples)
