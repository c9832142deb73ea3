"""`rtdmd-bench compare`: metric definitions against the reference tables (refusals), sections per base
and suite, matched-compute and settings flags, paired differences, the CLI. Run folders are written by
hand (config.yaml, result.json, eval/<suite>.json) as `rtdmd-bench train` and `eval` write them."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from rtdmd_bench import compare_tables
from rtdmd_bench.cli import app, main
from rtdmd_bench.compare import build_sections
from rtdmd_bench.errors import UserError
from rtdmd_bench.metric_definitions import definition
from rtdmd_bench.references import load_reference, reference_ids
from rtdmd_bench.runs import RunDir, atomic_write_json

CLIP_RAW = {"reward": "clipscore", "config": {"convention": "raw_cosine", "model_id": "openai/clip-vit-large-patch14"}}


def eval_result(suite, per_image, prompts=64, images=1, seed=42, size=1024, steps=4, role="student", extra=None,
                store_per_image=True):
    """An eval/<suite>.json: metric means of `per_image` (metric -> [prompt][image] scores)."""
    return {"suite": suite, "suite_version": f"{suite}/test-1",
            "metrics": {**{m: float(np.mean(v)) for m, v in per_image.items()}, "scale": 1.0,
                        "scorers": {"clipscore": CLIP_RAW}, **(extra or {})},
            "higher_is_better": {m: True for m in per_image}, "images_per_prompt": images, "num_prompts": prompts,
            "seed": seed, "sampler": {"role": role, "num_steps": steps}, "image_size": [size, size],
            **({"per_image": per_image} if store_per_image else {})}


def fake_run(root, name, method, seed=0, base="sd3", budget=1e12, evals=()):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.write_config({"run": {"method": method, "base": base, "seed": seed, "run_id": name},
                      "method": {"lr": 1e-3}, "overrides": [f"run.seed={seed}"]})
    for result in evals:
        atomic_write_json(run.path / "eval" / f"{result['suite'].replace('[', '_').replace(']', '')}.json", result)
    atomic_write_json(run.path / "result.json", {"compute": {"used_flops": budget, "budget_flops": budget},
                                                 "wall_time_s": 1.0})
    return run.path


def scores(level, prompts=64, images=1, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return (level + noise * rng.standard_normal((prompts, images))).tolist()


# ----------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("table", reference_ids())
def test_every_reference_column_is_computed_by_a_suite_of_the_same_definition(table):
    # The reference files say which suite and result key compute each column; the definition table
    # must give exactly the column's variant for those, or compare could never show the column.
    ref = load_reference(table)
    for key, col in ref["metrics"].items():
        for c in col["computed_by"] or []:
            result = eval_result(c["suite"], {c["metric"]: [[0.5]] * 2})
            assert definition(result, c["metric"]) == col["variant"], (table, key, c["suite"])


def test_definition_ids_of_conventions_and_tags():
    raw = eval_result("drawbench", {"clipscore": [[0.3]]})
    tm = eval_result("drawbench", {"clipscore": [[30.0]]},
                     extra={"scorers": {"clipscore": {"config": {"convention": "torchmetrics"}}}})
    x100 = eval_result("clipscore", {"clipscore": [[30.0]]}, extra={"scale": 100.0})
    stand_in = eval_result("drawbench[stand-in]", {"clipscore": [[0.3]]})
    assert definition(raw, "clipscore") == "clipscore-vitl14-raw-cosine"
    assert definition(tm, "clipscore") == "clipscore-vitl14-torchmetrics-x100-clamped"
    assert definition(x100, "clipscore") == "clipscore-vitl14-raw-cosine+x100"
    assert definition(stand_in, "clipscore") == "clipscore-vitl14-raw-cosine+stand-in"
    v20 = eval_result("hpsv2", {"average": [[27.0]]}, extra={"scale": 100.0, "scorers": {"hpsv2": {"reward": "hpsv2"}}})
    v21 = eval_result("hpsv2", {"average": [[27.0]]}, extra={"scale": 100.0, "scorers": {"hpsv2": {"reward": "hpsv21"}}})
    assert definition(v20, "average") == "hpsv2.0-x100-benchmark-average"
    assert definition(v21, "average") == "hpsv2.1-x100-benchmark-average"
    assert definition(eval_result("toy-tilt", {"kl_target": [[1.0]]}), "kl_target") == "toy-tilt:kl_target@toy-tilt/test-1"


# ----------------------------------------------------------------------------- refusals
def refused(tmp_path, results, table, match):
    run = fake_run(tmp_path, "r0", "rtdmd", evals=results)
    with pytest.raises(UserError, match=match) as err:
        build_sections([run], reference=load_reference(table))
    return str(err.value)


def test_refuses_hpsv2_version_or_scale_in_the_hpsv21_cosine_column(tmp_path):
    v20 = eval_result("hpsv2", {"average": scores(27.0)}, extra={"scale": 100.0, "scorers": {"hpsv2": {"reward": "hpsv2"}}})
    msg = refused(tmp_path, [v20], "rtdmd-sd3m-table1", "different metric definitions")
    assert "hpsv2.1-cosine" in msg and "hpsv2.0-x100-benchmark-average" in msg


def test_refuses_geneval_of_another_scorer_in_rtdmds_geneval_column(tmp_path):
    ours = eval_result("geneval", {"overall": scores(0.7, images=4)}, images=4, prompts=553)
    msg = refused(tmp_path / "a", [ours], "rtdmd-flux2-4b-table2", "different metric definitions")
    assert "geneval-rtdmd-partial-credit" in msg and "geneval-transformers-m2f-overall" in msg
    official = eval_result("geneval[official]", {"overall": scores(0.7, images=4)}, images=4, prompts=553)
    msg = refused(tmp_path / "b", [official], "rtdmd-flux2-4b-table2", "different metric definitions")
    assert "geneval-rtdmd-partial-credit" in msg and "geneval-official-mmdet-overall" in msg


@pytest.mark.parametrize("extra,ours", [
    ({"scorers": {"clipscore": {"config": {"convention": "torchmetrics"}}}}, "clipscore-vitl14-torchmetrics-x100-clamped"),
    ({"scale": 100.0}, "clipscore-vitl14-raw-cosine+x100"),
])
def test_refuses_another_clipscore_convention(tmp_path, extra, ours):
    result = eval_result("rtdmd-64-drawbench", {"clipscore": scores(30.0)}, extra=extra)
    msg = refused(tmp_path, [result], "rtdmd-sd3m-table1", "different metric definitions")
    assert "clipscore-vitl14-raw-cosine (" in msg and ours in msg


def test_refuses_another_resolution(tmp_path):
    result = eval_result("rtdmd-64-drawbench", {"clipscore": scores(0.3)}, size=512)
    msg = refused(tmp_path, [result], "rtdmd-sd3m-table1", "different resolutions")
    assert "1024 px" in msg and "512 px" in msg and "RTDMD (Ours)" in msg


def test_reference_protocol_settings_are_checked_and_abstract_tables_match_nothing(tmp_path):
    table = load_reference("rtdmd-sd3m-table1")
    lines = table["metrics"]["clipscore"]["prompts"]["lines_used_candidates"]
    other = 200
    assert other not in lines
    result = eval_result("rtdmd-64-drawbench", {"clipscore": scores(0.3, prompts=other)}, prompts=other, seed=7)
    msg = refused(tmp_path / "a", [result], "rtdmd-sd3m-table1", "do not compare at matched")
    assert f"prompts {other} (reference: {' or '.join(map(str, lines))})" in msg and "noise seed 7 (reference: 42)" in msg
    hps = eval_result("hpsv2", {"average": scores(30.0)}, extra={"scale": 100.0})
    msg = refused(tmp_path / "b", [hps], "rdm-gndm-abstract", "no measured metric computes a column")
    assert "abstract-level" in msg


def test_refuses_two_definitions_among_measured_rows(tmp_path):
    tm = {"scorers": {"clipscore": {"config": {"convention": "torchmetrics"}}}}
    a = fake_run(tmp_path, "a", "dmd2", evals=[eval_result("drawbench", {"clipscore": scores(0.3)})])
    b = fake_run(tmp_path, "b", "rtdmd", evals=[eval_result("drawbench", {"clipscore": scores(30.0)}, extra=tm)])
    with pytest.raises(UserError, match="different metric definitions") as err:
        build_sections([a, b])
    assert "clipscore-vitl14-raw-cosine" in str(err.value) and "torchmetrics" in str(err.value)


# ----------------------------------------------------------------------------- grouping and matching
def test_sections_per_base_and_suite_and_budgets_beyond_two_percent_are_refused(tmp_path):
    ev = eval_result("toy-tilt", {"kl_target": scores(1.0, prompts=4)}, prompts=4, size=2, seed=0)
    runs = [fake_run(tmp_path, "d", "dmd2", base="toy2d", budget=1e10, evals=[ev]),
            fake_run(tmp_path, "r", "rtdmd", base="toy2d", budget=1.5e11, evals=[ev]),
            fake_run(tmp_path, "g", "dmd2", base="digits", budget=1e10,
                     evals=[eval_result("digits", {"accuracy": scores(0.9, prompts=10)}, prompts=10, size=8)])]
    with pytest.raises(UserError, match=r"FLOP budgets differ by 1400\.0% \(> 2%\)") as err:
        build_sections(runs)
    assert "--allow-unmatched" in str(err.value)
    sections = build_sections(runs, allow_unmatched=True)
    assert [(s.base, s.suite) for s in sections] == [("digits", "digits"), ("toy2d", "toy-tilt")]
    assert [g.method for g in sections[1].groups] == ["dmd2", "rtdmd"] and sections[0].problems == []
    assert any("FLOP budgets differ" in p for p in sections[1].problems)
    assert any("UNMATCHED" in line for line in compare_tables.legend(sections[1], None))


def test_budgets_within_two_percent_match(tmp_path):
    ev = eval_result("toy-tilt", {"kl_target": scores(1.0, prompts=4)}, prompts=4, size=2)
    runs = [fake_run(tmp_path, "d", "dmd2", budget=1e10, evals=[ev]),
            fake_run(tmp_path, "r", "rtdmd", budget=1.019e10, evals=[ev])]
    assert build_sections(runs)[0].problems == []


@pytest.mark.parametrize("change,what", [({"prompts": 32}, "prompts differ"), ({"images": 2}, "images per prompt differ"),
                                         ({"seed": 0}, "noise seed differ"), ({"size": 512}, "resolution differ"),
                                         ({"steps": 8}, "sampler steps differ")])
def test_different_evaluation_settings_are_refused(tmp_path, change, what):
    prompts, images = change.get("prompts", 64), change.get("images", 1)
    a = fake_run(tmp_path, "a", "dmd2", evals=[eval_result("drawbench", {"clipscore": scores(0.3)})])
    b = fake_run(tmp_path, "b", "rtdmd", evals=[eval_result("drawbench", {"clipscore": scores(0.3, prompts, images)},
                                                             **change)])
    with pytest.raises(UserError, match=what):
        build_sections([a, b])
    section = build_sections([a, b], allow_unmatched=True)[0]
    assert not section.paired or what == "sampler steps differ"


def test_seeds_of_one_row_evaluated_with_another_noise_seed_are_caught(tmp_path):
    runs = [fake_run(tmp_path, f"s{s}", "dmd2", seed=s, evals=[eval_result("drawbench", {"clipscore": scores(0.3)},
                                                                           seed=42 if s == 0 else 0)])
            for s in (0, 1)]
    with pytest.raises(UserError, match="noise seed differ") as err:
        build_sections(runs)
    assert "dmd2 / sd3 [seeds 0,1] s0: 42" in str(err.value) and "dmd2 / sd3 [seeds 0,1] s1: 0" in str(err.value)


def test_a_teacher_row_keeps_its_own_sampler_steps_and_is_the_default_baseline(tmp_path):
    teacher = tmp_path / "teacher"
    atomic_write_json(teacher / "eval" / "drawbench.json",
                      eval_result("drawbench", {"clipscore": scores(0.29)}, steps=28, role="teacher")
                      | {"run": {"method": "dmd2", "base": "sd3"}})
    a = fake_run(tmp_path, "a", "dmd2", evals=[eval_result("drawbench", {"clipscore": scores(0.30)})])
    section = build_sections([teacher, a])[0]
    assert section.problems == [] and section.baseline == "teacher / sd3"
    assert section.paired["dmd2 / sd3 [seeds 0]"]["clipscore"].mean == pytest.approx(0.01, abs=1e-12)


# ----------------------------------------------------------------------------- paired differences
def test_paired_difference_of_seed_averaged_prompts_against_the_chosen_baseline(tmp_path):
    base = scores(0.30, noise=0.02, seed=1)  # per-prompt difficulty shared by every method
    shifted = lambda k: [[v + k for v in row] for row in base]  # noqa: E731
    runs = [fake_run(tmp_path, f"r{s}", "rtdmd", seed=s, evals=[eval_result("drawbench", {"clipscore": shifted(k)})])
            for s, k in enumerate([0.01, 0.02, 0.03])]
    runs.append(fake_run(tmp_path, "d0", "dmd2", evals=[eval_result("drawbench", {"clipscore": base})]))
    runs.append(fake_run(tmp_path, "a0", "acdmd", evals=[eval_result("drawbench", {"clipscore": shifted(-0.005)})]))
    section = build_sections(runs, baseline="acdmd")[0]
    assert section.baseline == "acdmd / sd3 [seeds 0]"
    rt = section.paired["rtdmd / sd3 [seeds 0,1,2]"]["clipscore"]
    # seed-averaged per-prompt scores are base + 0.02; minus base - 0.005 is 0.025 on every prompt
    assert rt.mean == pytest.approx(0.025, abs=1e-12) and rt.low == pytest.approx(0.025, abs=1e-12)
    assert rt.prompts == 64 and rt.resamples == 10_000 and rt.seed == 0
    assert section.values["rtdmd / sd3 [seeds 0,1,2]"]["clipscore"] == pytest.approx(
        [np.mean(shifted(k)) for k in (0.01, 0.02, 0.03)])
    assert build_sections(runs)[0].baseline == "dmd2 / sd3 [seeds 0]"  # default: dmd2 without a teacher
    with pytest.raises(UserError, match="--baseline 'gdmd' is none of the rows"):
        build_sections(runs, baseline="gdmd")


def test_results_without_per_image_scores_still_compare_and_say_why_nothing_is_paired(tmp_path):
    a = fake_run(tmp_path, "a", "dmd2", evals=[eval_result("drawbench", {"clipscore": scores(0.3)}, store_per_image=False)])
    b = fake_run(tmp_path, "b", "rtdmd", evals=[eval_result("drawbench", {"clipscore": scores(0.31)}, store_per_image=False)])
    section = build_sections([a, b])[0]
    assert section.paired == {} and "no per-prompt scores" in section.notes[0]


def test_per_image_scores_that_do_not_average_to_the_figure_are_not_paired(tmp_path):
    # e.g. GenEval's overall averages per-tag accuracies: a mean over prompts would be another number
    ev = [eval_result("drawbench", {"clipscore": scores(0.3 + k, noise=0.01)}) for k in (0.0, 0.01)]
    ev[1]["metrics"]["clipscore"] += 0.5
    a, b = fake_run(tmp_path, "a", "dmd2", evals=[ev[0]]), fake_run(tmp_path, "b", "rtdmd", evals=[ev[1]])
    assert build_sections([a, b])[0].paired == {}


def test_toy_tilt_per_prompt_metrics_are_paired_by_prompt(tmp_path):
    def toy(kls):
        ev = eval_result("toy-tilt", {"kl_target": [[k] for k in kls]}, prompts=len(kls), size=2, seed=0,
                         store_per_image=False)
        ev["metrics"]["per_prompt"] = {f"p{i}": {"kl_target": k, "mode_masses": [0.5, 0.5]} for i, k in enumerate(kls)}
        return ev
    a = fake_run(tmp_path, "a", "dmd2", base="toy2d", evals=[toy([1.0, 2.0, 3.0, 4.0])])
    b = fake_run(tmp_path, "b", "rtdmd", base="toy2d", evals=[toy([0.5, 1.5, 2.5, 3.5])])
    section = build_sections([a, b])[0]
    d = section.paired["rtdmd / toy2d [seeds 0]"]["kl_target"]
    assert (d.mean, d.low, d.high) == pytest.approx((-0.5, -0.5, -0.5))
    assert any(line.startswith("caution: only 4 prompts") for line in compare_tables.legend(section, None))


# ----------------------------------------------------------------------------- the command
def test_cli_shows_published_rows_differences_and_the_legend(tmp_path):
    base = scores(0.30, noise=0.02, seed=2)
    runs = [fake_run(tmp_path, "d0", "dmd2", evals=[eval_result("rtdmd-64-drawbench", {"clipscore": base})]),
            fake_run(tmp_path, "r0", "rtdmd", evals=[eval_result(
                "rtdmd-64-drawbench", {"clipscore": [[v + 0.004] for (v,) in base]})])]
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--reference", "rtdmd-sd3m-table1",
                                   "--out", str(out), "--resamples", "500"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "published: RTDMD (Ours)" in text and "Student-t CI over training seeds" in text
    assert "paired bootstrap over prompts, 500 resamples, seed 0" in text
    doc = json.loads((out / "compare.json").read_text())
    section = doc["sections"][0]
    assert section["reference_columns"] == {"clipscore": "clipscore"} and section["baseline"] == "dmd2 / sd3 [seeds 0]"
    measured = float(np.mean(base)) + 0.004
    md = (out / "compare.md").read_text()
    assert f"{measured - 0.3161:+.4f}" in md  # RTDMD (Ours) printed CLIPScore 0.3161 in the README's table
    assert section["paired"]["rtdmd / sd3 [seeds 0]"]["clipscore"]["excludes_zero"] is True


def test_cli_refusal_is_one_message_and_exit_2(tmp_path, monkeypatch, capsys):
    ev = eval_result("toy-tilt", {"kl_target": scores(1.0, prompts=4)}, prompts=4, size=2)
    runs = [fake_run(tmp_path, "d", "dmd2", base="toy2d", budget=1e10, evals=[ev]),
            fake_run(tmp_path, "r", "rtdmd", base="toy2d", budget=1.5e11, evals=[ev])]
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", "compare", *map(str, runs), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as stop:
        main()  # the console entry point: a UserError is one message and status 2
    printed = capsys.readouterr()
    assert stop.value.code == 2 and "FLOP budgets differ" in printed.err and "Traceback" not in printed.err
    ok = CliRunner().invoke(app, ["compare", *map(str, runs), "--allow-unmatched", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0 and "UNMATCHED" in ok.output
