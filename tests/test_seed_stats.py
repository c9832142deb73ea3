"""Seed statistics of the CPU tables and sweeps (rtdmd_bench/seed_stats.py) and the paired-difference
half of the bench tables (rtdmd_bench/bench_tables.py), against hand computations.

t quantiles from a printed Student-t table: t_{0.975, 1} = 12.7062, t_{0.975, 2} = 4.3027,
t_{0.975, 4} = 2.7764."""

from __future__ import annotations

import csv
import io
import math

import pytest

from rtdmd_bench import bench_tables
from rtdmd_bench.seed_stats import mean_sd, paired_difference, paired_differences, pick_by_mean

T1, T2, T4 = 12.7062, 4.3027, 2.7764


def test_paired_difference_by_hand():
    # diffs 2, 3, 4: mean 3, sd 1, half-width t_{.975,2} * 1 / sqrt(3)
    m, h, n = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert (m, n) == (3.0, 3) and h == pytest.approx(T2 / math.sqrt(3), rel=1e-4)
    # pairing removes the spread the two rows share: each row alone has sd 2 (CI ~5), the difference sd 0.5
    m, h, n = paired_difference([10.0, 12.0, 14.0, 11.0, 13.0], [9.0, 11.5, 12.5, 10.0, 12.0])
    # diffs 1, .5, 1.5, 1, 1: mean 1, sd sqrt((0 + .25 + .25 + 0 + 0) / 4) = sqrt(.125)
    assert m == pytest.approx(1.0) and h == pytest.approx(T4 * math.sqrt(0.125) / math.sqrt(5), rel=1e-4)


def test_a_single_reference_value_is_compared_to_every_seed_and_missing_pairs_drop():
    # reference once (a teacher): diffs 2, 4, 6, mean 4, sd 2
    m, h, n = paired_difference([3.0, 5.0, 7.0], [1.0])
    assert (m, n) == (4.0, 3) and h == pytest.approx(T2 * 2 / math.sqrt(3), rel=1e-4)
    # seed 1 missing in the row, seed 2 diverged (nan) in the reference: diffs 2 and ... only seed 0, 3
    assert paired_differences([3.0, None, 7.0, 6.0], [1.0, 2.0, float("nan"), 2.0]) == [2.0, None, None, 4.0]
    m, h, n = paired_difference([3.0, None, 7.0, 6.0], [1.0, 2.0, float("nan"), 2.0])
    assert (m, n) == (3.0, 2) and h == pytest.approx(T1 * math.sqrt(2) / math.sqrt(2), rel=1e-4)
    with pytest.raises(ValueError, match="paired by seed"):
        paired_differences([1.0, 2.0, 3.0], [1.0, 2.0])


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([2.0, 4.0, 9.0]) == pytest.approx((5.0, math.sqrt((9 + 1 + 16) / 2)))
    assert mean_sd([3.0]) == (3.0, 0.0)


def test_the_pick_is_the_best_mean_not_the_luckiest_seed():
    trials = {1e-3: [6.0, 6.0, 6.0], 3e-3: [1.0, 50.0, 60.0], 3e-4: [4.0, float("nan"), 1.0]}
    # 3e-3 has the best single seed (1.0), 3e-4 the best finite mean (2.5) but a diverged seed
    assert pick_by_mean(trials) == 1e-3
    assert pick_by_mean({"a": [1.0, 2.0], "b": [3.0, 3.0]}, lower_is_better=False) == "b"


# ---------------------------------------------------------------- the tables' paired differences
ROWS = [("teacher", [{"kl": 1.0, "r": -9.0}]),
        ("dmd2", [{"kl": 3.0, "r": -8.0}, {"kl": 5.0, "r": -8.0}, {"kl": 7.0, "r": -8.0}]),
        ("rtdmd", [{"kl": 2.0, "r": -3.0}, {"kl": 2.0, "r": -2.0}, {"kl": 2.0}])]
COLUMNS = [("kl", "KL"), ("r", "reward")]


def test_paired_cells_against_the_teacher_and_against_dmd2():
    cells = dict(bench_tables.paired_cells(ROWS, COLUMNS, "teacher"))
    assert set(cells) == {"dmd2", "rtdmd"}  # the reference row is left out
    m, h, n = cells["dmd2"]["KL"]  # 2, 4, 6 - by hand above
    assert (m, n) == (4.0, 3) and h == pytest.approx(T2 * 2 / math.sqrt(3), rel=1e-4)
    assert cells["dmd2"]["reward"] == (1.0, 0.0, 3)  # +1 on every seed: zero spread
    assert cells["rtdmd"]["reward"][:1] == (6.5,) and cells["rtdmd"]["reward"][2] == 2  # seed 2 has no reward
    by_dmd2 = dict(bench_tables.paired_cells(ROWS, COLUMNS, "dmd2"))
    assert by_dmd2["teacher"]["KL"] is None  # one evaluation against three seeds: no pairing
    m, h, n = by_dmd2["rtdmd"]["KL"]  # -1, -3, -5
    assert (m, n) == (-3.0, 3) and h == pytest.approx(T2 * 2 / math.sqrt(3), rel=1e-4)
    with pytest.raises(ValueError, match="reference row"):
        bench_tables.paired_cells(ROWS, COLUMNS, "gndm")


def test_paired_text_marks_only_intervals_that_exclude_zero():
    assert bench_tables.paired_text((4.0, 2.5, 3)) == "4.000 ± 2.500 *"
    assert bench_tables.paired_text((1.0, 2.5, 3)) == "1.000 ± 2.500"
    assert bench_tables.paired_text((-1.5, 0.0, 1)) == "-1.500"
    assert bench_tables.paired_text(None) == "–"


def test_reference_is_the_teacher_where_there_is_one_else_dmd2():
    assert bench_tables.reference_label("", ["teacher (4-step CPS)", "teacher (100-step Euler)"]) == \
        "teacher (100-step Euler)"
    assert bench_tables.reference_label("", []) == "dmd2"
    assert bench_tables.reference_label("gdmd", ["teacher"]) == "gdmd"


def test_written_tables_carry_the_legend_and_the_paired_block(tmp_path):
    from rtdmd_bench.report import grid_table

    table = grid_table(ROWS, COLUMNS, {"kl": False, "r": True})
    ref = bench_tables.write_bench_tables(tmp_path, table, ROWS, COLUMNS, ["teacher"], "", 3)
    assert ref == "teacher"
    md = (tmp_path / "table.md").read_text()
    assert "95% Student-t CI over its 3 training seeds" in md and "## Paired differences to teacher" in md
    # 4.3027 * 2 / sqrt(3) = 4.968 > 4: the KL difference is not resolved; the reward one (+1 on each seed) is
    assert "| dmd2 | 4.000 ± 4.968 | 1.000 ± 0.000 * |" in md
    # the second block pairs with dmd2's run of the same seed: rtdmd - dmd2 KL = -1, -3, -5
    assert "## Paired differences to dmd2" in md and "| rtdmd | -3.000 ± 4.968 |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "paired.csv").read_text())))
    assert [(r["reference"], r["row"]) for r in rows] == [("teacher", "dmd2"), ("teacher", "rtdmd"),
                                                           ("dmd2", "teacher"), ("dmd2", "rtdmd")]
    assert float(rows[0]["KL_diff_mean"]) == 4.0 and rows[0]["KL_n"] == "3" and rows[2]["KL_n"] == ""


def test_every_committed_cpu_table_has_five_seeds_and_its_paired_blocks():
    """The committed tables of every bench in the grid (toy2d, digits, and any base added later)."""
    import json
    from pathlib import Path

    from rtdmd_bench.reproduce import BENCHES, GROUPS

    root = Path(__file__).resolve().parents[1] / "results"
    benches = {b for group, names in GROUPS.items() if group != "toy-beta" for b in names}
    for bench in sorted(benches):
        meta = json.loads((root / bench / "metadata.json").read_text())
        assert len(meta["seeds"]) >= 5, bench
        teachers = [label for label, _, _ in BENCHES[bench].teacher_rows]
        assert meta["paired_reference"] == bench_tables.reference_label(BENCHES[bench].reference, teachers)
        md = (root / bench / "table.md").read_text()
        assert f"## Paired differences to {meta['paired_reference']}" in md and "Uncertainty:" in md, bench
