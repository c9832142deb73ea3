"""`reproduce`: the grid is every registered method; a run folder is reused only when its config is
the one the grid asks for, otherwise it is set aside and run again (and the rerun's samples are
never the old run's)."""

from __future__ import annotations

import json

import pytest
import yaml

from rtdmd_bench import config, registry, reproduce
from rtdmd_bench.reproduce import BenchSpec, differences, run_one, run_teacher, set_aside_if_stale

# A small bench on toy2d: a few training steps and a small evaluation.
TINY = BenchSpec("toy2d", "toy-tilt", (("kl_target", "KL"),))
FAST = ("train.budget=1e8", "train.batch_size=16", "base.fit_steps=200")


def test_the_grid_is_every_registered_method_then_the_ablations(monkeypatch):
    spec = reproduce.BENCHES["toy2d"]
    assert [m for _, m, _ in spec.rows()] == ["dmd2", "acdmd", "rtdmd", "dmd-rl", "gdmd", "gndm", "gndmr", "dmd2"]
    monkeypatch.setitem(registry.METHODS, "new-method", registry.Entry("methods.dmd2:DMD2", "a new method"))
    assert ("new-method", "new-method", ()) in spec.rows()


def test_differences_name_every_changed_key():
    old = {"method": {"lr": 0.003, "stage1": {"eta": 0.9}}, "run": {"seed": 0}, "gone": 1}
    new = {"method": {"lr": 0.001, "stage1": {"eta": 0.9}}, "run": {"seed": 0}, "added": [1, 2]}
    assert differences(old, new) == ["method.lr: 0.003 -> 0.001", "gone: 1 -> '(absent)'",
                                     "added: '(absent)' -> [1, 2]"]
    assert differences(old, old) == []


def _with_recipe_change(monkeypatch, change: str) -> None:
    original = config.recipe
    monkeypatch.setattr(config, "recipe", lambda base, method: original(base, method) + [change])


@pytest.mark.slow
def test_a_run_is_reused_only_while_its_config_is_the_grids(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.BENCHES, "tiny", TINY)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ("tiny", "dmd2", "dmd2", FAST, 0, str(tmp_path))
    first = run_one(*args)
    folder = tmp_path / "tiny" / "dmd2-s0"
    assert first == {"run": str(folder), "reused": False, "note": ""}
    evaluated = (folder / "eval" / "toy-tilt.json").read_text()
    assert run_one(*args) == {"run": str(folder), "reused": True, "note": ""}  # unchanged: reused
    assert (folder / "eval" / "toy-tilt.json").read_text() == evaluated
    # A config written before a field existed (here train.log_with) holds it at its default: reused.
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["train"].pop("log_with") == "none"
    (folder / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert run_one(*args) == {"run": str(folder), "reused": True, "note": ""}

    recipe_lr = yaml.safe_load((folder / "config.yaml").read_text())["method"]["lr_generator"]
    _with_recipe_change(monkeypatch, "method.lr_generator=0.0123")  # a recipe value changes
    again = run_one(*args)
    aside = tmp_path / "tiny" / "dmd2-s0.stale-1"
    assert again["reused"] is False
    assert again["note"] == (f"{folder}: config changed (method.lr_generator: {recipe_lr!r} -> 0.0123); "
                             f"rerunning it, the old one is now {aside}")
    assert (aside / "eval" / "toy-tilt.json").read_text() == evaluated  # set aside, not deleted
    assert yaml.safe_load((folder / "config.yaml").read_text())["method"]["lr_generator"] == 0.0123
    old, new = (json.loads((f / "eval" / "toy-tilt.json").read_text()) for f in (aside, folder))
    assert old["sampler"]["tag"] != new["sampler"]["tag"]  # the rerun's samples are its own
    assert old["metrics"]["kl_target"] != new["metrics"]["kl_target"]
    assert run_one(*args)["reused"] is True


def test_a_teacher_evaluation_is_reused_only_while_the_base_config_is_the_grids(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.BENCHES, "tiny", TINY)
    args = ("tiny", "teacher (4-step CPS)", "cps", 4, str(tmp_path))
    folder = tmp_path / "tiny" / "teacher-cps4"
    assert run_teacher(*args)["note"] == ""
    evaluated = (folder / "eval" / "toy-tilt.json").read_text()
    _with_recipe_change(monkeypatch, "method.lr_generator=0.0123")  # the teacher does not depend on it
    assert run_teacher(*args)["note"] == ""
    assert (folder / "eval" / "toy-tilt.json").read_text() == evaluated
    _with_recipe_change(monkeypatch, "run.beta=0.5")  # the tilted target does
    note = run_teacher(*args)["note"]
    assert note.startswith(f"{folder}: config changed (run.beta: 1.0 -> 0.5)")
    assert json.loads((folder / "eval" / "toy-tilt.json").read_text())["metrics"] != json.loads(evaluated)["metrics"]


def test_a_folder_that_cannot_be_compared_is_set_aside_never_deleted(tmp_path):
    folder = tmp_path / "teacher-cps4"
    for n in (1, 2):  # made by an older reproduce, which wrote no config file
        (folder / "eval").mkdir(parents=True)
        (folder / "eval" / "toy-tilt.json").write_text(f"run {n}")
        note = set_aside_if_stale(folder, {"run": {"seed": 0}}, config_file="teacher_config.yaml")
        aside = tmp_path / f"teacher-cps4.stale-{n}"
        assert note == f"{folder}: no teacher_config.yaml to compare; rerunning it, the old one is now {aside}"
        assert (aside / "eval" / "toy-tilt.json").read_text() == f"run {n}" and not folder.exists()
    assert set_aside_if_stale(folder, {"run": {"seed": 0}}) == ""  # nothing there: nothing to do


def test_base_checks_keep_the_measured_checks_and_a_base_without_describe_has_none():
    from rtdmd_bench.reproduce import base_checks

    class Described:
        def describe(self):
            return {"teacher_check": {"overall": 0.5}, "cache": "/somewhere", "evaluator_accuracy": 0.998}

    assert base_checks(Described()) == {"teacher_check": {"overall": 0.5}, "evaluator_accuracy": 0.998}
    assert base_checks(object()) == {}  # toy2d has no describe(): its metadata used to end in AttributeError
