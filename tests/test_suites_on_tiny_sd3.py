"""Every evaluation suite end to end through the CLI on the real SD3 code path (tiny random
config), with tiny stand-in scorers (never reported under the official names), the real GenEval
prompt file from ../shared/data, and the engine's cache (issue 6's "done when")."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torchvision.utils import save_image

STAND_INS = "tiny-clipscore,tiny-aesthetic,tiny-pickscore,tiny-hpsv21,tiny-imagereward"


def _eval(tmp_path, suite, *sets):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", suite,
            "--out", str(tmp_path / "out"), "--batch-size", "2"]
    for s in sets:
        args += ["--set", f"suite.{s}"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    files = list((tmp_path / "out" / "eval").glob("*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


@pytest.mark.slow
@pytest.mark.parametrize("suite,sets", [
    ("clipscore", ["scorer=tiny-clipscore", "limit=2"]),
    ("pickscore", ["scorer=tiny-pickscore", "limit=2"]),
    ("aesthetic", ["scorer=tiny-aesthetic", "limit=2"]),
    ("imagereward", ["scorer=tiny-imagereward", "limit=2"]),
    ("drawbench", [f"scorers={STAND_INS}", "limit=2"]),
    ("fid-t", ["features=stand-in", "limit=3"]),
])
def test_preference_and_fid_t_suites_run_end_to_end(tmp_path, shared_data, suite, sets):
    prompts = shared_data / ("pickscore" if suite == "pickscore" else "drawbench") / "test.txt"
    res = _eval(tmp_path, suite, *sets, f"prompts={prompts}")
    assert "stand-in" in res["suite"], res["suite"]  # never under the official name
    numeric = {k: v for k, v in res["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric and all(torch.isfinite(torch.tensor(float(v))) for v in numeric.values())
    assert set(res["higher_is_better"]) <= set(res["metrics"])


@pytest.mark.slow
def test_hpsv2_suite_with_style_files(tmp_path):
    folder = tmp_path / "hpd"
    folder.mkdir()
    for style in ("anime", "concept-art", "paintings", "photo"):
        (folder / f"{style}.txt").write_text(f"a {style} cat\na {style} dog\n")
    res = _eval(tmp_path, "hpsv2", f"prompts={folder}", "scorer=tiny-hpsv21", "limit=1")
    assert "stand-in" in res["suite"] and res["num_prompts"] == 4 and "average" in res["metrics"]


@pytest.mark.slow
def test_fid_against_a_reference_folder(tmp_path, shared_data):
    ref = tmp_path / "ref"
    ref.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        save_image(torch.rand(3, 32, 32, generator=g), ref / f"{i}.png")
    res = _eval(tmp_path, "fid", f"reference={ref}", "features=stand-in", "limit=3",
                f"prompts={shared_data / 'drawbench' / 'test.txt'}")
    assert "stand-in" in res["suite"] and res["metrics"]["fid"] >= 0


@pytest.mark.slow
def test_geneval_on_the_real_prompt_file(tmp_path, shared_data):
    res = _eval(tmp_path, "geneval", "models=stand-in", "limit=2",
                f"prompts={shared_data / 'geneval' / 'evaluation_metadata.jsonl'}")
    assert res["suite"] == "geneval[stand-in]" and res["images_per_prompt"] == 4
    assert 0.0 <= res["metrics"]["overall"] <= 1.0
