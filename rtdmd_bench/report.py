"""Comparison tables over runs: mean ± 95% CI over seeds; terminal (rich), Markdown, CSV, LaTeX."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rtdmd_bench.errors import UserError
from rtdmd_bench.runs import RunDir, atomic_write_text


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of the Student-t confidence interval (0 for a single value)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    from scipy import stats as sstats  # here: importing scipy.stats costs ~1 s, and every training
    # run with a curve imports this module (numeric_metrics) without needing it

    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, float(sstats.t.ppf(0.5 + level / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))


# LaTeX's special characters and the symbols the tables use, each with its text-mode spelling;
# replaced in one pass so that no replacement is escaped again.
LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
         "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
         ">": r"\textgreater{}", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def latex_escape(text: str) -> str:
    """`text` with every LaTeX special character written as LaTeX prints it literally."""
    return "".join(LATEX.get(ch, ch) for ch in text)


@dataclass
class Table:
    """Rows of named cells; each cell is a number, a list of per-seed values (None where a seed has
    no value), a text already formatted (printed as is; in the CSV's mean column) or None (no value:
    "–" in the text tables, an empty cell in the CSV)."""

    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def add(self, label: str, cells: dict[str, Any]) -> None:
        self.rows.append((label, cells))

    @staticmethod
    def values(value: Any) -> list[float]:
        """The finite numbers of a cell."""
        if isinstance(value, str):
            return []
        vals = [value] if isinstance(value, (int, float)) else list(value or [])
        return [float(v) for v in vals if v is not None and math.isfinite(float(v))]

    def cell_text(self, value: Any, digits: int = 3) -> str:
        if isinstance(value, str):
            return value
        vals = self.values(value)
        if not vals:
            return "–"
        m, h = mean_ci(vals)
        fmt = (lambda x: f"{x:.{digits}g}") if abs(m) >= 1e4 or (0 < abs(m) < 1e-3) else (lambda x: f"{x:.{digits}f}")
        return fmt(m) if len(vals) < 2 else f"{fmt(m)} ± {fmt(h)}"

    def header(self, c: str) -> str:
        arrow = {True: " ↑", False: " ↓"}.get(self.higher_is_better.get(c), "")
        return c + arrow

    def markdown(self) -> str:
        head = "| row | " + " | ".join(self.header(c) for c in self.columns) + " |"
        sep = "|---|" + "---|" * len(self.columns)
        lines = [head, sep] + ["| " + label + " | " + " | ".join(self.cell_text(cells.get(c)) for c in self.columns) + " |"
                               for label, cells in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """Per column: mean, 95% CI half-width and number of values; a cell without values is
        empty in all three, so every numeric column parses as a number or is empty."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row"] + [x for c in self.columns for x in (f"{c}_mean", f"{c}_ci95", f"{c}_n")])
        for label, cells in self.rows:
            row = [label]
            for c in self.columns:
                vals = self.values(cells.get(c))
                if isinstance(cells.get(c), str):
                    row += [cells[c], "", ""]
                    continue
                if not vals:
                    row += ["", "", ""]
                    continue
                m, h = mean_ci(vals)
                row += [f"{m:.6g}", f"{h:.6g}", len(vals)]
            w.writerow(row)
        return buf.getvalue()

    def latex(self) -> str:
        cols = "l" + "r" * len(self.columns)
        lines = [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                 " & ".join(["row"] + [latex_escape(self.header(c)) for c in self.columns]) + r" \\", r"\midrule"]
        for label, cells in self.rows:
            lines.append(" & ".join([latex_escape(label)] + [latex_escape(self.cell_text(cells.get(c)))
                                                             for c in self.columns]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def rich(self, title: str = "") -> Any:
        from rich.markup import escape
        from rich.table import Table as RichTable

        # escaped: labels such as "dmd2 / toy2d [seeds 0,1,2]" are text, not Rich markup tags
        t = RichTable(title=escape(title) or None)
        t.add_column("row", style="bold")
        for c in self.columns:
            t.add_column(escape(self.header(c)), justify="right")
        for label, cells in self.rows:
            t.add_row(escape(label), *[escape(self.cell_text(cells.get(c))) for c in self.columns])
        return t

    def write(self, folder: Path, stem: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext, text in (("md", self.markdown()), ("csv", self.csv()), ("tex", self.latex())):
            p = folder / f"{stem}.{ext}"
            atomic_write_text(p, text)
            paths.append(p)
        return paths


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten numeric scalars of a metrics dict (one level of nesting, e.g. per-reward means)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, dict) and not prefix:
            out.update({kk: vv for kk, vv in numeric_metrics(v, k + ".").items()})
    return out


RESOURCES = ("FLOPs used", "wall time (s)")
"""Cells of a finished run beside its metrics (from result.json)."""


def suite_cells(data: dict[str, Any], prefix: str = "") -> tuple[dict[str, float], dict[str, bool]]:
    """A suite result's numeric metrics (nested ones flattened: `reward.<name>`), each named
    `prefix + key`, and which of them are higher-is-better (the suite says it per top-level key)."""
    cells: dict[str, float] = {}
    hib: dict[str, bool] = {}
    for k, v in numeric_metrics(data.get("metrics", {})).items():
        cells[prefix + k] = v
        top = k.split(".")[0]
        if top in data.get("higher_is_better", {}):
            hib[prefix + k] = bool(data["higher_is_better"][top])
    return cells, hib


def run_cells(run_dir: Path, suite: str | None = None) -> tuple[dict[str, float], dict[str, bool]]:
    """A run's cells: the metrics of its suites (of `suite` only, if given; named `<suite>:<key>`
    when there are several) and, once it has finished, `FLOPs used` and `wall time (s)`."""
    path = Path(run_dir)
    evals = sorted((path / "eval").glob("*.json")) if (path / "eval").exists() else []
    if suite:
        evals = [e for e in evals if e.stem == suite]
    cells: dict[str, float] = {}
    hib: dict[str, bool] = {}
    for e in evals:
        c, h = suite_cells(json.loads(e.read_text()), "" if len(evals) == 1 else f"{e.stem}:")
        cells |= c
        hib |= h
    if (path / "result.json").exists():
        result = json.loads((path / "result.json").read_text())
        cells |= dict(zip(RESOURCES, (result["compute"]["used_flops"], result["wall_time_s"])))
    return cells, hib


def grid_table(rows: Sequence[tuple[str, Sequence[dict[str, float]]]], columns: Sequence[tuple[str, str]],
               higher_is_better: dict[str, bool]) -> Table:
    """A table of chosen columns: each row is a label and one cell dict per seed (a teacher row has
    one); `columns` are (cell key, column title) pairs; `higher_is_better` is keyed by cell key."""
    table = Table([title for _, title in columns],
                  higher_is_better={title: higher_is_better[key] for key, title in columns if key in higher_is_better})
    for label, seeds in rows:
        cells = {title: [s.get(key) for s in seeds] for key, title in columns}
        table.add(label, {title: values if any(v is not None for v in values) else None
                          for title, values in cells.items()})
    return table


def compare_runs(run_dirs: Sequence[Path], suite: str | None = None, metrics: Sequence[str] | None = None) -> Table:
    """Group runs by (method, base, config without the seed); mean ± CI over seeds per metric."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    hib: dict[str, bool] = {}
    for d in run_dirs:
        run = RunDir.open(d)
        cfg = run.read_config()
        cells, run_hib = run_cells(run.path, suite)
        hib |= run_hib
        # Seeds of one configuration form a group: everything resolved but the seed, the run id
        # and the override list (provenance, which names the seed) must match.
        key_cfg = {k: v for k, v in cfg.items() if k not in ("run", "overrides")}
        key_cfg["run"] = {k: v for k, v in cfg.get("run", {}).items() if k not in ("seed", "run_id")}
        label = f"{cfg['run']['method']} / {cfg['run']['base']}"
        if cfg.get("base", {}).get("init") == "random" and not cfg["run"]["base"].startswith("tiny-"):
            label += "[random-init]"  # random weights (base.init=random): never read as the real model
        sig = json.dumps([label, key_cfg], sort_keys=True, default=str)
        groups[sig].append({"label": label, "cells": cells, "seed": cfg["run"]["seed"]})
    if not groups:
        raise UserError("no runs to compare: pass run folders, e.g. `rtdmd-bench compare runs/*`")
    all_cols: list[str] = []
    for members in groups.values():
        for m in members:
            all_cols += [c for c in m["cells"] if c not in all_cols]
    cols = [c for c in all_cols if metrics is None or c in metrics or c in RESOURCES]
    table = Table(cols, higher_is_better={c: hib[c] for c in cols if c in hib})
    labels_seen: dict[str, int] = defaultdict(int)
    for members in groups.values():
        label = members[0]["label"]
        labels_seen[label] += 1
        if labels_seen[label] > 1:
            label = f"{label} (config {labels_seen[label]})"
        seeds = sorted(m["seed"] for m in members)
        table.add(f"{label} [seeds {','.join(map(str, seeds))}]",
                  {c: [m["cells"][c] for m in members if c in m["cells"]] for c in cols})
    return table
