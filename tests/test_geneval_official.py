"""suite.scorer=official: GenEval's own evaluator run as a process in a user-named environment,
tested at the process boundary with a stand-in checkout that writes the official formats."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

import pytest
import torch

from geneval_official_stand_in import CHECKPOINT_BYTES, META, make_checkout
from rtdmd_bench.errors import UserError
from suites import geneval_official
from suites.geneval import GenEval
from suites.geneval_official import ENV, OfficialScorer

# The stand-in evaluator's verdict per image (prompt-major, 4 per prompt): a bright red corner.
VERDICTS = [True, True, False, False, True, True, True, False, False, False, False, False]


@pytest.fixture()
def meta_file(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in META))
    return path


@pytest.fixture()
def official(tmp_path):
    return make_checkout(tmp_path / "env")


@pytest.fixture(autouse=True)
def no_env_vars(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("STAND_IN_MODE", raising=False)


def images_with(verdicts, size=8):
    x = torch.rand(len(verdicts), 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.4
    x[:, 0, 0, 0] = torch.tensor([0.9 if v else 0.1 for v in verdicts])
    return x


def official_suite(meta_file, locations, **extra):
    return GenEval(GenEval.Config(prompts=str(meta_file), scorer="official",
                                  official=OfficialScorer.Config(**locations), **extra))


def test_official_results_map_back_to_the_suites_figures(meta_file, official):
    suite = official_suite(meta_file, official)
    r = suite.score(images_with(VERDICTS), suite.prompts(), None)
    # by hand: single_object 2/4, counting 3/4, colors 0/4
    assert r["single_object"] == 0.5 and r["counting"] == 0.75 and r["colors"] == 0.0
    assert r["overall"] == pytest.approx((0.5 + 0.75 + 0.0) / 3)
    assert [f["index"] for f in r["failures"]] == [i for i, v in enumerate(VERDICTS) if not v]
    assert all(f["reason"] == "stand-in: dark corner" for f in r["failures"])
    # the official summary's own figures, parsed and kept: 5/12 images, prompts with any correct 2/3
    assert r["official"]["summary"]["correct_images"] == pytest.approx(5 / 12, abs=5e-5)
    assert r["official"]["summary"]["correct_prompts"] == pytest.approx(2 / 3, abs=5e-5)
    assert "Overall score (avg. over tasks): 0.41667" in r["official"]["summary_text"]
    # labelled as the official scorer, never as the transformers detector's version
    assert r["suite"] == suite.name == "geneval[official]"
    assert r["version"] == suite.version == "geneval/official-mmdet-1+unverified-checkpoint"
    assert "not official GenEval numbers" in r["note"] and r["partial"] and r["n_prompts"] == 3
    assert r["official"]["checkpoint_sha256"] == hashlib.sha256(CHECKPOINT_BYTES).hexdigest()
    assert r["official"]["python"] == os.path.abspath(sys.executable)
    assert r["per_image"] == {"correct_images": [1.0 if v else 0.0 for v in VERDICTS]}  # for paired comparisons


def test_official_result_has_every_key_of_the_transformers_result(meta_file, official):
    class NothingDetected:
        def detect(self, images):
            return [[] for _ in images]

    x = images_with(VERDICTS)
    base = GenEval(GenEval.Config(prompts=str(meta_file)), detector=NothingDetected(), colour_fn=lambda *a: [])
    ours = official_suite(meta_file, official)
    assert set(base.score(x, base.prompts(), None)) <= set(ours.score(x, ours.prompts(), None))


def test_published_checkpoint_gives_the_plain_official_version(meta_file, official, monkeypatch):
    monkeypatch.setattr(geneval_official, "CHECKPOINT_SHA256_PREFIX", hashlib.sha256(CHECKPOINT_BYTES).hexdigest()[:8])
    suite = official_suite(meta_file, official)
    assert suite.version == "geneval/official-mmdet-1" and "not official" not in suite.official.note


@pytest.mark.parametrize("missing", ["python", "checkout", "detector"])
def test_each_missing_location_names_its_field_and_variable(official, missing):
    given = {**official, missing: ""}
    with pytest.raises(UserError, match=rf"suite\.official\.{missing}=PATH or the environment variable {ENV[missing]}"):
        OfficialScorer(OfficialScorer.Config(**given), environ={})


def test_environment_variables_fill_empty_fields_and_fields_win(official, tmp_path):
    environ = {ENV[k]: v for k, v in official.items()}
    from_env = OfficialScorer(OfficialScorer.Config(), environ=environ)
    assert str(from_env.checkout) == str(tmp_path / "env" / "geneval")
    environ[ENV["checkout"]] = str(tmp_path / "nowhere")
    assert OfficialScorer(OfficialScorer.Config(checkout=official["checkout"]), environ=environ).checkout == from_env.checkout
    with pytest.raises(UserError, match="nowhere.*is not a folder"):
        OfficialScorer(OfficialScorer.Config(), environ=environ)


def test_bad_locations_are_refused(official, tmp_path):
    os.remove(os.path.join(official["checkout"], "evaluation", "evaluate_images.py"))
    with pytest.raises(UserError, match=r"has no evaluation/evaluate_images\.py.*djghosh13/geneval"):
        OfficialScorer(OfficialScorer.Config(**official), environ={})
    other = make_checkout(tmp_path / "other")
    os.remove(os.path.join(other["detector"], geneval_official.CHECKPOINT))
    with pytest.raises(UserError, match="download_models.sh"):
        OfficialScorer(OfficialScorer.Config(**other), environ={})
    (tmp_path / "not-python").write_text("")
    with pytest.raises(UserError, match="not an executable file"):
        OfficialScorer(OfficialScorer.Config(**{**other, "python": str(tmp_path / "not-python")}), environ={})


def test_stand_in_models_and_the_official_scorer_do_not_mix(meta_file, official):
    with pytest.raises(UserError, match="models=stand-in"):
        official_suite(meta_file, official, models="stand-in")


def test_a_failing_evaluator_shows_its_stderr_tail_and_leaves_nothing(meta_file, official, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "fail")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    suite = official_suite(meta_file, official)
    with pytest.raises(UserError) as err:
        suite.score(images_with(VERDICTS), suite.prompts(), None)
    msg = str(err.value)
    assert "exit status 3" in msg and "evaluate_images.py" in msg and "--model-path" in msg
    assert "stderr line 30" in msg and "stderr line 11" in msg and "stderr line 10" not in msg  # last 20 lines
    assert list(scratch.iterdir()) == []  # the temporary layout and partial results are gone


@pytest.mark.parametrize("mode,message", [("drop-one", "no result for 1 of 12 images"),
                                          ("silent", "wrote no results.jsonl"),
                                          ("lying-summary", "summary_scores.py says overall")])
def test_incomplete_or_inconsistent_output_is_an_error(meta_file, official, monkeypatch, mode, message):
    monkeypatch.setenv("STAND_IN_MODE", mode)
    suite = official_suite(meta_file, official)
    with pytest.raises(UserError, match=message):
        suite.score(images_with(VERDICTS), suite.prompts(), None)


def test_parse_summary_reads_the_official_print_format():
    text = ("Summary\n=======\nTotal images: 2212\nTotal prompts: 553\n% correct images: 54.57%\n"
            "% correct prompts: 80.29%\n\nTask breakdown\n==============\nsingle_object    = 98.12% (314 / 320)\n\n"
            "Overall score (avg. over tasks): 0.55026\n")
    assert geneval_official.parse_summary(text) == pytest.approx(
        {"correct_images": 0.5457, "correct_prompts": 0.8029, "overall": 0.55026})
    with pytest.raises(UserError, match="Overall score"):
        geneval_official.parse_summary(text.replace("Overall", "Total"))
