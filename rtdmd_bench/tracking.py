"""What a training run reports: lines of metrics.jsonl and an optional experiment tracker.

Every line of metrics.jsonl holds the MEAN of each logged term over the steps since the previous
line, not the last step's value: a method that logs a term on some steps only (gndm updates its
generator every 5th step) would otherwise lose it whenever `train.log_every` falls on another step.
The running sums are part of the checkpoint, so a resumed run writes the lines an uninterrupted
run writes.

`train.log_with` sends the same lines, the evaluation curve and grids of the student's samples to
TensorBoard, Weights & Biases or MLflow through accelerate's tracker classes (what diffusers'
training scripts select with `--report_to`). They are used directly rather than through an
`Accelerator`: a single-process run has none (accelerate's process state is initialised for their
logging; alone it is a non-distributed state that sets nothing). Only rank 0 builds a tracker.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import numpy as np
import torch
from torch import Tensor

from rtdmd_bench.errors import UserError
from rtdmd_bench.pictures import labelled_grid, scatter_pixels, to_pixels
from rtdmd_bench.runs import RunDir

TrackerKind = Literal["none", "tensorboard", "wandb", "mlflow"]
TRACKERS: tuple[str, ...] = get_args(TrackerKind)

# The module each tracker imports, and what to install for it.
_NEEDS = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard  (or: pip install 'rtdmd-bench[track]')"),
          "wandb": (("wandb",), "pip install wandb  (or: pip install 'rtdmd-bench[wandb]')"),
          "mlflow": (("mlflow",), "pip install mlflow  (or: pip install 'rtdmd-bench[mlflow]')")}


# ---------------------------------------------------------------- means since the last line
@dataclass
class TermMeans:
    """Sums and counts of every logged term since the last metrics line (float64 Python sums)."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    steps: int = 0

    def add(self, logs: Mapping[str, Any]) -> None:
        """One training step's scalar logs."""
        self.steps += 1
        for k, v in logs.items():
            v = float(v.detach()) if isinstance(v, Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v  # one step: the value itself
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self) -> dict[str, Any]:
        """The line's fields, then start over: `n_steps` (steps covered), each term's mean over the
        steps that logged it, and `term_steps` {term: steps that logged it} for the terms logged on
        fewer than `n_steps` of them (absent when every term was logged on every step)."""
        out: dict[str, Any] = {"n_steps": self.steps}
        out |= {k: s / self.counts[k] for k, s in self.sums.items()}
        partial = {k: c for k, c in self.counts.items() if c < self.steps}
        if partial:
            out["term_steps"] = partial
        self.sums, self.counts, self.steps = {}, {}, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """`None` (a checkpoint written before the sums were saved): start empty."""
        state = state or {}
        self.sums = {k: float(v) for k, v in state.get("sums", {}).items()}
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}
        self.steps = int(state.get("steps", 0))


# ---------------------------------------------------------------- trackers
def check_tracker(kind: str) -> None:
    """UserError naming the pip command when the tracker's package is not installed."""
    if kind not in TRACKERS:
        raise UserError(f"train.log_with={kind!r} is not one of {', '.join(TRACKERS)}")
    if kind == "none":
        return
    modules, install = _NEEDS[kind]
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise UserError(f"train.log_with={kind} needs the {modules[0]} package, which is not installed: "
                        f"{install}; or drop train.log_with")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.batch_size": 256, ...} with values a tracker accepts as parameters."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


class Tracker:
    """One of accelerate's trackers, started; rank 0 alone builds one (so accelerate's own
    main-process check is switched off)."""

    def __init__(self, kind: str, inner: Any) -> None:
        self.kind, self.inner = kind, inner

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.inner.log(dict(values), step=step)

    def log_image(self, key: str, image: Any, step: int) -> None:
        """`image`: (H, W, 3) uint8 numpy array."""
        if self.kind == "tensorboard":
            self.inner.writer.add_image(key, image, global_step=step, dataformats="HWC")
            self.inner.writer.flush()
        elif self.kind == "wandb":
            self.inner.log_images({key: [image]}, step=step)
        else:
            import mlflow

            mlflow.log_image(image, key=key, step=step)

    def finish(self) -> None:
        self.inner.finish()


def open_tracker(train_cfg: Any, run_dir: Path, config: Mapping[str, Any], resume_step: int) -> Tracker | None:
    """The tracker `train_cfg.log_with` names (None for "none"), started, with the run's config as
    its parameters. TensorBoard writes to RUN/tensorboard/<run name>/ and, on a resumed run, purges
    the events after the checkpoint (they are logged again); W&B and MLflow start a new run of the
    same name."""
    kind = train_cfg.log_with
    check_tracker(kind)
    if kind == "none":
        return None
    name = train_cfg.tracker_run_name or Path(run_dir).name
    from accelerate import PartialState

    PartialState()  # accelerate's logging needs its process state (alone: not distributed, nothing set)
    if kind == "tensorboard":
        from accelerate.tracking import TensorBoardTracker

        inner = TensorBoardTracker(name, Path(run_dir) / "tensorboard",
                                   **({"purge_step": resume_step + 1} if resume_step else {}))
    elif kind == "wandb":
        from accelerate.tracking import WandBTracker

        inner = WandBTracker(train_cfg.tracker_project, name=name, dir=str(run_dir))
    else:
        from accelerate.tracking import MLflowTracker

        inner = MLflowTracker(experiment_name=train_cfg.tracker_project, run_name=name)
    inner.main_process_only = False
    inner.start()
    inner.store_init_configuration(_flat(config))
    return Tracker(kind, inner)


# ---------------------------------------------------------------- the loop's reporter
class TrainingLog:
    """What the loop reports. Every rank keeps the sums (logs are global means, identical on every
    rank); `run` and `tracker` are None on ranks other than 0, which write nothing."""

    def __init__(self, run: RunDir | None, tracker: Tracker | None) -> None:
        self.run, self.tracker, self.means = run, tracker, TermMeans()

    def add(self, logs: Mapping[str, Any]) -> None:
        self.means.add(logs)

    def line(self, step: int, flops: float, wall: float) -> None:
        """A metrics.jsonl line with the means since the previous one (and the same to the tracker)."""
        fields = self.means.flush()
        if self.run is not None:
            self.run.append_metrics({"step": step, "flops": flops, "wall_time": wall, **fields})
        if self.tracker is not None:
            terms = {k: v for k, v in fields.items() if k not in ("n_steps", "term_steps")}
            self.tracker.log({**terms, "flops": flops, "wall_time": wall}, step)

    def curve(self, step: int, flops: float, point: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.append_metrics({"step": step, "flops": flops, "curve": dict(point)})
        if self.tracker is not None:
            self.tracker.log({f"curve/{k}": v for k, v in point.items()}, step)

    def image(self, step: int, image: Any) -> None:
        if self.tracker is not None:
            self.tracker.log_image("samples", image, step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None


# ---------------------------------------------------------------- sample grids
GRID_PROMPTS = 4
"""Prompts in a sample grid: evenly spaced in the run's training prompt list."""
GRID_IMAGES = 4
"""Images per prompt (one row each) on image bases."""
GRID_POINTS = 256
"""Points per prompt on a base whose samples are points (toy2d)."""
def grid_prompt_indices(pool_size: int, k: int = GRID_PROMPTS) -> list[int]:
    """k indices evenly spaced over a prompt list of `pool_size` (all of them if fewer)."""
    return [i * pool_size // min(k, pool_size) for i in range(min(k, pool_size))]


def sample_grid(built: Any) -> Any:
    """(H, W, 3) uint8: the EMA student's samples with its own sampler for `grid_prompt_indices`
    of the training prompts, on noise seeded by (run seed, prompt index, image index) so every
    grid of a run starts from the same noise. Not metered (the raw base), and the random state is
    restored: the run trains exactly as it would without grids. Every rank calls it (forwards of
    wrapped modules are collective); only rank 0's tracker logs it."""
    from rtdmd_bench.samples import SamplerSpec, generate_prompt

    pool = built.pools.get("distill")
    indices = grid_prompt_indices(len(pool))
    spec = SamplerSpec.student(built.cfg.method)
    points = tuple(built.base.latent_shape) == (2,)
    n = GRID_POINTS if points else GRID_IMAGES
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), built.method.generator():
        samples = [generate_prompt(built.base, spec, pool[i], i, n, built.cfg.run.seed, n) for i in indices]
    labels = [pool[i] for i in indices]
    if points:
        return scatter_pixels(samples, labels)
    return np.asarray(labelled_grid([to_pixels(x) for x in samples], labels))  # one row per prompt, labelled
