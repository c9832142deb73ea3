"""What a report page shows, read from its source: a results folder written by `reproduce toy`
(table.csv, metadata.json, PNGs), a published reference table (results/paper/), or run folders.

Each reader returns a `Page` of plain values (cells already as text, with the numbers the figures
need beside them); rtdmd_bench/html_report.py adds the figures and writes HTML and Markdown.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rtdmd_bench.errors import UserError


@dataclass
class Cell:
    """One table cell: its text and, for a number, the values the figures use."""

    text: str
    """As the table prints it (`6.749 ± 1.533`, `–` for no value)."""
    mean: float | None = None
    """Mean over seeds (None: no number)."""
    ci: float = 0.0
    """95% CI half-width over seeds (0 for one seed)."""
    seeds: list[float] = field(default_factory=list)
    """Per-seed values where known (run folders), in the run order of the row."""
    emphasis: str = ""
    """"bold" or "underline" as a published table prints the cell, else ""."""


@dataclass
class Row:
    label: str
    """The row's label, as in the table."""
    method: str
    """The method it belongs to (rows of one method share a Pareto front)."""
    cells: dict[str, Cell]
    """Column key -> cell."""


@dataclass
class Figure:
    title: str
    """Heading above the image."""
    caption: str
    """What the figure shows and where it comes from."""
    png: bytes
    """The PNG file's bytes (embedded as a data URI in the HTML)."""
    source: Path | None = None
    """The PNG file it was read from (the Markdown links it); None: drawn for the report."""


@dataclass
class SideTable:
    """A further table of a page, under the main one (a results folder's paired differences)."""

    title: str
    """Heading above it (`Paired differences to dmd2`)."""
    columns: list[tuple[str, str]]
    """(key, header) per column, as Page.columns."""
    rows: list[Row]
    legend: list[tuple[str, str]] = field(default_factory=list)
    """The sentence under it, as (text, style) pieces; style "", "strong" or "code"
    (bench_tables.paired_legend_parts), so HTML and Markdown each set and escape it."""


@dataclass
class Page:
    name: str
    """File stem of the page (`toy2d`, `rtdmd-sd3m-table1`, `runs-toy2d`)."""
    title: str
    """Heading of the page."""
    facts: list[tuple[str, str]]
    """(what, value) pairs shown above the table: command, budget, seeds, source, commit."""
    columns: list[tuple[str, str]]
    """(key, header) per column; the key names the metric (`kl_teacher`), the header is printed."""
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    """Sentences under the figures: metric definitions, caveats, what could not be drawn and why."""
    figures: list[Figure] = field(default_factory=list)
    runs: dict[str, list[Path]] = field(default_factory=dict)
    """Row label -> its run folders that exist here (for the training curves and sample grids)."""
    folder: Path | None = None
    """The results folder the page was read from (its PNGs are shown), if any."""
    tables: list[SideTable] = field(default_factory=list)
    """Further tables under the main one, in order (a results folder's paired.csv blocks)."""


def number_text(mean: float, ci: float, n: int, digits: int = 3) -> str:
    """A mean (± CI when n >= 2) as report.Table prints it: fixed digits, or significant digits
    for |m| >= 1e4 or 0 < |m| < 1e-3."""
    fmt = "g" if abs(mean) >= 1e4 or 0 < abs(mean) < 1e-3 else "f"
    return f"{mean:.{digits}{fmt}}" if n < 2 else f"{mean:.{digits}{fmt}} ± {ci:.{digits}{fmt}}"


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:  # "" or "–": no value
        return None
    return value if math.isfinite(value) else None


def read_table_csv(path: Path) -> tuple[list[str], list[tuple[str, dict[str, Cell]]]]:
    """A report.Table CSV (`row`, then `<column>_mean`, `_ci95`, `_n` per column) -> the column
    names and, per row, a Cell per column."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    if not lines or lines[0][:1] != ["row"] or (len(lines[0]) - 1) % 3:
        raise UserError(f"{path}: not a table written by rtdmd-bench (expected `row`, then <column>_mean, "
                        "_ci95, _n per column)")
    columns = [h.rsplit("_", 1)[0] for h in lines[0][1::3]]
    rows = []
    for line in lines[1:]:
        cells = {}
        for i, col in enumerate(columns):
            mean, ci, n = (line[1 + 3 * i: 4 + 3 * i] + ["", "", ""])[:3]
            m, h = _float(mean), _float(ci)
            cells[col] = Cell("–") if m is None else Cell(number_text(m, h or 0.0, int(_float(n) or 1)), m, h or 0.0)
        rows.append((line[0], cells))
    return columns, rows


def _row_seeds(path: Path) -> list[tuple[str, int]]:
    """(row, its largest `_n`) per row of a report.Table CSV: 1 for a single evaluation (a teacher)."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))[1:]
    return [(line[0], max([int(_float(n) or 1) for n in line[3::3]] or [1])) for line in lines]


def paired_tables(path: Path, seeds_of: dict[str, int]) -> list[SideTable]:
    """bench_tables' paired.csv (`reference`, `row`, then `<column>_diff_mean`, `_diff_ci95`, `_n` per
    column) -> a table per reference, in the file's order, its cells printed as paired.md prints them
    (`*` where the CI excludes 0) and its legend bench_tables' own; `seeds_of`: table.csv's seeds per
    row (a reference with more than one was paired seed by seed)."""
    from rtdmd_bench.bench_tables import paired_legend_parts, paired_text

    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    head = lines[0] if lines else []
    if head[:2] != ["reference", "row"] or (len(head) - 2) % 3 or not all(
            h.endswith(s) for h, s in zip(head[2:], ["_diff_mean", "_diff_ci95", "_n"] * len(head))):
        raise UserError(f"{path}: not a paired table written by rtdmd-bench (expected `reference`, `row`, then "
                        "<column>_diff_mean, _diff_ci95, _n per column)")
    titles = [h[: -len("_diff_mean")] for h in head[2::3]]
    blocks: dict[str, list[Row]] = {}
    seeds: dict[str, int] = defaultdict(int)
    for line in lines[1:]:
        cells = {}
        for i, title in enumerate(titles):
            mean, ci, n = (line[2 + 3 * i: 5 + 3 * i] + ["", "", ""])[:3]
            m, h, k = _float(mean), _float(ci), int(_float(n) or 0)
            cells[title] = Cell("–") if m is None else Cell(paired_text((m, h or 0.0, k)), m, h or 0.0)
            seeds[line[0]] = max(seeds[line[0]], k)
        blocks.setdefault(line[0], []).append(Row(line[1], line[1], cells))
    unknown = [r for r in blocks if r not in seeds_of]
    if unknown:
        raise UserError(f"{path}: reference rows {unknown} are not rows of table.csv beside it; rewrite both with "
                        "the same `reproduce` run")
    return [SideTable(f"Paired differences to {ref}", [(t, f"Δ {t}") for t in titles], rows,
                      [(text, style) for text, style in paired_legend_parts(seeds[ref], ref, seeds_of[ref] > 1)])
            for ref, rows in blocks.items()]


def _md_headers(path: Path, count: int) -> list[str] | None:
    """The column headers of a Markdown table (they carry the ↑/↓ arrows the CSV lacks), or None."""
    if not path.exists():
        return None
    head = [h.strip() for h in path.read_text(encoding="utf-8").splitlines()[0].strip().strip("|").split("|")]
    return head[1:] if len(head) == count + 1 else None


def results_page(folder: Path, find_runs: bool = True) -> Page:
    """A `reproduce` results folder: its table, metadata and PNGs; the runs its metadata names, if
    they are here (relative to the working directory), for training curves."""
    from rtdmd_bench.reproduce import BENCHES

    meta = json.loads((folder / "metadata.json").read_text()) if (folder / "metadata.json").exists() else {}
    columns, csv_rows = read_table_csv(folder / "table.csv")
    headers = _md_headers(folder / "table.md", len(columns)) or columns
    bench = BENCHES.get(meta.get("bench", folder.name))
    key_of = {title: key for key, title in bench.columns} if bench else {}
    method_of = {r["label"]: r["method"] for r in meta.get("rows", [])}
    rows = [Row(label, method_of.get(label, "teacher" if label.startswith("teacher") else label),
                {key_of.get(c, c): cell for c, cell in cells.items()}) for label, cells in csv_rows]
    facts = [(k, str(meta[k])) for k in ("command", "bench", "suite", "budget", "seeds", "git_commit", "rtdmd_bench")
             if k in meta]
    runs = {label: [Path(p) for p in paths if (Path(p) / "config.yaml").exists()]
            for label, paths in meta.get("runs", {}).items()} if find_runs else {}
    page = Page(folder.name, f"{folder.name}: {meta.get('command', 'results')}", facts,
                [(key_of.get(c, c), h) for c, h in zip(columns, headers)], rows,
                runs={k: v for k, v in runs.items() if v}, folder=folder)
    page.notes.append(f"Cells: mean ± 95% CI over seeds (Student t), from {folder / 'table.csv'}.")
    if (folder / "paired.csv").exists():
        page.tables = paired_tables(folder / "paired.csv", {label: n for label, n in _row_seeds(folder / "table.csv")})
    _seed_values(page, meta.get("suite"))
    return page


def _seed_values(page: Page, suite: str | None) -> None:
    """Per-seed values of a results page's cells from the runs its metadata names, for the rows
    whose runs are all here and reproduce the table's mean (runs redone since are left out, said in a note)."""
    from rtdmd_bench.report import run_cells

    stale = []
    for row in page.rows:
        runs = page.runs.get(row.label, [])
        per_seed = [run_cells(r, suite)[0] for r in runs]
        for key, cell in row.cells.items():
            vals = [c[key] for c in per_seed if key in c]
            if not runs or cell.mean is None or len(vals) != len(runs):
                continue
            if math.isclose(sum(vals) / len(vals), cell.mean, rel_tol=1e-4, abs_tol=1e-9):
                cell.seeds = vals
            elif row.label not in stale:
                stale.append(row.label)
    if stale:
        page.notes.append("Runs here that do not reproduce the table's means (rerun since?), their seeds not shown: "
                          + ", ".join(stale) + ".")


def reference_page(name: str | Path) -> Page:
    """A published table (results/paper/): rows as printed, with their emphasis; metric definitions,
    claims and caveats as notes."""
    from rtdmd_bench.references import load_reference

    doc = load_reference(name)
    metrics = doc["metrics"]
    setting = [("method", "method"), ("role", "role"), ("base", "base"), ("nfe", "NFE")]
    rows = []
    for r in doc["rows"]:
        cells = {k: Cell("–" if r.get(k) is None else str(r[k])) for k, _ in setting}
        for k in metrics:
            value = r["values"].get(k)
            text = r.get("printed", {}).get(k) or ("–" if value is None else f"{value:g}")
            cells[k] = Cell(text, value, emphasis=r.get("emphasis", {}).get(k, ""))
        rows.append(Row(r["label"], r.get("method_key") or r["method"], cells))
    src = doc["source"]
    where = (f"{src['repository']} {src['file']} at {src['commit']}" if src.get("repository")
             else src.get("url") or src.get("file") or "unknown")
    facts = [("level", doc["level"]), ("paper", f"{doc['paper']['title']} (arXiv {doc['paper'].get('arxiv')})"),
             ("source", where), ("section", str(src.get("section"))), ("read on", str(src.get("read_on"))),
             ("protocol", doc["protocol"]["summary"])]
    notes = [f"{m['column']}: {m['definition']} (scale: {m['scale']}; variant {m.get('variant') or 'not stated'})"
             for m in metrics.values()]
    notes += [f"Claim ({c['kind']}): {c['statement']}" for c in doc.get("claims", [])]
    notes += [f"Caveat: {c}" for c in doc.get("caveats", [])]
    if not rows:
        notes.insert(0, "This source states no figure: the table has no rows.")
    return Page(doc["id"], doc["title"], facts, setting + [(k, m["column"]) for k, m in metrics.items()], rows, notes)


def runs_pages(run_dirs: Sequence[Path], teacher_dirs: Sequence[Path] = ()) -> list[Page]:
    """Run folders, one page per base (runs of different bases never share a table): report's
    compare_runs table, seeds grouped per configuration, after a row per teacher evaluation folder
    of the same base (`reproduce`'s teacher-<sampler><steps>/)."""
    from rtdmd_bench.runs import RunDir

    by_base: dict[str, list[Path]] = defaultdict(list)
    for d in run_dirs:
        by_base[RunDir.open(d).read_config()["run"]["base"]].append(Path(d))
    teachers: dict[str, list[Row]] = defaultdict(list)
    for d in teacher_dirs:
        for base, row in teacher_rows(d):
            teachers[base].append(row)
    return [_runs_page(base, dirs, teachers.get(base, [])) for base, dirs in by_base.items()]


def teacher_rows(folder: Path) -> list[tuple[str, Row]]:
    """(base, row) per suite result in `folder`/eval of a teacher's sampler; cells keyed `key` and
    `suite:key` (the runs' columns are either)."""
    from rtdmd_bench.report import suite_cells

    out = []
    for path in sorted((folder / "eval").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        sampler = data.get("sampler", {})
        if sampler.get("role") != "teacher":
            continue
        kind = {"cps": "CPS", "euler": "Euler"}.get(sampler.get("kind"), str(sampler.get("kind")))
        cells, _ = suite_cells(data)
        row_cells = {k: Cell(number_text(v, 0.0, 1), v, 0.0, [v]) for k, v in cells.items()}
        row_cells |= {f"{path.stem}:{k}": c for k, c in row_cells.items()}
        out.append((data.get("run", {}).get("base", ""), Row(f"teacher ({sampler.get('num_steps')}-step {kind})",
                                                               "teacher", row_cells)))
    return out


def _runs_page(base: str, dirs: list[Path], teachers: list[Row]) -> Page:
    from rtdmd_bench.report import Table, compare_runs, mean_ci
    from rtdmd_bench.runs import RunDir

    table = compare_runs(dirs)
    rows = []
    for label, cells in table.rows:
        row_cells = {}
        for c in table.columns:
            vals = Table.values(cells.get(c))
            m, h = mean_ci(vals) if vals else (None, 0.0)
            row_cells[c] = Cell(table.cell_text(cells.get(c)), m, h, vals)
        rows.append(Row(label, label.split(" / ")[0], row_cells))
    rows = teachers + rows
    # Curves by configuration: one key per config without the seed (as compare_runs groups rows),
    # `method / base`, then `(config n)` for a method's n-th further configuration, as its rows read.
    runs: dict[str, list[Path]] = defaultdict(list)
    key_of: dict[str, str] = {}
    for d in dirs:
        cfg = RunDir.open(d).read_config()
        sig = json.dumps({**{k: v for k, v in cfg.items() if k not in ("run", "overrides")},
                          "run": {k: v for k, v in cfg["run"].items() if k not in ("seed", "run_id")}},
                         sort_keys=True, default=str)
        label = f"{cfg['run']['method']} / {cfg['run']['base']}"
        if sig not in key_of:
            n = sum(k.startswith(label) for k in key_of.values()) + 1
            key_of[sig] = label if n == 1 else f"{label} (config {n})"
        runs[key_of[sig]].append(d)
    page = Page(f"runs-{base}", f"{len(dirs)} runs on {base}", [("base", base), ("runs", str(len(dirs)))],
                [(c, table.header(c)) for c in table.columns], rows, runs=dict(runs))
    page.notes.append("Cells: mean ± 95% CI over seeds (Student t); seeds of one configuration form a row.")
    return page


def expand_runs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(run folders, teacher evaluation folders): `folder` itself if it is a run, else the folders
    directly inside it that are runs (`*.stale-<n>` set aside) or hold a teacher's eval/*.json."""
    if (folder / "config.yaml").exists():
        return [folder], []
    inside = sorted(p for p in folder.iterdir() if p.is_dir() and ".stale-" not in p.name)
    runs = [p for p in inside if (p / "config.yaml").exists()]
    return runs, [p for p in inside if p not in runs and any((p / "eval").glob("*.json"))] if runs else []


def collect_pages(items: Sequence[str | Path], find_runs: bool = True) -> list[Page]:
    """Each item: a results folder (holds table.csv), a reference table (id or .json path), a run
    folder or a folder of runs (all runs given are pooled, one page per base)."""
    pages: list[Page] = []
    run_dirs: list[Path] = []
    teacher_dirs: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and (path / "table.csv").exists():
            pages.append(results_page(path, find_runs))
        elif path.is_dir() and expand_runs(path)[0]:
            run_dirs += expand_runs(path)[0]
            teacher_dirs += expand_runs(path)[1]
        elif path.is_dir():
            raise UserError(f"{path}: neither a results folder (with table.csv), a run folder (with config.yaml) "
                            "nor a folder of runs; pass one of those or a reference table id")
        elif not path.exists() and (path.suffix == ".json" or len(path.parts) > 1):
            raise UserError(f"{item}: no such file or folder; pass a results folder (with table.csv), a run folder, "
                            "a folder of runs or a reference table id")
        else:
            pages.append(reference_page(item))  # an id or a .json path; a UserError names the known ids
    pages += runs_pages(run_dirs, teacher_dirs) if run_dirs else []
    seen: dict[str, int] = defaultdict(int)
    for p in pages:  # two sources with one name (two `toy2d` folders) get distinct files
        seen[p.name] += 1
        p.name = p.name if seen[p.name] == 1 else f"{p.name}-{seen[p.name]}"
    return pages


def run_curves(run: Path) -> tuple[list[float], dict[str, list[float]]]:
    """The `curve` lines of a run's metrics.jsonl: FLOPs and each metric's values (NaN where missing)."""
    from rtdmd_bench.runs import RunDir

    lines = [r for r in RunDir(run).metrics() if "curve" in r]
    keys = list(dict.fromkeys(k for r in lines for k, v in r["curve"].items() if isinstance(v, (int, float))))
    return [float(r["flops"]) for r in lines], {k: [float(r["curve"].get(k, math.nan)) for r in lines] for k in keys}


def run_seed(run: Path) -> int:
    from rtdmd_bench.runs import RunDir

    return int(RunDir(run).read_config()["run"]["seed"])

