"""The GenEval agreement study: Cohen's kappa and agreement rows against a hand-computed example
and scikit-learn, then the CLI end to end on CPU (stand-in models vs the stand-in official
evaluator) on an image folder and, slow, on a tiny-sd3 run."""

from __future__ import annotations

import json
import random

import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from geneval_official_stand_in import META, make_checkout
from rtdmd_bench.cli import app
from rtdmd_bench.errors import UserError
from suites.geneval import GenEval, write_official_layout
from suites.geneval_agreement import agreement_row, cohen_kappa, compare, folder_samples
from suites.geneval_official import ENV

# Hand example: 10 images; agree on 7 (p_o = 0.7); T says correct 6 times, O 5 times, so
# p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5 and kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
T = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1]
O = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]


@pytest.fixture(autouse=True)
def no_env_vars(monkeypatch):
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("STAND_IN_MODE", raising=False)


def test_kappa_and_row_on_the_hand_example():
    assert cohen_kappa(T, O) == pytest.approx(0.4)
    row = agreement_row(T, O)
    assert row == {"images": 10, "transformers_accuracy": 0.6, "official_accuracy": 0.5, "agreement": 0.7,
                   "kappa": pytest.approx(0.4), "both_correct": 4, "transformers_only": 2, "official_only": 1,
                   "both_wrong": 3}


def test_kappa_matches_scikit_learn_and_is_undefined_only_for_one_shared_verdict():
    rng = random.Random(0)
    for n in (1, 2, 7, 50, 301):
        for p in (0.1, 0.5, 0.9):
            a = [rng.random() < p for _ in range(n)]
            b = [x if rng.random() < 0.8 else not x for x in a]
            ours = cohen_kappa(a, b)
            if ours is None:
                assert len(set(a) | set(b)) == 1  # one shared verdict: p_e = 1
                continue
            assert ours == pytest.approx(cohen_kappa_score(a, b, labels=[False, True]), abs=1e-12)
    assert cohen_kappa([True] * 3, [True] * 3) is None
    assert cohen_kappa([False, False, False, True], [False] * 4) == 0.0 == cohen_kappa_score(
        [0, 0, 0, 1], [0, 0, 0, 0], labels=[0, 1])


def test_compare_splits_by_tag_in_genevals_order_and_pools_all_images():
    tags = ["counting"] * 4 + ["single_object"] * 6
    out = compare(tags, T, O)
    assert list(out["per_tag"]) == ["single_object", "counting"]
    assert out["per_tag"]["counting"]["agreement"] == 0.75  # T[:4] vs O[:4]: agree on images 0, 2, 3
    assert out["per_tag"]["single_object"]["both_correct"] == 2  # T[4:] vs O[4:]: images 6, 8
    assert out["all_images"] == agreement_row(T, O)


OFFICIAL_VERDICTS = [True, False, True, False, True, True, False, False, False, True, True, True]


def _expected_row(a, b):
    return {"agreement": sum(x == y for x, y in zip(a, b)) / len(a),
            "kappa": None if len(set(a) | set(b)) == 1 else cohen_kappa_score(a, b, labels=[False, True])}


def test_cli_on_an_image_folder_with_stand_in_models(tmp_path):
    x = torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.4
    x[:, 0, 0, 0] = torch.tensor([0.9 if v else 0.1 for v in OFFICIAL_VERDICTS])
    folder = write_official_layout(x, META, tmp_path / "images")
    loc = make_checkout(tmp_path / "env")
    out = tmp_path / "study.json"
    args = ["geneval-agreement", "--images", str(folder), "--out", str(out), "--set", "suite.models=stand-in",
            *(a for k, v in loc.items() for a in ("--set", f"suite.official.{k}={v}"))]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    study = json.loads(out.read_text())
    # the transformers side, judged independently by the suite on the same 8-bit images
    suite = GenEval(GenEval.Config(models="stand-in"))
    per_image = [META[i // 4] for i in range(12)]
    transformers = [ok for ok, _ in suite.judge(x, per_image)]
    for tag in ("single_object", "counting", "colors"):
        idx = [i for i, r in enumerate(per_image) if r["tag"] == tag]
        a, b = [transformers[i] for i in idx], [OFFICIAL_VERDICTS[i] for i in idx]
        row = study["per_tag"][tag]
        expected = _expected_row(a, b)
        assert row["agreement"] == pytest.approx(expected["agreement"])
        assert row["kappa"] == (None if expected["kappa"] is None else pytest.approx(expected["kappa"]))
        assert row["official_accuracy"] == sum(b) / 4 and row["transformers_accuracy"] == sum(a) / 4
    pooled = _expected_row(transformers, OFFICIAL_VERDICTS)
    assert study["all_images"]["agreement"] == pytest.approx(pooled["agreement"])
    o, t = study["scorers"]["official"]["metrics"], study["scorers"]["transformers"]["metrics"]
    assert o["single_object"] == 0.5 and o["counting"] == 0.5 and o["colors"] == 0.75  # by hand
    assert study["difference"]["overall"] == pytest.approx(t["overall"] - (0.5 + 0.5 + 0.75) / 3)
    assert [d["image"] for d in study["disagreements"]] == [i for i in range(12) if transformers[i] != OFFICIAL_VERDICTS[i]]
    assert study["scorers"]["transformers"]["suite"] == "geneval[stand-in]"
    assert study["scorers"]["official"]["suite"] == "geneval[official]" and study["source"] == {"images": str(folder)}
    assert "all images" in res.output and "kappa" in res.output and f"wrote {out}" in res.output


def test_cli_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_MODE", "fail")
    folder = write_official_layout(torch.rand(12, 3, 8, 8), META, tmp_path / "images")
    loc = make_checkout(tmp_path / "env")
    for k, v in loc.items():
        monkeypatch.setenv(ENV[k], v)
    res = CliRunner().invoke(app, ["geneval-agreement", "--images", str(folder), "--set", "suite.models=stand-in"])
    assert res.exit_code != 0 and "stderr line 30" in str(res.exception)
    assert not (folder / "geneval-agreement.json").exists()
    res = CliRunner().invoke(app, ["geneval-agreement", "--images", str(folder), "--set", "suite.scorer=official"])
    assert "drop --set suite.scorer" in str(res.exception)


@pytest.mark.slow
def test_eval_and_agreement_on_a_tiny_sd3_run(tmp_path, shared_data):
    """The official scorer through `eval --run` and the study on the same cached samples: the
    study's two sides equal the two eval files, which never share a name."""
    from rtdmd_bench.config import resolve_config
    from rtdmd_bench.train import train

    cfg = resolve_config("dmd2", "tiny-sd3", ["run.rewards=tiny-clipscore=1.0", "train.batch_size=4", "train.threads=1",
                                              "method.num_fake_per_gen=2", "train.budget=4G"])
    run = tmp_path / "run"
    train(cfg, run)
    loc = make_checkout(tmp_path / "env")
    sets = ["--set", f"suite.prompts={shared_data / 'geneval' / 'evaluation_metadata.jsonl'}", "--set", "suite.limit=2"]
    official = [a for k, v in loc.items() for a in ("--set", f"suite.official.{k}={v}")]
    runner = CliRunner()
    for extra in (["--set", "suite.models=stand-in"], ["--set", "suite.scorer=official", *official]):
        res = runner.invoke(app, ["eval", "--run", str(run), "--suite", "geneval", "--batch-size", "4", *sets, *extra])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["geneval-agreement", "--run", str(run), "--batch-size", "4", *sets,
                              "--set", "suite.models=stand-in", *official])
    assert res.exit_code == 0, res.output
    study = json.loads((run / "eval" / "geneval-agreement.json").read_text())
    stand_in = json.loads((run / "eval" / "geneval[stand-in].json").read_text())
    mmdet = json.loads((run / "eval" / "geneval[official].json").read_text())
    assert mmdet["suite_version"].startswith("geneval/official-mmdet-1") and stand_in["suite_version"] == "geneval/stand-in-2"
    for side, saved in (("transformers", stand_in), ("official", mmdet)):
        assert study["scorers"][side]["metrics"] == {k: saved["metrics"][k] for k in study["scorers"][side]["metrics"]}
    assert study["images"] == 8 and sum(study["all_images"][c] for c in
                                        ("both_correct", "transformers_only", "official_only", "both_wrong")) == 8


def test_an_image_folder_without_geneval_metadata_is_refused(tmp_path):
    folder = write_official_layout(torch.rand(4, 3, 8, 8), [{"prompt": "a cat"}], tmp_path / "images")
    with pytest.raises(UserError, match="not a GenEval metadata line"):
        folder_samples(folder)
    write_official_layout(torch.rand(12, 3, 8, 8), META, tmp_path / "ok")
    pixels, rows = folder_samples(tmp_path / "ok", limit=2)
    assert pixels.shape == (8, 3, 8, 8) and rows == META[:2]
