"""`rtdmd-bench sample`: pictures of a trained run's EMA generator. On toy2d (fast) the points equal
a CPS sampler written out here with the noise seeded by (seed, i, j), whatever the batch size; bad
input exits 2 with one message and writes nothing; the grid's layout is torchvision's make_grid
beside a label column. digits and tiny-sd3 runs (slow) give PNGs of the base's size and a grid."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.utils import make_grid

from rtdmd_bench.cli import main
from rtdmd_bench.config import resolve_config
from rtdmd_bench.pictures import GRID_PADDING, LABEL_WIDTH, labelled_grid
from rtdmd_bench.train import load_for_eval, train

TOY = ["base.fit_steps=200", "train.batch_size=16", "train.threads=1", "train.budget=5e7"]
DIGITS_TINY = ["base.teacher.hidden=32", "base.teacher.blocks=1", "base.teacher.train_steps=20",
               "base.teacher.batch_size=32", "base.classifier.channels=8", "base.classifier.feature_dim=16",
               "base.classifier.epochs=1", "base.check_samples_per_class=2", "base.check_steps=3",
               "base.require_teacher_check=false", "base.progress=false", "train.batch_size=8", "train.budget=1e7",
               "train.threads=1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sample") / "toy"
    train(resolve_config("dmd2", "toy2d", TOY), run)
    return run


def cli(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """`rtdmd-bench ARGS` in this process, through the console entry point: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_points(folder: Path) -> tuple[list[tuple[int, int, str]], torch.Tensor]:
    with open(folder / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [(int(r["prompt_index"]), int(r["image_index"]), r["prompt"]) for r in rows]
    return keys, torch.tensor([[float(r["x"]), float(r["y"])] for r in rows], dtype=torch.float64)


def hand_rolled(run: Path, prompts: list[str], n: int, seed: int, ema: bool = True) -> torch.Tensor:
    """(len(prompts) * n, 2): the run's CPS sampler written out from METHODS.md's CPS move, image by
    image, from noise seeded by sha256("eval|seed|i|j") (the documented seeding of `eval`)."""
    method = yaml.safe_load((run / "config.yaml").read_text())["method"]
    steps, eta = method["num_steps"], method["eta"]
    b = load_for_eval(run)
    sigmas = b.base.sigmas(steps)
    c, s_ = math.cos(eta * math.pi / 2), math.sin(eta * math.pi / 2)
    out = []
    with torch.no_grad(), (b.method.generator() if ema else contextlib.nullcontext()):
        for i, prompt in enumerate(prompts):
            cond = b.base.encode([prompt])
            for j in range(n):
                key = int.from_bytes(hashlib.sha256(f"eval|{seed}|{i}|{j}".encode()).digest()[:7], "little")
                z = torch.randn((steps + 1, 2), generator=torch.Generator().manual_seed(key))
                x = z[0][None]
                for k in range(steps):
                    s, s2 = sigmas[k], sigmas[k + 1]
                    v = b.base.velocity("student", x, s.expand(1), cond)
                    x0, eps = x - s * v, x + (1 - s) * v
                    x = (1 - s2) * x0 + s2 * c * eps + (s2 * s_ * z[k + 1] if s2 > 0 else 0)
                out.append(x[0])
    return torch.stack(out).double()


def test_toy2d_points_are_the_runs_ema_cps_samples_and_the_manifest_lists_each(toy_run, tmp_path, capsys,
                                                                                monkeypatch):
    prompts = ["upper half", "modes 0 and 4"]
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, monkeypatch, "sample", "--run", toy_run, "--prompt", prompts[0], "--prompt",
                               prompts[1], "--n", 5, "--seed", 3, "--out", out, "--batch-size", 2)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "points.csv", "scatter.png"]
    keys, points = read_points(out)
    assert keys == [(i, j, p) for i, p in enumerate(prompts) for j in range(5)]
    expected = hand_rolled(toy_run, prompts, 5, 3)
    assert torch.allclose(points, expected, atol=1e-5), (points - expected).abs().max()
    assert not torch.allclose(points, hand_rolled(toy_run, prompts, 5, 3, ema=False), atol=1e-3)  # EMA, not live

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "points" and manifest["prompts"] == prompts and manifest["seed"] == 3
    assert [(e["prompt_index"], e["image_index"], e["prompt"]) for e in manifest["samples"]] == keys
    assert torch.allclose(torch.tensor([e["point"] for e in manifest["samples"]], dtype=torch.float64), points)
    latest = (toy_run / "checkpoints" / "latest").read_text().strip()
    assert manifest["checkpoint"] == latest and manifest["run"] == str(toy_run)
    assert (manifest["sampler"]["num_steps"], manifest["sampler"]["kind"]) == (4, "cps")
    with Image.open(out / "scatter.png") as im:
        im.load()
        colours = len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))
    assert im.format == "PNG" and colours > 4  # axes, legend and the coloured points
    assert str(out) in stdout


def test_batch_size_does_not_change_the_points(toy_run, tmp_path, capsys, monkeypatch):
    for bs in (1, 7):
        code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", toy_run, "--prompt", "left half", "--n", 7,
                              "--out", tmp_path / f"bs{bs}", "--batch-size", bs)
        assert code == 0, stderr
    assert torch.allclose(read_points(tmp_path / "bs1")[1], read_points(tmp_path / "bs7")[1], atol=1e-6)


def test_default_prompts_are_some_of_the_bases_training_prompts_and_say_so(toy_run, capsys, monkeypatch):
    code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", toy_run, "--n", 2)
    assert code == 0, stderr
    assert "training prompts" in stderr
    (folder,) = (toy_run / "sampled").iterdir()  # the default: inside the run, named by checkpoint and seed
    manifest = json.loads((folder / "manifest.json").read_text())
    train_prompts = load_for_eval(toy_run).base.train_prompts()
    assert 1 <= len(manifest["prompts"]) <= 4 and set(manifest["prompts"]) <= set(train_prompts)
    assert len(manifest["samples"]) == 2 * len(manifest["prompts"]) and folder.name.startswith(manifest["checkpoint"])


def test_a_prompt_file_gives_its_lines(toy_run, tmp_path, capsys, monkeypatch):
    path = tmp_path / "prompts.txt"
    path.write_text("left half\n\nall modes\n")
    code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", toy_run, "--prompts", path, "--n", 1,
                          "--out", tmp_path / "out")
    assert code == 0, stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["prompts"] == ["left half", "all modes"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["missing run", "not a run", "empty prompts file", "missing prompts file",
                                  "binary prompts file", "n=0", "negative seed", "batch size 0", "out is a file",
                                  "out under a file", "both prompt sources", "empty prompt", "unknown prompt"])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(case, toy_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "out"
    args = {"missing run": ["--run", tmp_path / "nope"], "not a run": ["--run", tmp_path],
            "empty prompts file": ["--prompts", tmp_path / "empty.txt"],
            "missing prompts file": ["--prompts", tmp_path / "missing.txt"],
            "binary prompts file": ["--prompts", tmp_path / "binary.txt"], "n=0": ["--n", 0],
            "negative seed": ["--seed", -1], "batch size 0": ["--batch-size", 0],
            "out is a file": ["--out", tmp_path / "file"], "out under a file": ["--out", tmp_path / "file" / "sub"],
            "both prompt sources": ["--prompt", "left half", "--prompts", tmp_path / "empty.txt"],
            "empty prompt": ["--prompt", " "], "unknown prompt": ["--prompt", "a cat"]}[case]
    if "--run" not in args:
        args = ["--run", toy_run, *args]
    if "--out" not in args:
        args += ["--out", out]
    before_run, before_tmp = _tree(toy_run), sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = cli(capsys, monkeypatch, "sample", *args)
    assert code == 2, (stdout, stderr)
    assert stderr.count("error:") == 1 and "Traceback" not in stderr and stdout == "", stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before_tmp
    assert _tree(toy_run) == before_run


def test_grid_is_make_grid_of_the_enlarged_or_reduced_cells_beside_a_label_column():
    g = torch.Generator().manual_seed(0)
    for side, factor in ((8, 8), (20, 4), (600, -3)):  # 8 px -> 64, 20 px -> 80, 600 px -> 200 (box reduce by 3)
        rows = [torch.randint(0, 256, (3, side, side, 3), generator=g, dtype=torch.uint8) for _ in range(2)]
        grid = np.asarray(labelled_grid([r.numpy() for r in rows], ["a red cube", "a very " * 30 + "long prompt"]))
        imgs = torch.cat(rows).permute(0, 3, 1, 2)  # (6, 3, side, side)
        if factor > 0:
            cells = imgs.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
        else:
            cells = torch.nn.functional.avg_pool2d(imgs.float(), -factor).round().to(torch.uint8)
        cell = cells.shape[-1]
        p = GRID_PADDING
        assert grid.shape == (2 * (cell + p) + p, LABEL_WIDTH + 3 * (cell + p) + p, 3)
        expected = make_grid(cells, nrow=3, padding=p, pad_value=255).permute(1, 2, 0).numpy()
        got = grid[:, LABEL_WIDTH:].astype(int)
        assert np.abs(got - expected.astype(int)).max() <= (0 if factor > 0 else 1)  # box average rounding
        labels = grid[:, :LABEL_WIDTH]
        assert (labels < 128).any() and (labels[p:p + cell] < 128).any() and (labels[2 * p + cell:] < 128).any()


@pytest.mark.slow
def test_digits_run_writes_8px_pngs_a_grid_of_64px_cells_and_no_stale_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "cache"))  # the tiny teacher is built here
    run = tmp_path / "digits"
    train(resolve_config("dmd2", "digits", DIGITS_TINY), run)
    prompts, out = ["digit 3", "a handwritten digit seven"], tmp_path / "out"
    code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", run, "--prompt", prompts[0], "--prompt", prompts[1],
                          "-n", 3, "--out", out)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    files = [e["file"] for e in manifest["samples"]]
    assert sorted(files) == sorted(str(p.relative_to(out)) for p in (out / "images").iterdir()) and len(files) == 6
    pngs = [np.asarray(Image.open(out / f)) for f in files]
    assert all(a.shape == (8, 8, 3) and a.dtype == np.uint8 for a in pngs)
    assert all((a[..., 0] == a[..., 1]).all() for a in pngs)  # grey digits
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * (64 + 2) + 2, LABEL_WIDTH + 3 * (64 + 2) + 2, 3)  # 8 px enlarged 8 times
    cells = torch.from_numpy(np.stack(pngs)).permute(0, 3, 1, 2).repeat_interleave(8, 2).repeat_interleave(8, 3)
    expected = make_grid(cells, nrow=3, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    assert np.array_equal(grid[:, LABEL_WIDTH:], expected)

    code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", run, "--prompt", prompts[0], "-n", 1, "--out", out)
    assert code == 0, stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p0000-i000.png"]  # the earlier files went
    assert np.array_equal(np.asarray(Image.open(out / "images" / "p0000-i000.png")), pngs[0])  # same seed, same image


@pytest.mark.slow
def test_tiny_sd3_run_writes_pngs_of_the_base_resolution_and_a_grid(tmp_path, capsys, monkeypatch):
    run = tmp_path / "sd3"
    train(resolve_config("dmd2", "tiny-sd3", ["run.rewards=tiny-clipscore=1.0", "train.batch_size=2",
                                               "train.threads=1", "train.budget=3e8"]), run)
    side = yaml.safe_load((run / "config.yaml").read_text())["base"]["resolution"]
    code, _, stderr = cli(capsys, monkeypatch, "sample", "--run", run, "--prompt", "a cat", "--prompt", "a dog",
                          "--n", 2, "--out", tmp_path / "out", "--batch-size", 1)
    assert code == 0, stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["kind"] == "images" and manifest["image_size"] == [side, side]
    for e in manifest["samples"]:
        with Image.open(tmp_path / "out" / e["file"]) as im:
            assert im.size == (side, side) and im.mode == "RGB"
    cell = side * math.ceil(64 / side)
    with Image.open(tmp_path / "out" / "grid.png") as im:
        assert im.size == (LABEL_WIDTH + 2 * (cell + 2) + 2, 2 * (cell + 2) + 2)
