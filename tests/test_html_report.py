"""`rtdmd-bench report`: the HTML tables hold the CSV's numbers, the Pareto front, escaping, images
that decode, run folders with training curves, and (slow) the page in headless Chromium."""

import base64
import csv
import html
import importlib.util
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from rtdmd_bench.errors import UserError
from rtdmd_bench.html_report import add_figures, choose_axes, md_escape, render_html, render_markdown, write_report
from rtdmd_bench.report_figures import pareto_front
from rtdmd_bench.report_pages import Cell, Figure, Page, Row, SideTable, collect_pages
from rtdmd_bench.runs import RunDir, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {"toy2d": ROOT / "results" / "toy2d", "digits": ROOT / "results" / "digits"}


class Dom(HTMLParser):
    """Tables as lists of rows of cell texts, image sources, and every tag seen."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.images, self.tags, self._cell = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join(self._cell.split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _csv_expected(path):
    """Per row: label and, per column, (mean, ci, n) parsed from the CSV by the test itself."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    names = [h[: -len("_mean")] for h in lines[0][1::3]]
    out = []
    for line in lines[1:]:
        cells = []
        for i in range(len(names)):
            mean, ci, n = line[1 + 3 * i: 4 + 3 * i]
            cells.append(None if mean in ("", "–") else (float(mean), float(ci), int(n)))
        out.append((line[0], cells))
    return names, out


def _md_cells(path):
    lines = path.read_text().splitlines()[2:]
    lines = lines[:lines.index("")] if "" in lines else lines  # the table; its legend and paired blocks follow
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("bench", ["toy2d", "digits"])
def test_results_table_holds_the_csv_numbers(bench):
    [page] = collect_pages([RESULTS[bench]], find_runs=False)
    table = Dom(render_html(page)).tables[0]  # the paired tables follow it
    names, expected = _csv_expected(RESULTS[bench] / "table.csv")
    assert [h.rstrip(" ↑↓") for h in table[0][1:]] == names
    assert [r[0] for r in table[1:]] == [label for label, _ in expected]
    for row, (label, cells) in zip(table[1:], expected):
        for text, want in zip(row[1:], cells):
            if want is None:
                assert text == "–", (label, text)
                continue
            mean, ci, n = want
            parts = text.split(" ± ")
            assert len(parts) == (2 if n >= 2 else 1), (label, text)
            # the printed digits round the CSV's number: within half a unit of the last printed digit
            assert float(parts[0]) == pytest.approx(mean, rel=5e-3, abs=5e-4), (label, text, mean)
            if n >= 2:
                assert float(parts[1]) == pytest.approx(ci, rel=5e-3, abs=5e-4), (label, text, ci)
    # the committed Markdown table (report.Table from the per-seed values) prints the same cells, but for
    # a last digit: the CSV keeps 6 significant digits, so 18.20650.. is 18.2065 there and prints 18.206
    md = _md_cells(RESULTS[bench] / "table.md")
    assert [r[0] for r in md] == [r[0] for r in table[1:]]
    for ours, theirs in zip((c for r in table[1:] for c in r[1:]), (c for r in md for c in r[1:])):
        assert ours == theirs or _last_digit_apart(ours, theirs), (ours, theirs)


def _paired_expected(path):
    """paired.csv read by the test: per reference (in file order) its column names and, per row,
    the label and per column (mean, ci, n) or None."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    names = [h[: -len("_diff_mean")] for h in lines[0][2::3]]
    blocks = {}
    for line in lines[1:]:
        cells = [None if line[2 + 3 * i] == "" else (float(line[2 + 3 * i]), float(line[3 + 3 * i]), int(line[4 + 3 * i]))
                 for i in range(len(names))]
        blocks.setdefault(line[0], []).append((line[1], cells))
    return names, blocks


@pytest.mark.parametrize("bench", ["toy2d", "digits"])
def test_paired_tables_hold_the_paired_csv_numbers(bench):
    [page] = collect_pages([RESULTS[bench]], find_runs=False)
    text = render_html(page)
    tables = Dom(text).tables[1:]
    names, blocks = _paired_expected(RESULTS[bench] / "paired.csv")
    assert len(tables) == len(blocks) == 2  # the many-step teacher, then dmd2
    md_blocks = (RESULTS[bench] / "paired.md").read_text().split("## Paired differences to ")[1:]
    md = render_markdown(page, [])
    stars = 0
    for table, (ref, rows), md_block in zip(tables, blocks.items(), md_blocks):
        assert f"<h2>Paired differences to {html.escape(ref)}</h2>" in text
        assert f"\n## Paired differences to {md_escape(ref)}\n" in md
        assert table[0][1:] == [f"Δ {n}" for n in names]
        assert [r[0] for r in table[1:]] == [label for label, _ in rows]
        for row, (label, cells) in zip(table[1:], rows):
            for cell, want in zip(row[1:], cells):
                if want is None:
                    assert cell == "–", (ref, label, cell)
                    continue
                mean, ci, n = want
                starred = cell.endswith(" *")
                # the CI excludes 0 exactly when |mean| > half-width (one evaluation: no CI, no mark)
                assert starred == (n >= 2 and abs(mean) > ci), (ref, label, cell, mean, ci)
                stars += starred
                parts = cell.removesuffix(" *").split(" ± ")
                assert len(parts) == (2 if n >= 2 else 1), (ref, label, cell)
                assert float(parts[0]) == pytest.approx(mean, rel=5e-3, abs=5e-4), (ref, label, cell, mean)
                if n >= 2:
                    assert float(parts[1]) == pytest.approx(ci, rel=5e-3, abs=5e-4), (ref, label, cell, ci)
        # the legend is bench_tables' own: the Markdown twin prints paired.md's sentence as it stands
        legend = md_block.strip().splitlines()[-1]
        assert legend.startswith(f"Paired differences to **{ref}** (") and "\n" + legend + "\n" in md
    assert stars > 0  # some difference is resolved: the marks were checked both ways


def test_results_folder_without_paired_csv_renders_as_before(tmp_path):
    folder = tmp_path / "toy2d"
    folder.mkdir()
    for name in ("table.csv", "table.md", "metadata.json"):
        (folder / name).write_bytes((RESULTS["toy2d"] / name).read_bytes())
    [page] = collect_pages([folder], find_runs=False)
    assert page.tables == []
    text, md = render_html(page), render_markdown(page, [])
    assert len(Dom(text).tables) == 1 and "Paired" not in text and "Paired" not in md
    with open(folder / "table.csv", newline="") as f:
        assert [r[0] for r in Dom(text).tables[0][1:]] == [line[0] for line in list(csv.reader(f))[1:]]


def test_bad_paired_csv_is_a_user_error(tmp_path):
    folder = tmp_path / "toy2d"
    folder.mkdir()
    (folder / "table.csv").write_bytes((RESULTS["toy2d"] / "table.csv").read_bytes())
    (folder / "paired.csv").write_text("row,a_mean,a_ci95,a_n\nx,1,0,1\n")
    with pytest.raises(UserError, match="not a paired table"):
        collect_pages([folder], find_runs=False)
    (folder / "paired.csv").write_text("reference,row,a_diff_mean,a_diff_ci95,a_n\nnobody,dmd2,1,0.5,5\n")
    with pytest.raises(UserError, match="'nobody'.* not rows of table.csv"):
        collect_pages([folder], find_runs=False)


def _last_digit_apart(a, b):
    """Two printed cells whose numbers differ by at most one unit of the last printed digit."""
    pa, pb = a.split(" ± "), b.split(" ± ")
    if len(pa) != len(pb):
        return False
    for x, y in zip(pa, pb):
        decimals = len(x.split(".")[1]) if "." in x and "e" not in x else 0
        if "e" in x or abs(float(x) - float(y)) > 1.01 * 10 ** -decimals:
            return x == y
    return True


def test_pareto_front_by_hand():
    # x lower is better (a distance), y higher is better (a reward)
    pts = [(1.0, 5.0), (2.0, 6.0), (3.0, 4.0), (0.5, 1.0), (2.0, 6.0), (4.0, 7.0)]
    # (3, 4) is dominated by (2, 6); every other point is best at something; the twin (2, 6)s are both kept
    assert pareto_front(pts, x_higher=False, y_higher=True) == [3, 0, 1, 4, 5]
    # both higher-is-better: (2, 3) and (3, 1) are the front, (2, 2) is beaten by (2, 3), (1, 1) by all
    assert pareto_front([(1.0, 1.0), (2.0, 2.0), (3.0, 1.0), (2.0, 3.0)], True, True) == [3, 2]
    assert pareto_front([(1.0, 1.0)], False, False) == [0]


def test_axes_chosen_from_the_bench_columns():
    toy, digits = collect_pages([RESULTS["toy2d"], RESULTS["digits"]], find_runs=False)
    x, y, points = choose_axes(toy)
    assert (x.key, y.key) == ("kl_teacher", "mean_reward") and len(points) == 10
    rtdmd = next(p for p in points if p.label == "rtdmd")
    with open(RESULTS["toy2d"] / "table.csv", newline="") as f:  # table.csv's means, read by the csv module
        want = next(r for r in csv.DictReader(f) if r["row"] == "rtdmd")
    assert (rtdmd.x, rtdmd.y, rtdmd.method) == (float(want["KL to teacher_mean"]), float(want["mean reward_mean"]), "rtdmd")
    assert next(p for p in points if p.label == "dmd2 +step-cond").method == "dmd2"  # metadata.json's rows
    x, y, points = choose_axes(digits)
    assert (x.key, y.key) == ("fid", "reward.digit-ink") and len(points) == 9


HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)> | *b* _i_'


def test_hostile_text_is_escaped_in_html_and_markdown():
    png = io.BytesIO()
    Image.new("RGB", (3, 2), (255, 0, 0)).save(png, format="PNG")
    page = Page("p", HOSTILE, [(HOSTILE, HOSTILE)], [("m", HOSTILE)],
                [Row(HOSTILE, "dmd2", {"m": Cell(HOSTILE, 1.0, emphasis="bold")})], [HOSTILE],
                [Figure(HOSTILE, HOSTILE, png.getvalue())])
    page.tables = [SideTable(HOSTILE, [("m", HOSTILE)], [Row(HOSTILE, "dmd2", {"m": Cell(HOSTILE, 1.0)})],
                             [(HOSTILE, ""), (HOSTILE, "strong"), (HOSTILE, "code")])]
    text = render_html(page)
    dom = Dom(text)
    assert "script" not in dom.tags and dom.tags.count("img") == 1  # only the figure's image is markup
    assert "<script>" not in text and html.escape(HOSTILE) in text
    assert dom.tables[0][1] == [HOSTILE, HOSTILE]  # the browser shows the text as written
    assert dom.tables[1][0] == ["row", HOSTILE] and dom.tables[1][1] == [HOSTILE, HOSTILE]
    assert dom.tags.count("strong") == 2 and dom.tags.count("code") == 1  # the bold cell and the legend's pieces
    md = render_markdown(page, ["p-figures/00.png"])
    assert "<script>" not in md and "<img" not in md
    assert md_escape(HOSTILE) == ('&lt;script&gt;alert("x")&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt; '
                                  r"\| \*b\* \_i\_")
    row = next(line for line in md.splitlines() if line.startswith("| &lt;script"))
    assert row.count(" | ") == 1  # two cells: the escaped pipe does not split the row


def test_written_pages_embed_images_that_decode(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    pages = write_report(["results/toy2d", "results/digits", "rtdmd-sd3m-table1"], tmp_path, find_runs=False)
    assert [p.name for p in pages] == ["toy2d.html", "digits.html", "rtdmd-sd3m-table1.html"]
    toy = Dom(pages[0].read_text())
    decoded = [base64.b64decode(src.split(",", 1)[1], validate=True) for src in toy.images]
    assert all(src.startswith("data:image/png;base64,") for src in toy.images) and len(decoded) == 3
    sizes = [Image.open(io.BytesIO(b)).size for b in decoded]
    assert sizes[0] == (750, 500)  # the scatter, 7.5 x 5 in at 100 dpi
    # the committed pictures are embedded byte for byte: the curves and the samples
    assert decoded[1] == (RESULTS["toy2d"] / "kl_vs_flops.png").read_bytes()
    assert decoded[2] == (RESULTS["toy2d"] / "samples_over_target.png").read_bytes()
    md = (tmp_path / "toy2d.md").read_text()
    assert "](toy2d-figures/00.png)" in md and Image.open(tmp_path / "toy2d-figures" / "00.png").size == (750, 500)
    ref = Dom(pages[2].read_text())
    assert ref.images == [] and [r[0] for r in ref.tables[0][1:]] == [
        r["label"] for r in json.loads((ROOT / "results/paper/rtdmd-sd3m-table1.json").read_text())["rows"]]
    assert "external" not in pages[0].read_text() and "<script" not in pages[0].read_text()


def _run(root, name, method, seed, kl_teacher, reward, curve):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.write_config({"run": {"method": method, "base": "toy2d", "seed": seed, "run_id": name},
                      "overrides": [f"run.seed={seed}"]})
    atomic_write_json(run.path / "eval" / "toy-tilt.json",
                      {"metrics": {"kl_teacher": kl_teacher, "mean_reward": reward},
                       "higher_is_better": {"kl_teacher": False, "mean_reward": True}})
    atomic_write_json(run.path / "result.json", {"compute": {"used_flops": 1e9}, "wall_time_s": 2.0})
    for flops, kl in curve:
        run.append_metrics({"step": 1, "flops": flops, "curve": {"kl_teacher": kl, "mean_reward": -kl}})
        run.append_metrics({"step": 1, "flops": flops, "loss": 1.0})  # not a curve line
    return run.path


def test_run_folders_give_seed_points_and_curves(tmp_path):
    _run(tmp_path, "a0", "dmd2", 0, 1.0, -3.0, [(1e8, 3.0), (2e8, 2.0)])
    _run(tmp_path, "a1", "dmd2", 1, 3.0, -1.0, [(1e8, 4.0), (2e8, 1.0)])
    _run(tmp_path, "b0", "rtdmd", 0, 5.0, -0.5, [])
    _run(tmp_path, "b0.stale-1", "rtdmd", 0, 50.0, -50.0, [])  # set aside by reproduce: not a row
    atomic_write_json(tmp_path / "teacher-cps4" / "eval" / "toy-tilt.json", {
        "metrics": {"kl_teacher": 0.25, "mean_reward": -9.0}, "higher_is_better": {"kl_teacher": False},
        "sampler": {"role": "teacher", "num_steps": 4, "kind": "cps"}, "run": {"base": "toy2d"}})
    [page] = collect_pages([tmp_path])
    assert page.name == "runs-toy2d" and [r.label for r in page.rows] == [
        "teacher (4-step CPS)", "dmd2 / toy2d [seeds 0,1]", "rtdmd / toy2d [seeds 0]"]
    assert Dom(render_html(page)).tables[0][1][1:3] == ["0.250", "-9.000"]  # kl_teacher, mean_reward
    x, y, points = choose_axes(page)
    assert points[1].seeds == [(1.0, -3.0), (3.0, -1.0)] and (points[1].x, points[1].y) == (2.0, -2.0)
    add_figures(page)
    assert [f.title for f in page.figures] == ["Reward vs fidelity", "Metrics vs training FLOPs"]
    assert "2 runs' metrics.jsonl" in page.figures[1].caption  # b0 logged no curve
    for f in page.figures:
        Image.open(io.BytesIO(f.png)).verify()
    assert any("No sample grids" in n for n in page.notes)


def test_wrong_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        collect_pages([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="known tables: .*rtdmd-sd3m-table1"):
        collect_pages(["no-such-table"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a results folder"):
        collect_pages([tmp_path / "empty"])
    with pytest.raises(UserError, match="nothing to report"):
        write_report([], tmp_path / "out")


def _browser_check():
    spec = importlib.util.spec_from_file_location("report_browser_check", ROOT / "benchmarks" / "report_browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path, monkeypatch):
    check = _browser_check()
    exe = check.find_browser()
    if exe is None:
        pytest.skip("no Chromium on PATH (chromium, chromium-browser, google-chrome); Debian: apt-get install chromium")
    monkeypatch.chdir(ROOT)
    log = check.run(tmp_path, exe)
    assert sum("DOM has the results table" in line for line in log) == len(check.SOURCES)
    assert sum("2 paired tables" in line for line in log) == len(check.SOURCES)  # to the many-step teacher and to dmd2
    for name in ("toy2d", "digits", "shapes"):
        shot = Image.open(tmp_path / "screenshots" / f"{name}.png")
        assert shot.width == check.SCREENSHOT_WIDTH and len(shot.convert("RGB").getcolors(1 << 20)) > 2  # not blank


def test_cli_report_help_and_a_missing_source(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "rtdmd_bench", "report", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, env=env)
    helped = run("--help")
    assert helped.returncode == 0 and "Pareto" in helped.stdout and "--out" in helped.stdout
    missing = run("nowhere/toy2d", "--out", "rep")
    assert missing.returncode == 2 and "nowhere/toy2d: no such file or folder" in " ".join(missing.stderr.split())
    assert "Traceback" not in missing.stderr and not (tmp_path / "rep").exists()


def test_results_folder_takes_seed_values_from_its_runs_when_they_match(tmp_path, monkeypatch):
    from rtdmd_bench.report import Table

    monkeypatch.chdir(tmp_path)
    _run(tmp_path, "runs/a0", "dmd2", 0, 1.0, -3.0, [(1e8, 3.0)])
    _run(tmp_path, "runs/a1", "dmd2", 1, 3.0, -1.0, [(1e8, 4.0)])
    _run(tmp_path, "runs/b0", "gdmd", 0, 9.0, -9.0, [])
    table = Table(["KL to teacher", "mean reward"])
    table.add("dmd2", {"KL to teacher": [1.0, 3.0], "mean reward": [-3.0, -1.0]})
    table.add("gdmd", {"KL to teacher": [5.0], "mean reward": [-9.0]})  # its run was redone since: 9 != 5
    table.write(tmp_path / "results" / "toy2d", "table")
    atomic_write_json(tmp_path / "results" / "toy2d" / "metadata.json", {
        "bench": "toy2d", "suite": "toy-tilt", "rows": [{"label": "dmd2", "method": "dmd2"}, {"label": "gdmd", "method": "gdmd"}],
        "runs": {"dmd2": ["runs/a0", "runs/a1"], "gdmd": ["runs/b0"]}})
    [page] = collect_pages(["results/toy2d"])
    dmd2, gdmd = page.rows
    assert dmd2.cells["kl_teacher"].seeds == [1.0, 3.0] and dmd2.cells["mean_reward"].seeds == [-3.0, -1.0]
    assert gdmd.cells["kl_teacher"].seeds == [] and gdmd.cells["mean_reward"].seeds == [-9.0]
    assert any("do not reproduce the table's means" in n and "gdmd" in n for n in page.notes)
    assert choose_axes(page)[2][0].seeds == [(1.0, -3.0), (3.0, -1.0)]
