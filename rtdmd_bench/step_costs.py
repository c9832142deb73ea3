"""Measured training-step costs (`benchmarks/step_cost.py`) and how `plan` finds them.

The benchmark writes `results/benchmarks/step_cost_<device>_<base>.json`: the device's name, torch
version, base (and whether its weights were random, `base.init=random`), weights dtype, and per
method and stage the step time, the FLOPs the training meter charged per step, their ratio (the
achieved FLOP/s) and the peak memory. `plan` turns a matching record into GPU-hours instead of its
assumed fraction of the datasheet peak: GPU-hours = the stage's FLOPs / the achieved FLOP/s of one
device. A record matches a plan when base, method, stage and weights dtype are equal and the device
name contains the plan's GPU (`h100` matches "NVIDIA H100 80GB HBM3"). Weights being random or not
does not change a step's cost, so a random-init record serves a real run's plan.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_PREFIX = "step_cost"
RECORD_DIR = Path("results/benchmarks")
"""Where the benchmark writes and `plan` looks (relative to the working directory, as the CLI's
other result folders)."""


def device_name(device: Any) -> str:
    """A human name of a torch device: the GPU's marketing name, or 'cpu (<model name>)'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), re.MULTILINE)
        model = found.group(1).strip() if found else ""
    return f"cpu ({model or platform.processor() or platform.machine()})"


def record_stem(device: str, base: str) -> str:
    """File stem of a record: step_cost_<device slug>_<base>; every CPU is 'cpu'."""
    slug = "cpu" if device.startswith("cpu") else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return f"{RECORD_PREFIX}_{slug}_{base}"


@dataclass(frozen=True)
class Recorded:
    """One measured (method, stage) row of a record, with what identifies the record."""

    path: Path
    device: str
    base: str
    base_init: str
    dtype: str
    method: str
    stage: int
    batch: int
    step_time_s: float
    flops_per_step: float
    achieved_flops_per_s: float
    date: str

    def gpu_hours(self, flops: float) -> float:
        """Hours of one such device to spend `flops` at the recorded rate."""
        return flops / self.achieved_flops_per_s / 3600.0

    def describe(self) -> str:
        weights = ", random weights" if self.base_init == "random" else ""
        return (f"{self.path} ({self.device}{weights}, {self.date}: {self.step_time_s:.3g} s per step of "
                f"{self.batch} samples = {self.achieved_flops_per_s / 1e12:.3g} TFLOP/s achieved)")


def find_recorded(folder: Path, base: str, gpu: str, method: str, stage: int, dtype: str) -> Recorded | None:
    """The newest matching row of the records in `folder` (module docstring), or None."""
    found: list[Recorded] = []
    for path in sorted(Path(folder).glob(f"{RECORD_PREFIX}_*.json")):
        data = json.loads(path.read_text())
        if data.get("base") != base or data.get("dtype") != dtype or gpu.lower() not in data.get("device", "").lower():
            continue
        for row in data.get("rows", []):
            if row.get("method") == method and int(row.get("stage", 1)) == stage:
                found.append(Recorded(path, data["device"], base, data.get("base_init", "pretrained"), dtype, method,
                                      stage, int(row["batch"]), float(row["step_time_s"]),
                                      float(row["flops_per_step"]), float(row["achieved_flops_per_s"]),
                                      str(data.get("date", ""))))
    return max(found, key=lambda r: r.date) if found else None
