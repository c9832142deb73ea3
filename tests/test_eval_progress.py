"""`rtdmd-bench eval` shows its progress: suites done, each suite's generation prompt by prompt and its
scoring (rtdmd_bench/progress.py `EvalBars`, fed by `evaluate_suite`); a suite's own bar nests below."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from rtdmd_bench import progress
from rtdmd_bench.evaluate import evaluate_suites

SMALL = {"images_per_prompt": 200}  # toy-tilt at a fraction of its 5000 samples per prompt


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def generating(self, label, done, total):
        self.calls.append(("generating", label, done, total))

    def scoring(self, suite, finished):
        self.calls.append(("scoring", suite, finished))


def test_evaluate_reports_each_prompt_generated_then_the_scoring(tmp_path):
    rec = Recorder()
    [res] = list(evaluate_suites(["toy-tilt"], base="toy2d", out=tmp_path, overrides=SMALL, progress=rec))
    n = res["num_prompts"]
    assert n >= 2
    assert rec.calls == [*(("generating", "toy-tilt", i, n) for i in range(1, n + 1)),
                         ("scoring", "toy-tilt", False), ("scoring", "toy-tilt", True)]
    rec.calls.clear()  # a second evaluation reads every prompt from the cache and says so too
    list(evaluate_suites(["toy-tilt"], base="toy2d", out=tmp_path, overrides=SMALL, progress=rec))
    assert [c[2] for c in rec.calls if c[0] == "generating"] == list(range(1, n + 1))


def test_eval_bars_count_suites_and_prompts_and_nest_a_suites_own_bar(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=out, width=140, force_terminal=False))
    with progress.progress_bar(counts=True) as bar:
        bars = progress.EvalBars(bar, 2)
        for i in range(1, 4):
            bars.generating("geneval2", i, 3)
        bars.scoring("geneval2", False)
        with progress.progress_bar(counts=True) as inner:  # what GenEval2's judge opens while it scores
            inner.update(inner.add_task("geneval2 judge", total=5, info="atoms"), advance=5)
        bars.scoring("geneval2", True)
    text = " ".join(out.getvalue().split())
    assert "geneval2 judge" in text and "5/5" in text  # the inner bar, shown without a LiveError
    assert "eval: suites" in text and "1/2" in text
    assert "geneval2: generate" in text and "3/3" in text
    assert "geneval2: score" in text and "1/1" in text


def test_the_eval_command_shows_the_bars(tmp_path, monkeypatch):
    from rtdmd_bench.cli import app

    err = io.StringIO()
    monkeypatch.setattr(progress, "_console", Console(file=err, width=140, force_terminal=False))
    result = CliRunner().invoke(app, ["eval", "--suite", "toy-tilt", "--base", "toy2d", "--out", str(tmp_path),
                                       "--set", "suite.images_per_prompt=200"])
    assert result.exit_code == 0, result.output
    text = " ".join(err.getvalue().split())
    n = len(list((tmp_path / "samples").rglob("*.safetensors")))  # one cache file per prompt
    assert n >= 2 and f"toy-tilt: generate ━" in text and f"{n}/{n}" in text
    assert "toy-tilt: score" in text and "eval: suites" in text and "1/1" in text
