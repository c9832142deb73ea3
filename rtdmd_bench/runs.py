"""Run folders and safetensors checkpoints (DESIGN.md "Runs and results"); atomic writes: files.py.

runs/<run-id>/
  config.yaml        full resolved config
  metrics.jsonl      training curve (one JSON object per line: term means since the previous line)
  checkpoints/       step_<N>/{tensors.safetensors, state.json}, `latest` (a file naming the dir)
  .lock              who trains or evaluates into the folder now (rtdmd_bench/run_lock.py)
  samples/           evaluation image cache
  eval/<suite>.json  one per suite, written as soon as the suite finishes
  result.json        summary: config, seeds, FLOPs, versions, git commit, wall time
Checkpoints hold tensors in safetensors and everything else (optimiser hyper-parameters, step,
meter, the SHA-256 of the tensors file: the checkpoint's content key) as JSON; nothing is
unpickled. A write that fails (disk full, no permission) removes its temporary files, leaves the
last good checkpoint and `latest` as they were, and ends in one `UserError` that names the path,
that checkpoint and what to do (`write_failure`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
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


WRITE_ERRORS = (OSError, SafetensorError)
"""What a failed write raises: OSError, or SafetensorError from safetensors' writer (its I/O errors,
e.g. a full disk, arrive as SafetensorError with the OS message in the text)."""

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}


def write_failure(path: Path, error: BaseException, then: str) -> UserError:
    """The one message of a failed write: which path, why, and `then` (what is kept, what to do)."""
    why = _REASONS.get(getattr(error, "errno", None) or -1) or f"{type(error).__name__}: {error}"
    return UserError(f"could not write {path} ({why}). {then}")


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

    def failed_write(self, path: Path, error: BaseException) -> UserError:
        """`write_failure` of a training write: the last good checkpoint and how to go on from it."""
        fix = f"free space on that disk (or make {self.path} writable)"
        try:
            ckpt = self.latest_checkpoint()
        except OSError:
            ckpt = None
        if ckpt is not None:
            then = (f"The last good checkpoint is {ckpt} (checkpoints/latest names it); {fix}, then continue "
                    f"with `rtdmd-bench train --resume {self.path}`.")
        elif (self.path / "config.yaml").is_file():
            then = (f"The run has no checkpoint yet; {fix}, then `rtdmd-bench train --resume {self.path}` "
                    "starts it over from its saved config.")
        else:
            then = f"Nothing of the run is kept; {fix} and start it again."
        return write_failure(path, error, then)

    # config and metrics
    def write_config(self, cfg: dict[str, Any]) -> None:
        path = self.path / "config.yaml"
        try:
            atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
        except WRITE_ERRORS as e:
            raise self.failed_write(path, e) from None

    def write_result(self, result: dict[str, Any]) -> None:
        path = self.path / "result.json"
        try:
            atomic_write_json(path, result)
        except WRITE_ERRORS as e:
            raise self.failed_write(path, e) from None

    def read_config(self) -> Any:
        """config.yaml as YAML data (config.from_dict checks it is a run config)."""
        try:
            return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise UserError(f"{self.path / 'config.yaml'} cannot be read as YAML ({type(e).__name__}: "
                            f"{' '.join(str(e).split())}); restore it or start a new run") from None

    def metrics(self) -> list[dict[str, Any]]:
        """The logged rows; a last line without its newline (a process killed while appending it) is
        not a row."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        text = p.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def append_metrics(self, row: dict[str, Any]) -> None:
        path = self.path / "metrics.jsonl"
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row, default=json_default) + "\n")
        except WRITE_ERRORS as e:
            try:
                os.truncate(path, size)  # no half line left behind
            except OSError:
                pass
            raise self.failed_write(path, e) from None

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        rows = [r for r in self.metrics() if r.get("step", -1) <= after_step]
        path = self.path / "metrics.jsonl"
        try:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        except WRITE_ERRORS as e:
            raise self.failed_write(path, e) from None

    # checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def save_checkpoint(self, step: int, state: dict[str, Any], keep: int = 2) -> Path:
        """Write step_<step> beside the others and point `latest` at it. Everything is written in a
        temporary folder first; if any write fails, that folder is removed and the last good
        checkpoint and `latest` are left as they were (a step folder of the same name, which only a
        finished run saving its last step again has, is moved back)."""
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(state, tensors, "")
        final = self.ckpt_dir / f"step_{step:08d}"
        tmp = self.ckpt_dir / f".tmp_step_{step:08d}"
        aside = self.ckpt_dir / f".old_step_{step:08d}"
        target = final
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            # Leftovers of a process killed while saving (one writer at a time: run_lock).
            for leftover in self.ckpt_dir.glob(".tmp_step_*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for moved in self.ckpt_dir.glob(".old_step_*"):
                back = self.ckpt_dir / moved.name[len(".old_"):]
                if back.exists():
                    shutil.rmtree(moved, ignore_errors=True)
                else:
                    os.replace(moved, back)
            tmp.mkdir()
            save_file(tensors, str(tmp / "tensors.safetensors"))
            digest = file_sha256(tmp / "tensors.safetensors")
            atomic_write_json(tmp / "state.json", {"step": step, "skeleton": skeleton, "tensors_sha256": digest})
            if final.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            try:
                os.replace(tmp, final)
            except OSError:
                if aside.exists():
                    os.replace(aside, final)
                raise
            target = self.ckpt_dir / "latest"
            atomic_write_text(target, final.name + "\n")
        except WRITE_ERRORS as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self.failed_write(target, e) from None
        shutil.rmtree(aside, ignore_errors=True)
        old = sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir())[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_dir / "latest"
        if not pointer.exists():
            return None
        return self.ckpt_dir / pointer.read_text().strip()

    def no_checkpoint(self) -> str:
        return (f"{self.path} has no checkpoint yet (it was stopped before its first one); "
                f"`rtdmd-bench train --resume {self.path}` trains it from its saved config")

    def checkpoint_digest(self, path: Path | None = None) -> str:
        """SHA-256 of a checkpoint's tensors file (default: the latest checkpoint's), recorded in its
        state.json when it was saved (hashed now for checkpoints saved before it was recorded)."""
        path = path or self.latest_checkpoint()
        if path is None:
            raise UserError(self.no_checkpoint())
        try:
            recorded = json.loads((path / "state.json").read_text()).get("tensors_sha256")
            return recorded or file_sha256(path / "tensors.safetensors")
        except (OSError, ValueError) as e:
            raise UserError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}); delete it and "
                            "point checkpoints/latest at an earlier step_* folder, or start the run again") from None

    def load_checkpoint(self, path: Path | None = None) -> tuple[int, dict[str, Any]]:
        path = path or self.latest_checkpoint()
        if path is None:
            raise UserError(self.no_checkpoint())
        try:
            tensors = load_file(str(path / "tensors.safetensors"))
            meta = json.loads((path / "state.json").read_text())
            return int(meta["step"]), _unflatten(meta["skeleton"], tensors)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError: ValueError
            raise UserError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}); "
                            "delete it and point checkpoints/latest at an earlier step_* folder, "
                            "or start the run again") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    """Python, platform and package versions (looked up once per process: each lookup scans the
    installed distributions, ~0.1 s, and evaluation asks again at every curve point)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("rtdmd-bench", "torch", "numpy", "scipy", "diffusers", "transformers", "peft",
                "open_clip_torch", "clean-fid", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
