"""The geneval2 suite: its prompt file, the two reduction forms (GenEval2's x100 mean, RTDMD's
fraction with -10 dropped), the extra analyses, names/versions/dtypes per form, freeing the judge,
and `rtdmd-bench eval --suite geneval2 --base tiny-sd3` end to end with the stand-in judge."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import loading
from rtdmd_bench.rewards.geneval2 import JUDGE_KIND
from suites import prompt_sets
from suites.geneval2 import GenEval2Suite, analyses, reduce_lines


def suite(tmp_path=None, rows=None, **overrides) -> GenEval2Suite:
    cfg = GenEval2Suite.Config(models="stand-in", device="cpu", **overrides)
    if rows is not None:
        path = tmp_path / "g2.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg.prompts = str(path)
    return GenEval2Suite(cfg)


def test_prompt_file_matches_the_registered_checksum(shared_data):
    path = shared_data / "geneval2" / "test.jsonl"
    spec = prompt_sets.OFFICIAL["geneval2"]
    assert prompt_sets.sha256_of(path) == spec.sha256 and spec.url.endswith("dataset/geneval2/test.jsonl")
    s = suite(prompts=str(path))
    assert len(s.prompts()) == spec.lines == 800
    assert len(suite(prompts=str(path), limit=64).prompts()) == 64


def test_reduction_forms():
    # GenEval2: 100 x the mean over prompts
    assert reduce_lines([0.2, 0.4, 0.9], "official") == (pytest.approx(100 * 1.5 / 3, abs=1e-12), 0)
    # RTDMD: -10 entries dropped, the rest averaged as a fraction (float32, as its float32 scores)
    value, dropped = reduce_lines([0.2, -10.0, 0.4], "rtdmd")
    assert dropped == 1 and value == pytest.approx(0.3, abs=1e-7)
    assert value == float(np.float32((np.float32(0.2) + np.float32(0.4)) / np.float32(2)))
    with pytest.raises(UserError, match="every line scored -10"):
        reduce_lines([-10.0, -10.0], "rtdmd")


def test_analyses_by_hand():
    atoms = [[0.5, 0.125], [0.4], []]
    rows = [{"skills": ["object", "count"], "atom_count": 3}, {"skills": ["count"], "atom_count": 4},
            {"skills": [], "atom_count": 3}]
    out = analyses(atoms, rows, 100.0)
    assert out["soft_tifa_am"] == pytest.approx(100 * ((0.5 + 0.125) / 2 + 0.4) / 2)
    assert out["skill_object"] == pytest.approx(50.0) and out["skill_count"] == pytest.approx(100 * (0.125 + 0.4) / 2)
    assert out["atoms_3"] == pytest.approx(25.0) and out["atoms_4"] == pytest.approx(40.0)
    assert analyses(atoms, [{}, {}, {}], 1.0).keys() == {"soft_tifa_am"}


def test_names_versions_and_dtypes_per_form():
    s = suite()
    assert (s.name, s.version, s.dtype()) == ("geneval2[stand-in]", "geneval2/stand-in-official-1", "bfloat16")
    s = suite(form="rtdmd")
    assert (s.name, s.version, s.dtype()) == ("geneval2[rtdmd,stand-in]", "geneval2/stand-in-rtdmd-1", "float16")
    s = suite(form="rtdmd", dtype="float32")
    assert s.name == "geneval2[rtdmd,float32,stand-in]" and s.version == "geneval2/stand-in-rtdmd-float32-1"
    official = GenEval2Suite()
    assert (official.name, official.version) == ("geneval2", "geneval2/official-1")


def test_rtdmd_form_scores_lines_drops_minus_ten_and_frees_the_judge(tmp_path):
    rows = [{"prompt": "a pig", "vqa_list": [["How many pigs are in the image?", "one"], ["Is the pig pink?", "Yes"]]},
            {"prompt": "nothing", "vqa_list": []},
            {"prompt": "a pig", "vqa_list": [["How many pigs are in the image?", "one"], ["Is the pig pink?", "Yes"]]}]
    s = suite(tmp_path, rows, form="rtdmd", dtype="float32")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = s.score(x, s.prompts())
    atoms = out["atom_scores"]
    assert [len(a) for a in atoms] == [2, 0, 2] and out["lines_dropped"] == 1
    per_line = [math.sqrt(a[0] * a[1]) for a in (atoms[0], atoms[2])]  # duplicates count again
    assert out["geneval2"] == pytest.approx(sum(per_line) / 2, rel=1e-6)
    assert "per_image" not in out  # a -10 line was dropped: per-line scores would not average to the figure
    assert out["suite"] == "geneval2[rtdmd,float32,stand-in]" and "STAND-IN" in out["note"] and out["scale"] == 1.0
    assert not any(kind == JUDGE_KIND for kind, _ in loading._MODELS)  # released after scoring
    with pytest.raises(UserError, match="order"):
        s.score(x[:2], ["nothing", "a pig"])
    with pytest.raises(UserError, match="repeats prompts"):
        suite(tmp_path, rows).prompts()  # the official form maps each prompt to one image


def test_official_form_is_100_times_the_mean_of_geometric_means(tmp_path):
    rows = [{"prompt": "a pig", "vqa_list": [["Is the pig pink?", "Yes"], ["How many pigs?", "two"]]},
            {"prompt": "a dog", "vqa_list": [["Is there a dog?", "Yes"]]}]
    s = suite(tmp_path, rows, dtype="float32", release=False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = s.score(x, s.prompts())
    a, b = out["atom_scores"]
    assert out["geneval2"] == pytest.approx(100 * (math.sqrt(a[0] * a[1]) + b[0]) / 2, rel=1e-9)
    assert out["per_image"]["geneval2"] == pytest.approx([100 * math.sqrt(a[0] * a[1]), 100 * b[0]], rel=1e-6)
    assert out["dtype"] == "float32" and out["scale"] == 100.0 and out["partial"]
    assert any(kind == JUDGE_KIND for kind, _ in loading._MODELS)  # kept with release=False
    loading.clear_model_cache()


@pytest.mark.slow
def test_eval_cli_on_tiny_sd3_with_the_stand_in_judge(tmp_path, shared_data):
    """`rtdmd-bench eval --suite geneval2 --base tiny-sd3` end to end (~15 s), labelled stand-in."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", "geneval2",
            "--out", str(tmp_path / "out"), "--batch-size", "2", "--set", "suite.models=stand-in",
            "--set", "suite.limit=2", "--set", f"suite.prompts={shared_data / 'geneval2' / 'test.jsonl'}"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp_path / "out" / "eval").glob("*.json")
    res = json.loads(path.read_text())
    assert res["suite"] == "geneval2[stand-in]" and "STAND-IN" in res["metrics"]["note"]
    assert res["suite_version"] == "geneval2/stand-in-official-1" and res["num_prompts"] == 2
    assert res["seed"] == 42 and 0 <= res["metrics"]["geneval2"] <= 100
    assert [len(a) for a in res["metrics"]["atom_scores"]] == [5, 3]  # the first two lines' atoms
    assert set(res["higher_is_better"]) <= set(res["metrics"])
