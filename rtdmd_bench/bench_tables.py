"""The CPU benchmark tables' second half: every row's paired difference to a reference row.

A row of `reproduce`'s grid has one value per training seed; the reference row is the bench's
teacher (one evaluation: it has no training seed, and every run is evaluated on the same evaluation
noise) or, on a bench without a teacher row, dmd2 (one value per seed). Per column and row the cell
is mean ± half-width of the 95% Student-t CI of the per-seed differences row - reference
(`seed_stats.paired_difference`), marked `*` when the interval excludes 0: the differences the
seeds resolve. The legend says which uncertainty every number carries.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Literal, Sequence

from rtdmd_bench.report import Table
from rtdmd_bench.runs import atomic_write_text
from rtdmd_bench.seed_stats import paired_difference

Rows = Sequence[tuple[str, Sequence[dict[str, float]]]]  # (row label, one cell dict per seed)


def reference_label(reference: str, teacher_rows: Sequence[str]) -> str:
    """The reference row: `reference` if set, else the last teacher row (the teacher's many-step
    sampler), else dmd2."""
    return reference or (teacher_rows[-1] if teacher_rows else "dmd2")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e4 or 0 < abs(x) < 1e-3 else f"{x:.3f}"


def paired_cells(rows: Rows, columns: Sequence[tuple[str, str]], reference: str
                 ) -> list[tuple[str, dict[str, tuple[float, float, int] | None]]]:
    """Per row and column title: (mean, CI half-width, n) of row - reference paired by seed (None
    where no seed has both values); the reference row itself is left out."""
    found = dict((label, seeds) for label, seeds in rows)
    if reference not in found:
        raise ValueError(f"reference row {reference!r} is not among the rows {list(found)}")
    ref = found[reference]
    out = []
    for label, seeds in rows:
        if label == reference:
            continue
        cells: dict[str, tuple[float, float, int] | None] = {}
        for key, title in columns:
            values, ref_values = [s.get(key) for s in seeds], [s.get(key) for s in ref]
            if len(ref_values) != 1 and len(values) != len(ref_values):
                cells[title] = None  # a single-evaluation row against a per-seed reference: no pairing
                continue
            m, h, n = paired_difference(values, ref_values)
            cells[title] = (m, h, n) if n else None
        out.append((label, cells))
    return out


def paired_text(cell: tuple[float, float, int] | None) -> str:
    """'-1.234 ± 0.567 *' (the * when the CI excludes 0), a bare difference for n = 1, '–' for none."""
    if cell is None or not math.isfinite(cell[0]):
        return "–"
    m, h, n = cell
    if n < 2:
        return _fmt(m)
    return f"{_fmt(m)} ± {_fmt(h)}" + (" *" if abs(m) > h else "")


def legend(seeds: int, teacher_rows: Sequence[str], reference: str) -> str:
    teachers = ", ".join(teacher_rows) or "none"
    return (f"Uncertainty: a method row's cell is the mean ± the half-width of the 95% Student-t CI over its "
            f"{seeds} training seeds (0..{seeds - 1}; every run is evaluated on the same evaluation prompts and "
            f"noise, so the CI is the spread between training seeds). Teacher rows ({teachers}) are one evaluation "
            "on that same noise: no CI. FLOPs and wall time are measured per run.")


LegendPart = tuple[str, Literal["", "strong", "code"]]
"""A piece of a legend and how it is set: plain, strong (the reference's name) or code (the `*` marker)."""


def paired_legend_parts(seeds: int, reference: str, per_seed_reference: bool) -> list[LegendPart]:
    """The paired block's legend as pieces, so the Markdown here and the report's HTML set and escape
    it each their own way from one text."""
    how = ("one value per seed, paired with the row's run of the same seed" if per_seed_reference else
           "one evaluation on the evaluation noise every run shares, subtracted from each seed's value")
    return [("Paired differences to ", ""), (reference, "strong"),
            (f" ({how}): per seed, row − reference; mean ± half-width of the 95% Student-t CI over the {seeds} "
             "per-seed differences (n − 1 degrees of freedom). ", ""), ("*", "code"),
            (": the CI excludes 0, a difference these seeds resolve; without ", ""), ("*", "code"),
            (" the seeds cannot tell the row from the reference in that column. "
             + ("Teacher rows: – (one evaluation has no seed to pair)." if per_seed_reference
                else "Teacher rows other than the reference: a single difference, no CI."), "")]


def paired_legend(seeds: int, reference: str, per_seed_reference: bool) -> str:
    """The legend in Markdown, as table.md and paired.md print it."""
    marks = {"": "{}", "strong": "**{}**", "code": "`{}`"}
    return "".join(marks[style].format(text) for text, style in paired_legend_parts(seeds, reference, per_seed_reference))


def paired_markdown(cells: list[tuple[str, dict[str, Any]]], titles: Sequence[str]) -> str:
    head = "| row | " + " | ".join(f"Δ {t}" for t in titles) + " |"
    lines = [head, "|---|" + "---|" * len(titles)]
    lines += ["| " + label + " | " + " | ".join(paired_text(c.get(t)) for t in titles) + " |" for label, c in cells]
    return "\n".join(lines) + "\n"


def paired_csv(blocks: Sequence[tuple[str, list[tuple[str, dict[str, Any]]]]], titles: Sequence[str]) -> str:
    """One line per (reference, row): per column the difference's mean, CI half-width and n."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["reference", "row"] + [x for t in titles for x in (f"{t}_diff_mean", f"{t}_diff_ci95", f"{t}_n")])
    for ref, cells in blocks:
        for label, c in cells:
            row = [ref, label]
            for t in titles:
                v = c.get(t)
                row += ["", "", ""] if v is None else [f"{v[0]:.6g}", f"{v[1]:.6g}", v[2]]
            w.writerow(row)
    return buf.getvalue()


def write_bench_tables(folder: Any, table: Table, rows: Rows, columns: Sequence[tuple[str, str]],
                       teacher_rows: Sequence[str], reference: str, seeds: int) -> str:
    """Write table.{md,csv,tex} (the table and, in the Markdown, its legend and the paired
    differences) and paired.{md,csv} (every block); returns the reference row's label.

    When the reference is a single evaluation (the teacher), the differences' CI is the row's own; a
    second block pairs every row with dmd2's run of the same seed, where pairing removes the spread
    the two rows share (the same training seed)."""
    ref = reference_label(reference, teacher_rows)
    labels = [label for label, _ in rows]
    refs = [ref] + (["dmd2"] if ref != "dmd2" and "dmd2" in labels else [])
    titles = [t for _, t in columns]
    table.write(folder, "table")
    blocks, computed = [], []
    for r in refs:
        cells = paired_cells(rows, columns, r)
        computed.append((r, cells))
        per_seed_ref = len(dict((lab, s) for lab, s in rows)[r]) > 1
        blocks.append(f"## Paired differences to {r}\n\n" + paired_markdown(cells, titles) + "\n"
                      + paired_legend(seeds, r, per_seed_ref) + "\n")
    atomic_write_text(folder / "table.md", table.markdown() + "\n" + legend(seeds, teacher_rows, ref) + "\n\n"
                      + "\n".join(blocks))
    atomic_write_text(folder / "paired.md", "\n".join(blocks))
    atomic_write_text(folder / "paired.csv", paired_csv(computed, titles))
    return ref
