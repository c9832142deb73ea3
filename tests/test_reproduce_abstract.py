"""`reproduce TABLE` for the abstract-level tables: the plan built from their rows and claims on the
--base and --suite the user names, the one-line usage errors without them, the dry run's header."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from rtdmd_bench import cli
from rtdmd_bench.errors import UserError
from rtdmd_bench.references import PAPER_DIR
from rtdmd_bench.reproduce_launch import SlurmOptions, render
from rtdmd_bench.reproduce_tables import TablePlan, build_plan
from test_reproduce_tables import EXPECTED, _parse, recipe_budget

# By hand from the abstract tables' rows and claims (results/paper/*-abstract.json): the methods they name that this
# project maps (rtdmd_bench/reproduce_abstract.CLAIM_METHODS), teacher jobs, and the names not run.
ABSTRACT = {
    # claims: GDMD (4-step) vs "its multi-step teacher"; GDMD vs DMDR; GDMD vs "earlier few-step methods"
    "gdmd-abstract": ({"gdmd"}, {"its multi-step teacher"}, {"DMDR", "earlier few-step methods"}),
    # row GNDMR (method_key gndmr); claims: GNDM vs "vanilla DMD"; GNDMR vs "existing baselines"
    "rdm-gndm-abstract": ({"gndmr", "gndm", "dmd2"}, set(), {"existing baselines"}),
}
SUITES = ["geneval", "hpsv2", "rtdmd-drawbench"]
# The result files those suites write with their default config (suites/*.py: GenEval.name, HPSv2Suite's
# suite_name, RTDMD's protocol name rtdmd-<variant 64>-<column>), by hand.
SUITE_RESULTS = {"eval/geneval.json", "eval/hpsv2.json", "eval/rtdmd-64-drawbench.json"}


@pytest.fixture(scope="module")
def abstract_plans(tmp_path_factory) -> dict[str, TablePlan]:
    runs = tmp_path_factory.mktemp("abstract")
    return {t: build_plan(t, seeds=2, runs_dir=runs, gpus=8, base="sd3", suites=SUITES) for t in ABSTRACT}


def test_abstract_tables_plan_their_rows_and_claims_methods_on_the_users_base(abstract_plans):
    teacher_nfe = next(r["nfe"] for r in json.loads((PAPER_DIR / "rtdmd-sd3m-table1.json").read_text())["rows"]
                       if r["role"] == "teacher")  # the only sd3 teacher row of the full tables (100)
    for table, (methods, teachers, skipped) in ABSTRACT.items():
        p = abstract_plans[table]
        assert {(j.method, j.base, j.seed) for j in p.jobs if j.kind == "run"} == {
            (m, "sd3", s) for m in methods for s in (0, 1)}
        assert {j.row for j in p.jobs if j.kind == "teacher"} == teachers
        assert all(j.config["steps"] == teacher_nfe and j.base == "sd3" for j in p.jobs if j.kind == "teacher")
        assert {label for label, _ in p.skipped} == skipped
        assert list(p.budgets) == ["sd3"] and float(p.budgets["sd3"][0]) == recipe_budget("sd3")
        assert all(j.flops == recipe_budget("sd3") for j in p.jobs if j.kind == "run")
        for job in p.jobs:
            assert {f for s in job.steps if s.kind == "eval" for f in s.produces} == SUITE_RESULTS
    assert "no implementation" in dict(abstract_plans["gdmd-abstract"].skipped)["DMDR"]
    labels = {j.method: j.row for j in abstract_plans["rdm-gndm-abstract"].jobs}
    assert labels == {"gndmr": "GNDMR", "gndm": "GNDM", "dmd2": "vanilla DMD"}


def test_abstract_dry_run_header_says_what_is_chosen_and_unknown(abstract_plans):
    text = "\n".join(render(abstract_plans["rdm-gndm-abstract"], "local", SlurmOptions()))
    assert ("abstract-level table: base and protocol are not stated in the source; this plan uses --base sd3 and "
            "--suite geneval --suite hpsv2 --suite rtdmd-drawbench chosen by you; its numbers are not comparable to "
            "the abstract's figures") in text
    # the JSON's unknowns, by hand: the GNDMR row's fields, each column's definition, the claims
    assert "row GNDMR: not stated: base, nfe, guidance, resolution, scored_with_table_protocol" in text
    assert "FID-SD: not defined in the abstract" in text and "claim gndm-fid-vs-dmd (printed 1.87)" in text
    assert "vanilla DMD -> dmd2 (method.num_steps 4)" in text
    assert "existing baselines:" in text.split("rows not run:")[1]
    for table in EXPECTED:
        assert "abstract-level" not in "\n".join(render(build_plan(table), "local", SlurmOptions()))
    gdmd = "\n".join(render(abstract_plans["gdmd-abstract"], "local", SlurmOptions()))
    assert "teacher -> eval --base sd3, 100 steps: the NFE of sd3's teacher in rtdmd-sd3m-table1" in gdmd


def test_abstract_commands_parse_and_score_with_the_users_suites(abstract_plans):
    for p in abstract_plans.values():
        commands = [shlex.split(line) for line in render(p, "local", SlurmOptions()) if line.startswith("rtdmd-bench ")]
        assert len(commands) == sum(len(j.todo) for j in p.jobs)
        for cmd in commands:
            ctx = _parse(cmd[1:])
            if cmd[1] == "train":
                assert ctx.params["base"] == "sd3" and float(ctx.params["budget"]) == recipe_budget("sd3")
            else:
                assert list(ctx.params["suite"]) == SUITES and not ctx.params["set_"]


def _main(monkeypatch, capsys, *argv: str) -> str:
    monkeypatch.setattr(sys, "argv", ["rtdmd-bench", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err  # one line
    return err


def test_abstract_table_without_base_or_suite_is_a_one_line_usage_error(monkeypatch, capsys):
    err = _main(monkeypatch, capsys, "reproduce", "gdmd-abstract", "--dry-run", "--suite", "geneval")
    assert "abstract states no base" in err and "--base" in err and "--suite" not in err
    assert "real bases: sd3, sd35m, sd35l, flux2-4b, flux2-9b, flux1-dev" in err
    err = _main(monkeypatch, capsys, "reproduce", "rdm-gndm-abstract", "--dry-run", "--base", "sd3")
    assert "abstract states no protocol" in err and "--suite" in err and "no base" not in err
    # suites computing a metric of each column's name, by hand from the registry's suites
    assert "FID: fid, fid-t;" in err and "FID-SD: fid, fid-t" in err
    hps = err.split("HPS: ")[1].split(";")[0].split(", ")
    assert {"hpsv2", "drawbench", "hpsv3", "rtdmd-hpsv3", "rtdmd-drawbench"} == set(hps)
    err = _main(monkeypatch, capsys, "reproduce", "gdmd-abstract", "--dry-run")
    assert "no base" in err and "GenEval: geneval, geneval-rtdmd, rtdmd-geneval;" in err
    err = _main(monkeypatch, capsys, "reproduce", "gdmd-abstract", "--base", "sd4", "--suite", "nope", "--dry-run")
    assert "--base 'sd4' is not a base" in err and "--suite nope: not a suite" in err
    err = _main(monkeypatch, capsys, "reproduce", "rtdmd-sd3m-table1", "--base", "sd3", "--dry-run")
    assert "apply to an abstract-level table" in err


def test_abstract_teacher_steps_are_the_users_where_no_table_gives_them(tmp_path):
    with pytest.raises(UserError, match="no teacher steps.*--teacher-steps"):
        build_plan("gdmd-abstract", base="sd35m", suites=["geneval"], runs_dir=tmp_path)
    p = build_plan("gdmd-abstract", base="sd35m", suites=["geneval"], runs_dir=tmp_path, teacher_steps=28)
    assert [j.config["steps"] for j in p.jobs if j.kind == "teacher"] == [28]
    with pytest.raises(UserError, match="names no teacher"):
        build_plan("rdm-gndm-abstract", base="sd3", suites=["fid"], runs_dir=tmp_path, teacher_steps=28)
    # a suite group stands for its members (registry.SUITE_GROUPS 'rtdmd': RTDMD's five protocol suites)
    grouped = build_plan("rdm-gndm-abstract", base="sd3", suites=["rtdmd", "fid"], runs_dir=tmp_path)
    evals = [s for s in grouped.jobs[0].steps if s.kind == "eval"]
    assert [evals[0].argv[i + 1] for i, a in enumerate(evals[0].argv) if a == "--suite"] == [
        "rtdmd-drawbench", "rtdmd-geneval", "rtdmd-geneval2", "rtdmd-ocr", "rtdmd-hpsv3", "fid"]
