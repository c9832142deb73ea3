"""Measured training-step costs (`benchmarks/step_cost.py`): the record's format, its writer and
reader, and how `plan` finds a record for its GPU-hours.

The benchmark writes `results/benchmarks/step_cost_<device>_<base>_<dtype>.json` (and a Markdown
table beside it): the device's name, torch version, base (and whether its weights were random,
`base.init=random`), weights dtype, the date, and per method and stage the step time (median over
timed TTUR cycles of the cycle's time / its steps), the FLOPs the training meter charged per step,
the achieved FLOP/s (FLOPs per step / step time) and the peak memory. `plan` turns a matching record
into GPU-hours instead of its assumed fraction of the datasheet peak: GPU-hours = the stage's FLOPs
/ the achieved FLOP/s of one device. A record matches a plan when base, method, stage and weights
dtype are equal and the device name contains the plan's GPU (`h100` matches "NVIDIA H100 80GB
HBM3"); of several, the newest. Weights being random or not does not change a step's cost, so a
random-init record serves a real run's plan.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_json, atomic_write_text

RECORD_PREFIX = "step_cost"
RECORD_DIR = Path("results/benchmarks")
"""Where the benchmark writes and `plan` looks (relative to the working directory, as the CLI's
other result folders)."""
RECORD_FIELDS = ("device", "base", "base_init", "dtype", "date", "rows")
"""What every record holds (besides its environment: torch, threads, command, git commit)."""
ROW_FIELDS = ("method", "stage", "batch", "step_time_s", "flops_per_step", "achieved_flops_per_s",
              "peak_memory_bytes")
"""What every (method, stage) row of a record holds."""


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


def record_stem(device: str, base: str, dtype: str) -> str:
    """File stem of a record: step_cost_<device slug>_<base>_<dtype>; every CPU is 'cpu'."""
    slug = "cpu" if device.startswith("cpu") else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return f"{RECORD_PREFIX}_{slug}_{base}_{dtype}"


def step_summary(times: list[float], flops: list[float], cycle: int) -> dict[str, float]:
    """Step time and FLOP rate of timed steps (one entry per step, whole cycles of `cycle` steps).

    A TTUR cycle (`num_fake_per_gen` critic steps, one with a generator update) is the unit that
    repeats, so a step's time is a cycle's time / `cycle`, and the median over cycles keeps one slow
    cycle (a page fault, another process) from moving it. FLOPs per step: the timed steps' mean (the
    meter charges every cycle the same once shapes are measured)."""
    if not times or len(times) != len(flops) or len(times) % cycle:
        raise ValueError(f"{len(times)} times and {len(flops)} FLOPs are not whole cycles of {cycle} steps")
    per_cycle = [sum(times[i:i + cycle]) / cycle for i in range(0, len(times), cycle)]  # (cycles,)
    step_time = median(per_cycle)
    flops_per_step = sum(flops) / len(flops)
    return {"step_time_s": step_time, "step_time_min_s": min(per_cycle), "step_time_max_s": max(per_cycle),
            "flops_per_step": flops_per_step, "achieved_flops_per_s": flops_per_step / step_time}


def _check(data: Any, path: Path) -> dict[str, Any]:
    """`data` as a record, or a UserError naming the file and what is missing."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a step-cost record (a JSON object from benchmarks/step_cost.py)")
    missing = [k for k in RECORD_FIELDS if k not in data]
    if missing:
        raise UserError(f"{path}: step-cost record without {', '.join(missing)}; rerun benchmarks/step_cost.py")
    for i, row in enumerate(data["rows"]):
        lacking = [k for k in ROW_FIELDS if k not in row]
        if lacking:
            raise UserError(f"{path}: row {i} of the step-cost record lacks {', '.join(lacking)}")
        if not float(row["step_time_s"]) > 0 or not float(row["achieved_flops_per_s"]) > 0:
            raise UserError(f"{path}: row {i} ({row['method']}) has a step time or FLOP/s that is not positive")
    return data


def write_record(folder: Path, record: dict[str, Any], markdown: str) -> Path:
    """Write `record` (checked) as JSON and `markdown` beside it; returns the JSON's path."""
    stem = Path(folder) / record_stem(record.get("device", ""), record.get("base", ""), record.get("dtype", ""))
    path = stem.with_suffix(".json")
    _check(record, path)
    atomic_write_json(path, record)
    atomic_write_text(stem.with_suffix(".md"), markdown)
    return path


def read_record(path: Path) -> dict[str, Any]:
    """A record written by `write_record`; a file that is not one is a UserError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the step-cost record ({e})") from None
    return _check(data, path)


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
        data = read_record(path)
        if data["base"] != base or data["dtype"] != dtype or gpu.lower() not in data["device"].lower():
            continue
        for row in data["rows"]:
            if row["method"] == method and int(row["stage"]) == stage:
                found.append(Recorded(path, data["device"], base, data["base_init"], dtype, method, stage,
                                      int(row["batch"]), float(row["step_time_s"]), float(row["flops_per_step"]),
                                      float(row["achieved_flops_per_s"]), str(data["date"])))
    return max(found, key=lambda r: r.date) if found else None
