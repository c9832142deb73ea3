"""`rtdmd-bench report`: one self-contained HTML page (and a Markdown twin) per table.

A page holds the table (and a results folder's paired-difference tables under it), a
reward-vs-fidelity scatter with each method's Pareto front, metric-vs-FLOPs curves from the runs' training curves, and sample grids. Every image is a base64 data URI and
the style sheet is inline, so the page opens from disk with no server and no JavaScript; every text
is escaped (html.escape), so a run label cannot inject markup. The Markdown twin links the PNGs
(the drawn ones are written beside it, the read ones are linked where they are).

Sources are read by rtdmd_bench/report_pages.py, figures drawn by rtdmd_bench/report_figures.py.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

from rtdmd_bench.errors import UserError
from rtdmd_bench.report_figures import FIDELITY_AXES, REWARD_AXES, Axis, Curve, Point, curves_png, scatter_png
from rtdmd_bench.report_pages import Cell, Figure, Page, Row, collect_pages, run_curves, run_seed

CURVE_KEYS = ("kl_target", "kl_teacher", "mean_reward", "fid", "fid_t", "accuracy")
"""Training-curve metrics drawn (the first three a run logged), in this order."""
MAX_SAMPLE_FIGURES = 12
"""At most this many sample grids of runs on a page (the first run of each row first)."""


def _metric_key(column: str) -> str:
    """`suite:key` (runs scored by several suites) -> `key`."""
    return column.split(":")[-1]


def choose_axes(page: Page) -> tuple[Axis, Axis, list[Point]] | None:
    """The first (fidelity, reward) pair of candidates, in order of preference, that some row of the
    page has both of, with the scatter's points; None if there is none."""
    keys = {_metric_key(c): c for c, _ in page.columns}
    for x in (a for a in FIDELITY_AXES if a.key in keys):
        for y in (a for a in REWARD_AXES if a.key in keys):
            points = scatter_points(page, keys[x.key], keys[y.key])
            if points:
                return x, y, points
    return None


def scatter_points(page: Page, x_col: str, y_col: str) -> list[Point]:
    """A point per row that has both numbers; per-seed points where both columns have every seed."""
    points = []
    for r in page.rows:
        cx, cy = r.cells.get(x_col), r.cells.get(y_col)
        if cx is None or cy is None or cx.mean is None or cy.mean is None:
            continue
        seeds = list(zip(cx.seeds, cy.seeds)) if len(cx.seeds) == len(cy.seeds) else []
        points.append(Point(r.label, r.method, cx.mean, cy.mean, cx.ci, cy.ci, seeds))
    return points


def _scatter(page: Page) -> None:
    axes = choose_axes(page)
    if axes is None:
        page.notes.append("No reward-vs-fidelity scatter: no row has a number in a column of both kinds (rewards: "
                          + ", ".join(a.key for a in REWARD_AXES) + "; fidelity: "
                          + ", ".join(a.key for a in FIDELITY_AXES) + ").")
        return
    x, y, points = axes
    caption = (f"{y.title} against {x.title}, a marker per row (bars: 95% CI over seeds where there are several; "
               "small dots: single seeds where known). Solid lines: each method's Pareto front over its points; "
               "dashed grey: the front of all rows. " + ("Up" if y.higher_is_better else "Down") + " and "
               + ("right" if x.higher_is_better else "left") + " is better.")
    methods = [r.method for r in page.rows]
    page.figures.append(Figure("Reward vs fidelity", caption, scatter_png(points, x, y, page.title, methods)))


def _curves(page: Page) -> None:
    curves = []
    method_of = {r.label: r.method for r in page.rows}  # a results page's runs are keyed by row label
    for label, runs in page.runs.items():
        for run in runs:
            flops, values = run_curves(run)
            if flops:
                curves.append(Curve(label, method_of.get(label, label.split(" / ")[0]), run_seed(run), flops, values))
    logged = [k for k in CURVE_KEYS if any(k in c.values for c in curves)][:3]
    if logged:
        titles = {_metric_key(c): h for c, h in page.columns}
        png = curves_png(curves, [(k, titles.get(k, k)) for k in logged], page.title, [r.method for r in page.rows])
        page.figures.append(Figure("Metrics vs training FLOPs", f"From the `curve` lines of {len(curves)} runs' "
                                   "metrics.jsonl; one line per run, a colour per method (as in the scatter), a line style per row of a "
                                   "method.", png))
        return
    committed = sorted(page.folder.glob("*_vs_flops.png")) if page.folder else []
    for path in committed:
        page.figures.append(Figure("Metrics vs training FLOPs", f"{path} as `reproduce` drew it from the training "
                                   "curves (the runs are not here to redraw it).", path.read_bytes(), path))
    if not committed and (page.runs or page.folder):
        page.notes.append("No metric-vs-FLOPs curves: " + ("no run logged `curve` lines (train.curve_points = 0)."
                                                            if page.runs else "no run folders of this table are here."))


def _samples(page: Page) -> None:
    if page.folder:
        for path in sorted(p for p in page.folder.glob("*.png") if not p.name.endswith("_vs_flops.png")):
            page.figures.append(Figure(f"Samples: {path.stem}", f"{path}, as `reproduce` drew it.", path.read_bytes(), path))
        return
    shown = 0
    for label, runs in page.runs.items():
        for run in runs:
            found = sorted(run.glob("sampled/*/grid.png")) + sorted(run.glob("sampled/*/scatter.png"))
            if found and shown < MAX_SAMPLE_FIGURES:
                page.figures.append(Figure(f"Samples: {label}", f"{found[-1]} (`rtdmd-bench sample`).",
                                           found[-1].read_bytes(), found[-1]))
                shown += 1
    if page.runs and not shown:
        page.notes.append("No sample grids: no run has `sampled/*/grid.png` (make one with `rtdmd-bench sample RUN`).")


def add_figures(page: Page) -> Page:
    _scatter(page)
    _curves(page)
    _samples(page)
    return page


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.82em}.scroll{overflow-x:auto}th,td{border:1px solid #ccc;padding:4px 8px}
td{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}th[scope=row],td.t{text-align:left}thead th{background:#f3f3f3}
figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em;font-size:0.9em}dt{font-weight:bold}
li{font-size:0.9em;margin:2px 0}p.legend{font-size:0.85em;color:#555;max-width:70em}"""


def _cell_html(text: str, emphasis: str) -> str:
    e = html.escape(text)
    return f"<strong>{e}</strong>" if emphasis == "bold" else f"<u>{e}</u>" if emphasis == "underline" else e


def _td(cell: Cell | None) -> str:
    """A table cell; numbers align right (the style sheet), text (a method's name) left."""
    if cell is None:
        return "<td>–</td>"
    text = cell.mean is None and cell.text != "–"
    return f"<td{' class=t' if text else ''}>{_cell_html(cell.text, cell.emphasis)}</td>"


_TAG = {"strong": "strong", "code": "code"}
"""HTML element of a legend piece's style."""


def _table_html(table_id: str, columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> str:
    esc = html.escape
    out = [f'<div class="scroll"><table id="{esc(table_id)}"><thead><tr><th scope="col">row</th>'
           + "".join(f'<th scope="col">{esc(h)}</th>' for _, h in columns) + "</tr></thead><tbody>"]
    for r in rows:
        out.append(f'<tr><th scope="row">{esc(r.label)}</th>' + "".join(_td(r.cells.get(k)) for k, _ in columns) + "</tr>")
    return "\n".join(out + ["</tbody></table></div>"])


def render_html(page: Page) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(page.title)}</title><style>{STYLE}</style></head><body>", f"<h1>{esc(page.title)}</h1>"]
    out.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in page.facts) + "</dl>")
    out.append("<h2>Table</h2>" + _table_html("results", page.columns, page.rows))
    for i, t in enumerate(page.tables, 1):
        legend = "".join(f"<{_TAG[style]}>{esc(text)}</{_TAG[style]}>" if style else esc(text)
                         for text, style in t.legend)
        out.append(f"<h2>{esc(t.title)}</h2>" + _table_html(f"paired-{i}", t.columns, t.rows)
                   + (f'<p class="legend">{legend}</p>' if legend else ""))
    if page.figures:
        out.append("<h2>Figures</h2>")
    for f in page.figures:
        out.append(f"<figure><h3>{esc(f.title)}</h3><img src=\"{data_uri(f.png)}\" alt=\"{esc(f.title)}\">"
                   f"<figcaption>{esc(f.caption)}</figcaption></figure>")
    if page.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in page.notes) + "</ul>")
    out.append("<footer><small>Written by rtdmd-bench report.</small></footer></body></html>")
    return "\n".join(out) + "\n"


def md_escape(text: str) -> str:
    """Text for a Markdown table cell or line: HTML's special characters escaped (Markdown passes
    inline HTML through), `|` and the emphasis characters backslash-escaped, no line breaks."""
    text = html.escape(" ".join(text.split()), quote=False)
    return "".join("\\" + ch if ch in "\\|*_`[]" else ch for ch in text)


def _md_cell(text: str, emphasis: str) -> str:
    e = md_escape(text)
    return f"**{e}**" if emphasis == "bold" else f"<u>{e}</u>" if emphasis == "underline" else e


def _table_markdown(columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> list[str]:
    lines = ["| row | " + " | ".join(md_escape(h) for _, h in columns) + " |", "|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [r.cells.get(k) for k, _ in columns]
        lines.append(f"| {md_escape(r.label)} | " + " | ".join(_md_cell(c.text, c.emphasis) if c else "–"
                                                               for c in cells) + " |")
    return lines


def _md_legend_piece(text: str, style: str) -> str:
    """A legend piece in Markdown: strong as **…**; code as a code span (shown as written, so not
    escaped) only when it holds nothing to escape (no backtick, `<`, `&` or line break), else escaped text."""
    if style == "code" and text.strip() and not any(ch in text for ch in "`<>&\n"):
        return f"`{text}`"
    # md_escape trims; the pieces' own spaces between them stay
    lead, trail = " " * (text[:1].isspace()), " " * (text[-1:].isspace() and len(text.strip()) > 0)
    return lead + (f"**{md_escape(text)}**" if style == "strong" else md_escape(text)) + trail


def render_markdown(page: Page, links: Sequence[str]) -> str:
    """The page as Markdown; `links[i]`: the relative path of figure i's PNG."""
    lines = [f"# {md_escape(page.title)}", ""] + [f"- **{md_escape(k)}**: {md_escape(v)}" for k, v in page.facts]
    lines += [""] + _table_markdown(page.columns, page.rows)
    for t in page.tables:
        lines += ["", f"## {md_escape(t.title)}", ""] + _table_markdown(t.columns, t.rows)
        if t.legend:
            lines += ["", "".join(_md_legend_piece(text, style) for text, style in t.legend)]
    for f, link in zip(page.figures, links):
        lines += ["", f"## {md_escape(f.title)}", "", f"![{md_escape(f.title)}]({link.replace(' ', '%20')})", "",
                  md_escape(f.caption)]
    if page.notes:
        lines += ["", "## Notes", ""] + [f"- {md_escape(n)}" for n in page.notes]
    return "\n".join(lines) + "\n"


def _figure_links(page: Page, out: Path) -> list[str]:
    """Write the drawn figures to OUT/<page>-figures/; the relative path of every figure's PNG."""
    from rtdmd_bench.files import atomic_write_bytes  # (imports torch: not before the sources are checked)

    links = []
    for i, f in enumerate(page.figures):
        path = f.source
        if path is None:
            path = out / f"{page.name}-figures" / f"{i:02d}.png"
            atomic_write_bytes(path, f.png)
        links.append(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix())
    return links


def render_index(pages: Sequence[Page]) -> str:
    items = "".join(f'<li><a href="{html.escape(p.name)}.html">{html.escape(p.title)}</a></li>' for p in pages)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>rtdmd-bench report</title>'
            f"<style>{STYLE}</style></head><body><h1>rtdmd-bench report</h1><ul>{items}</ul></body></html>\n")


def write_report(items: Sequence[str | Path], out: Path, find_runs: bool = True) -> list[Path]:
    """One page per table of `items` (results folders, reference tables, runs) under `out`:
    <name>.html (self-contained), <name>.md, and index.html; returns the HTML paths."""
    if not items:
        raise UserError("nothing to report: pass results folders, run folders or reference table ids")
    pages = [add_figures(p) for p in collect_pages(items, find_runs)]
    from rtdmd_bench.files import atomic_write_text  # (imports torch: not before the sources are checked)

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for page in pages:
        atomic_write_text(out / f"{page.name}.html", render_html(page))
        atomic_write_text(out / f"{page.name}.md", render_markdown(page, _figure_links(page, out)))
        written.append(out / f"{page.name}.html")
    atomic_write_text(out / "index.html", render_index(pages))
    return written
