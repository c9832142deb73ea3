"""compare: grouping by config over seeds, mean ± 95% CI, Markdown/CSV/LaTeX output."""

import csv
import io
import json
import math

import pytest

from rtdmd_bench.report import Table, compare_runs, grid_table, mean_ci
from rtdmd_bench.runs import RunDir, atomic_write_json


def test_mean_ci_matches_student_t():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert h == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t_{0.975, 2} * sd / sqrt(n)
    assert mean_ci([5.0]) == (5.0, 0.0)


def _fake_run(root, name, method, seed, kl, lr=1e-3):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.write_config({"run": {"method": method, "base": "toy2d", "seed": seed, "run_id": name},
                      "method": {"lr": lr}, "overrides": [f"run.seed={seed}", f"run.run_id={name}"]})
    atomic_write_json(run.path / "eval" / "toy-tilt.json",
                      {"metrics": {"kl_target": kl, "reward": {"toy-quadratic": -kl}}, "higher_is_better": {"kl_target": False, "reward": True}})
    atomic_write_json(run.path / "result.json", {"compute": {"used_flops": 1e9}, "wall_time_s": 2.0})
    return run.path


def test_compare_groups_seeds_and_writes_tables(tmp_path):
    runs = [_fake_run(tmp_path, f"a{s}", "dmd2", s, kl) for s, kl in enumerate([1.0, 2.0, 3.0])]
    runs += [_fake_run(tmp_path, "b0", "rtdmd", 0, 0.5), _fake_run(tmp_path, "c0", "dmd2", 0, 9.0, lr=5.0)]
    table = compare_runs(runs)
    labels = [label for label, _ in table.rows]
    assert len(labels) == 3  # dmd2 x3 seeds grouped; another lr is another row
    dmd2 = dict(table.rows)[labels[0]]
    assert dmd2["kl_target"] == [1.0, 2.0, 3.0] and "seeds 0,1,2" in labels[0]
    assert "reward.toy-quadratic" in table.columns and table.higher_is_better["kl_target"] is False
    paths = table.write(tmp_path / "out", "cmp")
    md = (tmp_path / "out" / "cmp.md").read_text()
    assert "2.000 ± 2.484" in md and "kl_target ↓" in md
    csv = (tmp_path / "out" / "cmp.csv").read_text().splitlines()
    assert csv[0].startswith("row,kl_target_mean,kl_target_ci95,kl_target_n")
    assert r"\pm" in (tmp_path / "out" / "cmp.tex").read_text()
    assert len(paths) == 3


def test_latex_escapes_every_special_character():
    table = Table(["KL_target", "50% & #1"], higher_is_better={"KL_target": False})
    table.add(r"a\b {c} $d ~e ^f <g>", {"KL_target": [1.0, 2.0, 3.0], "50% & #1": None})
    expected = (
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "row & KL\\_target $\\downarrow$ & 50\\% \\& \\#1 \\\\\n"
        "\\midrule\n"
        "a\\textbackslash{}b \\{c\\} \\$d \\textasciitilde{}e \\textasciicircum{}f \\textless{}g\\textgreater{}"
        " & 2.000 $\\pm$ 2.484 & – \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
    )
    assert table.latex() == expected


def test_csv_numeric_columns_hold_numbers_or_nothing(tmp_path):
    # A teacher row has no FLOPs and no wall time: empty cells, not a dash.
    table = grid_table(
        [("teacher (4-step CPS)", [{"kl": 7.5}]),
         ("dmd2", [{"kl": 1.0, "FLOPs used": 1e9, "wall time (s)": 2.0},
                   {"kl": 2.0, "FLOPs used": 1e9, "wall time (s)": 3.0}])],
        [("kl", "KL"), ("FLOPs used", "FLOPs used"), ("wall time (s)", "wall time (s)")], {"kl": False})
    rows = list(csv.reader(io.StringIO(table.csv())))
    assert rows[0] == ["row", "KL_mean", "KL_ci95", "KL_n", "FLOPs used_mean", "FLOPs used_ci95", "FLOPs used_n",
                       "wall time (s)_mean", "wall time (s)_ci95", "wall time (s)_n"]
    for row in rows[1:]:
        for text in row[1:]:
            assert text == "" or math.isfinite(float(text)), (row[0], text)
    assert rows[1][1:] == ["7.5", "0", "1", "", "", "", "", "", ""]
    half_width = 12.706204736174698 * math.sqrt(0.5) / math.sqrt(2)  # t_{0.975, 1} sd / sqrt(n), sd = sqrt(1/2)
    assert rows[2][1:4] == ["1.5", f"{half_width:.6g}", "2"]
    md = table.markdown().splitlines()
    assert md[0] == "| row | KL ↓ | FLOPs used | wall time (s) |"
    assert md[2] == "| teacher (4-step CPS) | 7.500 | – | – |"


def test_rich_table_prints_labels_with_brackets_as_text():
    from rich.console import Console

    table = Table(["kl"], higher_is_better={"kl": False})
    table.add("dmd2 / toy2d [seeds 0,1]", {"kl": [1.0, 2.0]})
    table.add("[bold]x[/bold]", {"kl": "+0.1 [+0.0, +0.2] *"})
    console = Console(width=200, record=True)
    console.print(table.rich(title="a [title]"))
    text = console.export_text()
    assert "dmd2 / toy2d [seeds 0,1]" in text and "[bold]x[/bold]" in text and "a [title]" in text
    assert "+0.1 [+0.0, +0.2] *" in text
    rows = list(csv.reader(io.StringIO(table.csv())))
    assert rows[2] == ["[bold]x[/bold]", "+0.1 [+0.0, +0.2] *", "", ""]  # a text cell: as is, in the mean column
