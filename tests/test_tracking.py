"""Training logs (rtdmd_bench/tracking.py): metrics.jsonl lines hold the mean of every term since the
previous line, survive a kill/resume, and go with the curve and sample grids to an experiment
tracker (`train.log_with`) without changing what the run trains."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rtdmd_bench import tracking
from rtdmd_bench.config import resolve_config
from rtdmd_bench.errors import UserError
from rtdmd_bench.runs import RunDir
from rtdmd_bench.train import build, train

TOY = ["base.fit_steps=200", "train.batch_size=16", "train.threads=1", "train.budget=3e8"]
GEN_TERMS = ("loss_ppo/epoch0", "gen/grad_norm", "r_dm")  # gndm logs them on generator steps only


def _lines(run) -> list[dict]:
    return [r for r in RunDir(run).metrics() if "curve" not in r]


def _tensors(run) -> dict[str, torch.Tensor]:
    return load_file(str(RunDir(run).latest_checkpoint() / "tensors.safetensors"))


def test_term_means_by_hand():
    m = tracking.TermMeans()
    m.add({"a": 1.0, "b": 4.0})
    m.add({"a": 2.0})
    m.add({"a": 6.0, "b": 8.0})
    assert m.flush() == {"n_steps": 3, "a": 3.0, "b": 6.0, "term_steps": {"b": 2}}
    assert m.flush() == {"n_steps": 0}  # started over
    m.add({"a": -0.0})
    assert str(m.flush()["a"]) == "-0.0"  # one step: the value itself, bit for bit
    m.load_state_dict(None)  # a checkpoint from before the sums were saved
    assert m.state_dict() == {"sums": {}, "counts": {}, "steps": 0}


def test_metrics_lines_hold_the_mean_of_every_term_since_the_previous_line(tmp_path):
    """gndm updates its generator on steps 0, 5, 10, ...; lines every 5 steps fall on steps 4, 9, ...,
    so a line holding the last step's logs would never show a generator term."""
    every = train(resolve_config("gndm", "toy2d", TOY + ["train.log_every=1"]), tmp_path / "every")
    fives = train(resolve_config("gndm", "toy2d", TOY + ["train.log_every=5"]), tmp_path / "fives")
    assert every["steps"] == fives["steps"] >= 12
    per_step = {r["step"]: r for r in _lines(tmp_path / "every")}
    lines = _lines(tmp_path / "fives")
    assert [r["step"] for r in lines] == [*range(5, fives["steps"] + 1, 5), *([fives["steps"]] if fives["steps"] % 5 else [])]
    prev = 0
    for line in lines:
        window = [per_step[s] for s in range(prev + 1, line["step"] + 1)]
        assert line["n_steps"] == len(window)
        terms = {k for r in window for k in r if k not in ("step", "flops", "wall_time", "n_steps")}
        assert terms == {k for k in line if k not in ("step", "flops", "wall_time", "n_steps", "term_steps")}
        for k in terms:
            values = [r[k] for r in window if k in r]
            assert line[k] == pytest.approx(sum(values) / len(values), rel=1e-12, abs=1e-15), (k, line["step"])
            assert line.get("term_steps", {}).get(k, len(window)) == len(values)
        assert line["flops"] == per_step[line["step"]]["flops"]
        prev = line["step"]
    assert all(k in line for line in lines for k in GEN_TERMS)  # every window holds one generator step
    assert all(line["term_steps"]["loss_ppo/epoch0"] == 1 for line in lines if line["n_steps"] == 5)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(tmp_path / "every").values(),
                                                 _tensors(tmp_path / "fives").values()))


def test_a_run_resumed_between_two_lines_writes_the_lines_of_an_uninterrupted_run(tmp_path):
    """Checkpoints every 7 steps, lines every 5: the checkpoint at step 14 holds the sums of steps
    11-14, which the line at step 15 needs."""
    cfg = resolve_config("gndm", "toy2d", TOY + ["train.log_every=5", "train.checkpoint_every=7"])
    straight = train(cfg, tmp_path / "straight")
    assert train(cfg, tmp_path / "killed", stop_after_steps=17) == {}
    assert RunDir(tmp_path / "killed").latest_checkpoint().name == "step_00000014"
    resumed = train(cfg, tmp_path / "killed", resume=True)
    assert resumed["steps"] == straight["steps"] >= 15
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(_lines(tmp_path / "killed")) == strip(_lines(tmp_path / "straight"))
    a, b = _tensors(tmp_path / "straight"), _tensors(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- trackers
class RecordingTracker:
    """Stands in for accelerate's trackers: what the loop sends, by step."""

    def __init__(self) -> None:
        self.scalars: list[tuple[int, dict]] = []
        self.images: list[tuple[int, str, np.ndarray]] = []
        self.finished = False

    def log(self, values, step):
        self.scalars.append((step, dict(values)))

    def log_image(self, key, image, step):
        self.images.append((step, key, image))

    def finish(self):
        self.finished = True


def test_the_tracker_gets_every_line_the_curve_and_grids_and_the_run_trains_the_same(tmp_path, monkeypatch):
    import rtdmd_bench.train as train_mod

    rec = RecordingTracker()
    monkeypatch.setattr(train_mod, "check_tracker", lambda kind: None)
    monkeypatch.setattr(train_mod, "open_tracker", lambda train_cfg, *a: rec if train_cfg.log_with != "none" else None)
    sets = TOY + ["train.log_every=4", "train.curve_points=2", "train.curve_suite=toy-tilt",
                  "train.curve_images_per_prompt=20"]
    tracked = train(resolve_config("gndm", "toy2d", sets + ["train.log_with=tensorboard", "train.sample_every=6"]),
                    tmp_path / "tracked")
    plain = train(resolve_config("gndm", "toy2d", sets), tmp_path / "plain")
    # Grids and the tracker change nothing: same weights, EMA, optimiser state and lines.
    a, b = _tensors(tmp_path / "tracked"), _tensors(tmp_path / "plain")
    assert tracked["steps"] == plain["steps"] and all(torch.equal(a[k], b[k]) for k in a)
    rows = RunDir(tmp_path / "tracked").metrics()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(RunDir(tmp_path / "plain").metrics())
    # One tracker entry per metrics line with the same means, and one per curve point.
    expected = []
    for r in rows:
        if "curve" in r:
            expected.append((r["step"], {f"curve/{k}": v for k, v in r["curve"].items()}))
        else:
            terms = {k: v for k, v in r.items() if k not in ("step", "n_steps", "term_steps")}
            expected.append((r["step"], terms))
    assert rec.scalars == expected
    assert sum("curve" in r for r in rows) == 2 and any("gen/grad_norm" in v for _, v in rec.scalars)
    # A grid every 6 steps, the toy's scatter picture.
    assert [s for s, _, _ in rec.images] == list(range(6, tracked["steps"] + 1, 6))
    assert all(k == "samples" and im.dtype == np.uint8 and im.shape == (512, 512, 3) for _, k, im in rec.images)
    assert rec.finished


@pytest.mark.parametrize("kind,package", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_named_before_anything_is_written(kind, package, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX", "wandb", "mlflow") else real(name, *a))
    with pytest.raises(UserError, match=f"train.log_with={kind} needs the {package} package.*pip install {package}"):
        train(resolve_config("dmd2", "toy2d", TOY + [f"train.log_with={kind}"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sample_grids_without_a_tracker_and_an_unknown_tracker_are_errors(tmp_path):
    with pytest.raises(UserError, match="train.sample_every sends sample grids to a tracker"):
        train(resolve_config("dmd2", "toy2d", TOY + ["train.sample_every=5"]), tmp_path / "run")
    with pytest.raises(UserError, match="'none', 'tensorboard', 'wandb', 'mlflow'"):
        resolve_config("dmd2", "toy2d", ["train.log_with=neptune"])
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_the_cli_names_the_pip_command_of_a_missing_tracker(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "rtdmd_bench", "train", "--method", "dmd2", "--base", "toy2d",
                          "--out", str(tmp_path), "--run-id", "r", "--set", "train.log_with=wandb"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "pip install wandb" in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()


def test_tensorboard_event_files_hold_every_logged_scalar_and_the_grids(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'rtdmd-bench[track]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = TOY + ["train.log_every=4", "train.curve_points=2", "train.curve_suite=toy-tilt",
                  "train.curve_images_per_prompt=20"]
    result = train(resolve_config("gndm", "toy2d", sets + ["train.log_with=tensorboard", "train.sample_every=8"]),
                   tmp_path / "run")
    train(resolve_config("gndm", "toy2d", sets), tmp_path / "plain")  # the real tracker and grids change nothing
    a, b = _tensors(tmp_path / "run"), _tensors(tmp_path / "plain")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder = tmp_path / "run" / "tensorboard" / "run"  # tracker_run_name defaults to the run id
    assert list(folder.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rows = RunDir(tmp_path / "run").metrics()
    for r in rows:  # every value of every line, at its step (event files store float32)
        values = {f"curve/{k}": v for k, v in r["curve"].items()} if "curve" in r else \
            {k: v for k, v in r.items() if k not in ("step", "n_steps", "term_steps")}
        for k, v in values.items():
            events = {e.step: e.value for e in acc.Scalars(k)}
            assert events[r["step"]] == pytest.approx(v, rel=1e-6), (k, r["step"])
    assert {"loss_ppo/epoch0", "gen/grad_norm", "loss_fake", "flops"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("samples")] == list(range(8, result["steps"] + 1, 8))


def test_a_resumed_run_continues_its_tensorboard_curves_without_the_steps_logged_twice(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'rtdmd-bench[track]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = resolve_config("dmd2", "toy2d", TOY + ["train.log_every=4", "train.checkpoint_every=7",
                                                 "train.log_with=tensorboard"])
    train(cfg, tmp_path / "run", stop_after_steps=17)  # lines at 4, 8, 12, 16; the checkpoint at 14
    train(cfg, tmp_path / "run", resume=True)  # logs step 16 again
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "run"), size_guidance={"scalars": 0})
    acc.Reload()
    rows = _lines(tmp_path / "run")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("loss_fake")] == \
        [(r["step"], r["loss_fake"]) for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install wandb)")
def test_wandb_offline_run_is_written_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(resolve_config("dmd2", "toy2d", TOY + ["train.log_every=4", "train.log_with=wandb",
                                                          "train.sample_every=4"]), tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    grids = list((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(grids) == result["steps"] // 4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install mlflow)")
def test_mlflow_run_gets_the_logged_terms(tmp_path, monkeypatch):
    import mlflow

    store = f"file:{tmp_path / 'mlruns'}"  # a local store in the test's folder (mlflow-skinny has no sqlite store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(store)
    result = train(resolve_config("dmd2", "toy2d", TOY + ["train.log_every=4", "train.log_with=mlflow", "train.sample_every=4",
                                                          "train.tracker_project=t"]), tmp_path / "run")
    rows = _lines(tmp_path / "run")
    [run] = mlflow.search_runs(experiment_names=["t"], output_format="list")
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "loss_fake")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss_fake"], rel=1e-6)) for r in rows]
    images = [f.path for f in client.list_artifacts(run.info.run_id, "images") if f.path.endswith(".png")]
    assert sum("samples" in p for p in images) == result["steps"] // 4, images


# ---------------------------------------------------------------- sample grids
def test_grid_prompts_are_evenly_spaced():
    assert tracking.grid_prompt_indices(30, 4) == [0, 7, 15, 22]
    assert tracking.grid_prompt_indices(3, 4) == [0, 1, 2]


def test_digits_grid_rows_are_the_ema_students_samples_of_spread_prompts():
    from rtdmd_bench.samples import SamplerSpec, generate

    b = build(resolve_config("dmd2", "digits", ["train.threads=1"]))
    grid = tracking.sample_grid(b)
    pool = b.pools.get("distill")
    prompts = [pool[i] for i in (0, 7, 15, 22)]  # 30 prompts: every 7.5th
    with b.method.generator():
        # Same noise as the grid: image j of prompt index i seeded by (run seed, i, j).
        want = [generate(b.base, SamplerSpec.student(b.cfg.method), pool, 4, 0, None)[i * 4:(i + 1) * 4]
                for i in (0, 7, 15, 22)]
    # 8 px enlarged 8x, 2 px borders, a 192 px label column on the left (rtdmd_bench/pictures.py)
    assert len(prompts) == 4 and grid.shape == (4 * 66 + 2, 192 + 4 * 66 + 2, 3)
    for r in range(4):
        for c in range(4):
            cell = grid[2 + r * 66:2 + r * 66 + 64, 192 + 2 + c * 66:192 + 2 + c * 66 + 64]
            img = (want[r][c].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert np.array_equal(cell, np.kron(img, np.ones((8, 8, 1), dtype=np.uint8))), (r, c)


def test_toy_grid_is_a_scatter_with_one_colour_per_prompt():
    from matplotlib.colors import to_rgb

    b = build(resolve_config("dmd2", "toy2d", TOY))
    image = tracking.sample_grid(b)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    k = len(tracking.grid_prompt_indices(len(b.pools.get("distill"))))
    for i in range(k):
        # points are drawn with alpha 0.7 over white (rtdmd_bench/pictures.scatter_figure)
        colour = np.round((0.7 * np.array(to_rgb(f"C{i}")) + 0.3) * 255)
        assert (np.abs(image.astype(int) - colour).max(axis=-1) <= 3).sum() > 20, i  # its points are drawn
