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

from scipy import stats as sstats

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
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return m, float(sstats.t.ppf(0.5 + level / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))


@dataclass
class Table:
    """Rows of named cells; each cell is a list of per-seed values (or a string)."""

    columns: list[str]
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def add(self, label: str, cells: dict[str, Any]) -> None:
        self.rows.append((label, cells))

    def cell_text(self, value: Any, digits: int = 3) -> str:
        if value is None:
            return "–"
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            value = [value]
        m, h = mean_ci(value)
        if math.isnan(m):
            return "–"
        fmt = (lambda x: f"{x:.{digits}g}") if abs(m) >= 1e4 or (0 < abs(m) < 1e-3) else (lambda x: f"{x:.{digits}f}")
        return fmt(m) if len(value) < 2 else f"{fmt(m)} ± {fmt(h)}"

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
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row"] + [x for c in self.columns for x in (f"{c}_mean", f"{c}_ci95", f"{c}_n")])
        for label, cells in self.rows:
            row = [label]
            for c in self.columns:
                v = cells.get(c)
                if v is None or isinstance(v, str):
                    row += [v or "", "", ""]
                    continue
                vals = [v] if isinstance(v, (int, float)) else (v or [])
                m, h = mean_ci(vals)
                row += [f"{m:.6g}", f"{h:.6g}", len(vals)]
            w.writerow(row)
        return buf.getvalue()

    def latex(self) -> str:
        cols = "l" + "r" * len(self.columns)
        esc = lambda s: s.replace("_", r"\_").replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")  # noqa: E731
        lines = [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                 " & ".join(["row"] + [esc(self.header(c)) for c in self.columns]) + r" \\", r"\midrule"]
        for label, cells in self.rows:
            lines.append(" & ".join([esc(label)] + [esc(self.cell_text(cells.get(c))) for c in self.columns]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"

    def rich(self, title: str = "") -> Any:
        from rich.table import Table as RichTable

        t = RichTable(title=title or None)
        t.add_column("row", style="bold")
        for c in self.columns:
            t.add_column(self.header(c), justify="right")
        for label, cells in self.rows:
            t.add_row(label, *[self.cell_text(cells.get(c)) for c in self.columns])
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


def compare_runs(run_dirs: Sequence[Path], suite: str | None = None, metrics: Sequence[str] | None = None) -> Table:
    """Group runs by (method, base, config without the seed); mean ± CI over seeds per metric."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    hib: dict[str, bool] = {}
    for d in run_dirs:
        run = RunDir.open(d)
        cfg = run.read_config()
        result_path = run.path / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        evals = sorted((run.path / "eval").glob("*.json")) if (run.path / "eval").exists() else []
        if suite:
            evals = [e for e in evals if e.stem == suite]
        cells: dict[str, float] = {}
        for e in evals:
            data = json.loads(e.read_text())
            for k, v in numeric_metrics(data.get("metrics", {})).items():
                name = k if len(evals) == 1 else f"{e.stem}:{k}"
                cells[name] = v
                top = k.split(".")[0]
                if top in data.get("higher_is_better", {}):
                    hib[name] = bool(data["higher_is_better"][top])
        if result:
            cells["FLOPs used"] = result["compute"]["used_flops"]
            cells["wall time (s)"] = result["wall_time_s"]
        # Seeds of one configuration form a group: everything resolved but the seed, the run id
        # and the override list (provenance, which names the seed) must match.
        key_cfg = {k: v for k, v in cfg.items() if k not in ("run", "overrides")}
        key_cfg["run"] = {k: v for k, v in cfg.get("run", {}).items() if k not in ("seed", "run_id")}
        label = f"{cfg['run']['method']} / {cfg['run']['base']}"
        sig = json.dumps([label, key_cfg], sort_keys=True, default=str)
        groups[sig].append({"label": label, "cells": cells, "seed": cfg["run"]["seed"]})
    if not groups:
        raise UserError("no runs to compare: pass run folders, e.g. `rtdmd-bench compare runs/*`")
    all_cols: list[str] = []
    for members in groups.values():
        for m in members:
            all_cols += [c for c in m["cells"] if c not in all_cols]
    cols = [c for c in all_cols if metrics is None or c in metrics or c in ("FLOPs used", "wall time (s)")]
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
