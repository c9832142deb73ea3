"""benchmarks/sweep_toy.py: every method gets the same trials, each scored over several tuning seeds,
the pick is the best mean; and the committed toy2d recipe carries the committed sweep's picks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from rtdmd_bench import registry

ROOT = Path(__file__).resolve().parents[1]


def load_sweep():
    spec = importlib.util.spec_from_file_location("sweep_toy", ROOT / "benchmarks" / "sweep_toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_method_has_learning_rate_fields():
    assert set(load_sweep().LR_FIELDS) == set(registry.table("methods"))


def test_the_pick_is_the_best_mean_over_seeds_and_the_spread_is_the_sample_sd(tmp_path):
    sweep = load_sweep()
    # lr 3e-3 has the luckiest seed (1.0) but mean (1 + 20 + 30) / 3 = 17; lr 1e-3: mean 5, sd 1
    kl = {(1e-3, 100): 4.0, (1e-3, 101): 5.0, (1e-3, 102): 6.0, (3e-3, 100): 1.0, (3e-3, 101): 20.0, (3e-3, 102): 30.0}
    rows = [{"method": "dmd2", "lr": lr, "seed": s, "kl_target": v, "kl_teacher": 1.0, "mean_reward": -1.0}
            for (lr, s), v in kl.items()]
    trials, picks = sweep.summarise(rows, ["dmd2"], [1e-3, 3e-3])
    assert picks == {"dmd2": 1e-3}
    first = trials[0]
    assert first["kl_target"] == [4.0, 5.0, 6.0] and first["kl_target_mean"] == 5.0 and first["kl_target_sd"] == 1.0
    md = sweep.write(trials, picks, [1e-3, 3e-3], [100, 101, 102], tmp_path, 60.0, 1)
    assert "| dmd2 | 0.001 | 5.000 ± 1.000 | 4.00, 5.00, 6.00 |" in md
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["picked"]["dmd2"]["overrides"] == ["method.lr_generator=0.001", "method.lr_fake=0.001"]


def test_the_toy2d_recipe_carries_the_committed_sweeps_picks():
    sweep = json.loads((ROOT / "results" / "toy2d" / "sweep.json").read_text())
    if "picked" not in sweep:
        pytest.fail("results/toy2d/sweep.json predates the multi-seed sweep: rerun benchmarks/sweep_toy.py")
    assert len(sweep["tuning_seeds"]) >= 3 and min(sweep["tuning_seeds"]) >= 10  # disjoint from table seeds
    counts = {m: sum(t["method"] == m for t in sweep["trials"]) for m in sweep["picked"]}
    assert len(set(counts.values())) == 1  # the same number of trials for every method
    recipe = yaml.safe_load((ROOT / "rtdmd_bench" / "recipes" / "toy2d.yaml").read_text())
    for method, pick in sweep["picked"].items():
        for override in pick["overrides"]:
            key, value = override.split("=")
            assert float(recipe[method][key]) == pytest.approx(float(value)), (method, key)
