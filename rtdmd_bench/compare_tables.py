"""`rtdmd-bench compare`'s output: per section (one base, one suite) a table of values, a table of
differences to the published rows, a table of paired differences to the baseline row, and a legend
saying which uncertainty every number carries; as terminal tables, one Markdown file, CSV and LaTeX
per table, and JSON (`sections_dict`) for other tools (the HTML report)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from rtdmd_bench.compare import Section
from rtdmd_bench.report import Table, mean_ci
from rtdmd_bench.runs import atomic_write_text

SEED_CI = "± = 95% Student-t CI over training seeds (none with one seed)"
BUDGET, USED = "FLOP budget", "FLOPs used"
FEW_PROMPTS = 20
"""Below this many prompts the legend warns that the prompt bootstrap is coarse."""


def strip_arrows(text: str) -> str:
    return text.replace("↑", "").replace("↓", "").strip()


def column_title(s: Section, metric: str, reference: dict[str, Any] | None) -> str:
    """The metric key, and the published column it is put beside (`hpsv21 = HPSv2`)."""
    key = s.reference_columns.get(metric)
    return metric if key is None or reference is None else f"{metric} = {strip_arrows(reference['metrics'][key]['column'])}"


def values_table(s: Section, reference: dict[str, Any] | None) -> Table:
    """Measured rows (mean ± seed t-CI) and published rows (as printed), with budgets."""
    titles = {m: column_title(s, m, reference) for m in s.columns}
    table = Table([titles[m] + " (± seed t-CI95)" for m in s.columns] + [BUDGET, USED],
                  higher_is_better={titles[m] + " (± seed t-CI95)": h for m, h in s.higher_is_better.items()
                                    if m in titles})
    for g in s.groups:
        cells: dict[str, Any] = {titles[m] + " (± seed t-CI95)": s.values[g.label].get(m) for m in s.columns}
        cells[BUDGET] = [r.budget for r in g.runs if r.budget] or None
        cells[USED] = [r.used for r in g.runs if r.used] or None
        table.add(g.label, cells)
    for row in s.reference_rows:
        cells = {titles[m] + " (± seed t-CI95)": row["values"].get(key) for m, key in s.reference_columns.items()}
        table.add(f"published: {row['label']} ({row['base'] or 'base unknown'}, {row['nfe'] or '?'} NFE)", cells)
    return table


def published_table(s: Section, reference: dict[str, Any]) -> Table | None:
    """Measured mean - the published value of the same method and base (a point difference)."""
    if not s.published_match:
        return None
    metrics = list(s.reference_columns)
    table = Table([column_title(s, m, reference) + " Δ (point)" for m in metrics])
    rows = {r["label"]: r for r in s.reference_rows}
    for label, ref_label in s.published_match.items():
        cells = {}
        for m in metrics:
            mean, _ = mean_ci(s.values[label].get(m, []))
            pub = rows[ref_label]["values"].get(s.reference_columns[m])
            cells[column_title(s, m, reference) + " Δ (point)"] = None if pub is None or mean != mean else f"{mean - pub:+.4f}"
        table.add(f"{label} - published {ref_label}", cells)
    return table


def paired_table(s: Section) -> Table | None:
    """Row - baseline per metric: mean over prompts [paired-bootstrap 95% CI], * when it excludes 0."""
    if not s.paired:
        return None
    metrics = [m for m in s.columns if any(m in d for d in s.paired.values())]
    table = Table([f"{m} Δ [bootstrap CI95]" for m in metrics])
    for label, diffs in s.paired.items():
        table.add(label, {f"{m} Δ [bootstrap CI95]": diffs[m].text() if m in diffs else None for m in metrics})
    return table


def legend(s: Section, reference: dict[str, Any] | None) -> list[str]:
    """What each kind of number means, the definitions, and what does not match."""
    lines = [SEED_CI]
    if s.paired:
        d = next(iter(next(iter(s.paired.values())).values()))
        lines.append(f"Δ [lo, hi] = mean over {d.prompts} prompts of the per-prompt difference to {s.baseline} "
                     f"(each prompt's score averaged over its images and the row's seeds); [lo, hi] = "
                     f"{100 * d.level:g}% percentile CI of a paired bootstrap over prompts, {d.resamples} resamples, "
                     f"seed {d.seed}; * = the CI excludes 0. It measures prompt-sampling uncertainty of these "
                     "trained models, not training-seed variation")
        if d.prompts < FEW_PROMPTS:
            lines.append(f"caution: only {d.prompts} prompts; a percentile bootstrap over so few is coarse and its "
                         "intervals tend to be too narrow")
    if reference is not None and s.reference_rows:
        lines.append(f"published = as printed in {reference['id']} (no uncertainty stated); Δ (point) = measured "
                     "mean - published value, no CI")
        unknown_res = [r["label"] for r in s.reference_rows if r["resolution"] is None]
        if unknown_res:
            lines.append("resolution not stated by the source for: " + ", ".join(unknown_res))
    lines.append("definitions: " + "; ".join(f"{m} = {d}" for m, d in s.definitions.items()))
    lines += [f"UNMATCHED (shown because of --allow-unmatched): {p}" for p in s.problems]
    lines += [f"note: {n}" for n in s.notes]
    return lines


def section_tables(s: Section, reference: dict[str, Any] | None) -> list[tuple[str, str, Table]]:
    """(kind, title, table) of a section: values, vs-published (with a reference), paired (with
    per-prompt scores); the title says which uncertainty the table's numbers carry."""
    out = [("values", "values: mean ± seed t-CI95" + ("; published as printed" if s.reference_rows else ""),
            values_table(s, reference))]
    pub = published_table(s, reference) if reference is not None else None
    if pub is not None:
        out.append(("published", "measured - published: point differences, no CI", pub))
    pair = paired_table(s)
    if pair is not None:
        out.append(("paired", f"paired Δ vs {s.baseline}: mean [95% paired prompt-bootstrap CI]", pair))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def markdown(sections: Sequence[Section], reference: dict[str, Any] | None) -> str:
    parts = []
    for s in sections:
        parts.append(f"## {s.base} / {s.suite}\n")
        for _, title, table in section_tables(s, reference):
            parts.append(f"{title}\n\n{table.markdown()}")
        parts.append("\n".join(f"- {line}" for line in legend(s, reference)) + "\n")
    return "\n".join(parts)


def sections_dict(sections: Sequence[Section], reference: dict[str, Any] | None) -> dict[str, Any]:
    """Everything shown, as JSON data (no formatting)."""
    return {"reference": None if reference is None else reference["id"], "sections": [{
        "base": s.base, "suite": s.suite, "rows": [g.label for g in s.groups], "columns": s.columns,
        "definitions": s.definitions, "values_per_seed": s.values, "settings": s.settings,
        "budgets": {g.label: [r.budget for r in g.runs] for g in s.groups},
        "problems": s.problems, "notes": s.notes, "reference_columns": s.reference_columns,
        "reference_rows": [r["label"] for r in s.reference_rows], "published_match": s.published_match,
        "baseline": s.baseline,
        "paired": {label: {m: d.to_dict() for m, d in diffs.items()} for label, diffs in s.paired.items()},
        "legend": legend(s, reference)} for s in sections]}


def write(sections: Sequence[Section], reference: dict[str, Any] | None, folder: Path, stem: str) -> list[Path]:
    """<stem>.md (every section), <stem>.json (sections_dict), and per table <stem>-<base>-<suite>-<kind>.csv/.tex."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.md", folder / f"{stem}.json"]
    atomic_write_text(paths[0], markdown(sections, reference))
    atomic_write_text(paths[1], json.dumps(sections_dict(sections, reference), indent=1, default=str) + "\n")
    for s in sections:
        for kind, _, table in section_tables(s, reference):
            for ext, text in (("csv", table.csv()), ("tex", table.latex())):
                p = folder / f"{stem}-{slug(s.base)}-{slug(s.suite)}-{kind}.{ext}"
                atomic_write_text(p, text)
                paths.append(p)
    return paths
