"""Run folders and safetensors checkpoints (DESIGN.md "Runs and results"); atomic writes: files.py.

runs/<run-id>/
  config.yaml        full resolved config
  metrics.jsonl      training curve (one JSON object per line: term means since the previous line)
  checkpoints/       step_<N>/{tensors.safetensors, state.json}, `latest` (a file naming the dir)
  samples/           evaluation image cache
  eval/<suite>.json  one per suite, written as soon as the suite finishes
  result.json        summary: config, seeds, FLOPs, versions, git commit, wall time
Checkpoints hold tensors in safetensors and everything else (optimiser hyper-parameters, step,
meter) as JSON; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_write_json, atomic_write_text, json_default


# ---- nested state <-> (tensors, JSON skeleton) ---------------------------------------------

def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint object of type {type(obj).__name__} at {prefix}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


class RunDir:
    """A run folder. `RunDir.open(path)` checks it is one (config.yaml present)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise UserError(f"{p} is not a run folder (no config.yaml); pass a folder created by "
                            "`rtdmd-bench train`, e.g. runs/<run-id>")
        return cls(p)

    # config and metrics
    def write_config(self, cfg: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def read_config(self) -> Any:
        """config.yaml as YAML data (config.from_dict checks it is a run config)."""
        try:
            return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise UserError(f"{self.path / 'config.yaml'} cannot be read as YAML ({type(e).__name__}: "
                            f"{' '.join(str(e).split())}); restore it or start a new run") from None

    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=json_default) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        rows = [r for r in self.metrics() if r.get("step", -1) <= after_step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 2) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(state, tensors, "")
        final = self.ckpt_dir / f"step_{step:08d}"
        tmp = self.ckpt_dir / f".tmp_step_{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "tensors.safetensors"))
        atomic_write_json(tmp / "state.json", {"step": step, "skeleton": skeleton})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(self.ckpt_dir / "latest", final.name + "\n")
        old = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_dir / "latest"
        if not pointer.exists():
            return None
        return self.ckpt_dir / pointer.read_text().strip()

    def load_checkpoint(self, path: Path | None = None) -> tuple[int, dict[str, Any]]:
        path = path or self.latest_checkpoint()
        if path is None:
            raise UserError(f"{self.path} has no checkpoint to resume from; start it again with "
                            "`rtdmd-bench train` (without --resume)")
        try:
            tensors = load_file(str(path / "tensors.safetensors"))
            meta = json.loads((path / "state.json").read_text())
            return int(meta["step"]), _unflatten(meta["skeleton"], tensors)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError: ValueError
            raise UserError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}); "
                            "delete it and point checkpoints/latest at an earlier step_* folder, "
                            "or start the run again") from None


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if out.returncode:
            return "unknown"
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("rtdmd-bench", "torch", "numpy", "scipy", "diffusers", "transformers", "peft",
                "open_clip_torch", "clean-fid", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
