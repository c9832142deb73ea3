"""Fail fast (issue 13): every suite's models are loaded, or for the heavy judges their files found,
before the base is built and before any image is generated (`evaluate.prepare_suite`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rtdmd_bench import evaluate, registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import loading

GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "prompt": "a photo of two clocks"},
]


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 over an empty hub cache and no local weight folders: nothing can be found."""
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for var in ("RTDMD_BENCH_CLIP_PATH", "RTDMD_BENCH_GENEVAL2_PATH", "RTDMD_BENCH_HPSV3_PATH",
                "RTDMD_BENCH_QWEN2VL_PATH", "RTDMD_BENCH_HPSV3_TEMPLATE_PATH"):
        monkeypatch.delenv(var, raising=False)
    loading.clear_model_cache()
    yield tmp_path
    loading.clear_model_cache()


@pytest.fixture
def never_generate(monkeypatch):
    """Record every call that would build the base or generate an image (there must be none)."""
    calls: list[str] = []
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: calls.append("generate"))
    monkeypatch.setattr(evaluate, "build_teacher", lambda *a, **k: calls.append("build_teacher"))
    monkeypatch.setattr("rtdmd_bench.train.load_for_eval", lambda *a, **k: calls.append("load_for_eval"))
    return calls


def geneval_file(tmp_path: Path) -> Path:
    path = tmp_path / "metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_ROWS))
    return path


@pytest.mark.slow  # transformers' Mask2Former import: ~7 s
def test_geneval_without_its_detector_fails_before_the_base_is_built_or_an_image_generated(
        offline_empty_hub, never_generate, tmp_path):
    out = tmp_path / "teacher-eval"
    with pytest.raises(UserError, match="detector") as failed:
        list(evaluate.evaluate_suites(["geneval"], base="tiny-sd3", overrides={"prompts": str(geneval_file(tmp_path))},
                                      out=out))
    assert never_generate == [] and not out.exists()
    assert "Traceback" not in str(failed.value)


@pytest.mark.slow
def test_eval_geneval_offline_through_the_cli_writes_nothing_and_prints_one_message(
        offline_empty_hub, tmp_path, monkeypatch, capsys):
    from rtdmd_bench import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", "eval", "--suite", "geneval", "--base", "tiny-sd3",
                                      "--prompts", str(geneval_file(tmp_path)), "--out", "OUT"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("error:") == 1 and "detector" in err and "Traceback" not in err
    assert not (tmp_path / "OUT").exists()  # no sample cache, no result


def test_every_registered_suite_has_a_prepare_hook():
    missing = [n for n in registry.names("suites") if not callable(getattr(registry.resolve("suites", n), "prepare", None))]
    assert missing == []


def test_a_later_suites_missing_prompt_file_fails_before_the_first_suite_generates(never_generate, tmp_path):
    """Every suite is built and prepared before the first one generates."""
    with pytest.raises(UserError, match="does not exist"):
        list(evaluate.evaluate_suites(["toy-tilt", "fid-t"], base="toy2d",
                                      overrides={"fid-t.prompts": str(tmp_path / "missing.txt"),
                                                 "fid-t.features": "stand-in"}))
    assert never_generate == []


def test_preference_suites_load_their_scorers_in_prepare(monkeypatch):
    from suites.preference import ClipScoreSuite

    built: list[str] = []
    real = evaluate.registry.resolve

    def resolve(kind, name):
        cls = real(kind, name)
        if kind == "rewards":
            built.append(name)
        return cls

    monkeypatch.setattr("suites.preference.registry.resolve", resolve)
    suite = ClipScoreSuite(ClipScoreSuite.Config(scorer="tiny-clipscore"))
    assert built == []
    suite.prepare()
    assert built == ["tiny-clipscore"] and suite._rewards is not None
    suite.rewards()
    assert built == ["tiny-clipscore"]  # scoring reuses what prepare loaded


def test_a_preference_suite_without_weights_fails_in_prepare(offline_empty_hub):
    from suites.preference import ClipScoreSuite

    with pytest.raises(UserError, match="clipscore"):
        ClipScoreSuite(ClipScoreSuite.Config()).prepare()


def test_precision_settings_are_checked_in_prepare():
    from suites.preference import ClipScoreSuite

    suite = ClipScoreSuite(ClipScoreSuite.Config(scorer="tiny-clipscore", precision="float16", device="cpu"))
    with pytest.raises(UserError, match="float16"):
        suite.prepare()


def judge_folder_by_hand(root: Path, shards: list[str], missing: str = "") -> Path:
    """A folder with the files GenEval2's judge needs (empty files: only their presence is checked)."""
    root.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json", *shards):
        if name != missing:
            (root / name).write_text("{}")
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}))
    return root


def test_geneval2_prepare_finds_the_judges_files_without_loading_it(tmp_path, monkeypatch):
    from suites.geneval2 import GenEval2Suite

    monkeypatch.setattr("rtdmd_bench.rewards.geneval2.load_judge", lambda *a: pytest.fail("the judge was loaded"))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    folder = judge_folder_by_hand(tmp_path / "judge", shards)
    GenEval2Suite(GenEval2Suite.Config(local_path=str(folder))).prepare()  # all present: passes, loads nothing
    broken = judge_folder_by_hand(tmp_path / "broken", shards, missing=shards[1])
    with pytest.raises(UserError, match=shards[1]):
        GenEval2Suite(GenEval2Suite.Config(local_path=str(broken))).prepare()


def test_protocol_suites_delegate_prepare_to_the_suite_that_scores(tmp_path, monkeypatch):
    from suites.rtdmd_protocol import RTDMDGenEval2

    monkeypatch.setattr("rtdmd_bench.rewards.geneval2.load_judge", lambda *a: pytest.fail("the judge was loaded"))
    cfg = RTDMDGenEval2.Config()
    cfg.scoring.local_path = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="nowhere"):
        RTDMDGenEval2(cfg).prepare()


def test_hpsv3_prepare_checks_the_files_of_the_suites_settings_and_loads_nothing(monkeypatch):
    import suites.hpsv3 as hpsv3_suite
    from rtdmd_bench.rewards.hpsv3 import HPSv3

    seen: list = []
    monkeypatch.setattr(hpsv3_suite, "weight_files", lambda c: seen.append(c))
    monkeypatch.setattr(HPSv3, "__init__", lambda *a, **k: pytest.fail("the 7B model was built"))
    cfg = hpsv3_suite.HPSv3Suite.Config()
    cfg.hpsv3.local_path, cfg.hpsv3.base_path = "/weights/hpsv3", "/weights/qwen2vl"
    hpsv3_suite.HPSv3Suite(cfg).prepare()
    assert len(seen) == 1 and seen[0].local_path == "/weights/hpsv3" and seen[0].base_path == "/weights/qwen2vl"


def test_hpsv3_weight_files_name_everything_missing(offline_empty_hub):
    from rtdmd_bench.rewards.hpsv3 import HPSv3, weight_files

    with pytest.raises(UserError) as failed:
        weight_files(HPSv3.Config(local_path=str(offline_empty_hub / "nowhere"), template_path=str(offline_empty_hub / "t")))
    assert "nowhere" in str(failed.value) and "template" in str(failed.value)


def test_fid_prepare_needs_the_inception_weights(tmp_path):
    from suites.fid import FIDT

    with pytest.raises(UserError, match="inception_path"):
        FIDT(FIDT.Config()).prepare()
    FIDT(FIDT.Config(features="stand-in")).prepare()  # nothing to find
