"""The report in a real browser: render `rtdmd-bench report` for the committed CPU results
(results/toy2d, results/digits), load each page in headless Chromium from disk (file://, no server),
and check the DOM Chromium built: the results table with one row per row of table.csv, a paired table
per reference of paired.csv with its rows (where the folder has one), and every <img> a non-empty PNG
data URI that decodes (PIL). Saves a screenshot of each page.

Needs Chromium (Debian: `apt-get install chromium`). Writes the pages, screenshots/<page>.png and
browser_check.md (what was checked, with Chromium's version) under --out.

Run:  python benchmarks/report_browser_check.py [--out results/report]
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtdmd_bench.html_report import write_report  # noqa: E402

SOURCES = (Path("results/toy2d"), Path("results/digits"), Path("results/shapes"))
"""Relative to the repository root (the script runs there), so the pages name them as in the repository."""
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1400, 2400)
"""Browser window (px) for the screenshot: wide enough for the table, tall enough for the figures."""
SCREENSHOT_WIDTH = 800
"""The saved screenshot is scaled to this width and reduced to 256 colours, to stay small."""


def find_browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


class DomSummary(HTMLParser):
    """Tables (with their rows' header cells) and image sources of a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._row_header = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "th" and a.get("scope") == "row" and self._table:
            self._row_header = True
            self.tables[self._table].append("")
        elif tag == "img":
            self.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "th":
            self._row_header = False

    def handle_data(self, data: str) -> None:
        if self._row_header and self._table:
            self.tables[self._table][-1] += data


def browser(exe: str, *args: str) -> subprocess.CompletedProcess:
    # A profile of its own, so a check never touches (or waits on) a user's Chromium profile.
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=True)


def decode_png(uri: str) -> tuple[int, int]:
    """Size of the PNG a data URI holds; raises if it is empty or does not decode."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"not a non-empty PNG data URI: {uri[:60]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    image.load()
    return image.size


def check_page(exe: str, page: Path, expected_rows: list[str], screenshot: Path,
               expected_paired: dict[str, list[str]] | None = None) -> list[str]:
    """Load `page` in the browser; the lines of the check's log (raises AssertionError on a failure).
    `expected_paired`: paired.csv's rows per reference, in its order (tables `paired-1`, `paired-2`, ...)."""
    dom = browser(exe, "--dump-dom", page.resolve().as_uri()).stdout
    summary = DomSummary()
    summary.feed(dom)
    rows = [" ".join(r.split()) for r in summary.tables.get("results", [])]
    assert rows == expected_rows, f"{page.name}: table rows {rows} != table.csv rows {expected_rows}"
    paired = {k: [" ".join(r.split()) for r in v] for k, v in summary.tables.items() if k.startswith("paired-")}
    want = {f"paired-{i}": labels for i, labels in enumerate((expected_paired or {}).values(), 1)}
    assert paired == want, f"{page.name}: paired tables {paired} != paired.csv's {want}"
    assert summary.images, f"{page.name}: no images in the DOM"
    sizes = [decode_png(src) for src in summary.images]
    browser(exe, f"--screenshot={screenshot.resolve()}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--hide-scrollbars", page.resolve().as_uri())
    shrink(screenshot)
    return [f"- `{page.name}`: DOM has the results table with its {len(rows)} rows (as table.csv), "
            + (f"{len(paired)} paired tables (to {', '.join(expected_paired or {})}) with paired.csv's rows, " if paired else "")
            + f"{len(sizes)} images, every one a PNG data URI that decodes ({', '.join(f'{w}x{h}' for w, h in sizes)}); "
            f"screenshot `screenshots/{screenshot.name}`"]


def shrink(path: Path) -> None:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    height = round(image.height * SCREENSHOT_WIDTH / image.width)
    image.resize((SCREENSHOT_WIDTH, height), Image.Resampling.LANCZOS).quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def paired_rows(folder: Path) -> dict[str, list[str]]:
    """paired.csv's rows per reference, in its order ({} without one)."""
    if not (folder / "paired.csv").exists():
        return {}
    out: dict[str, list[str]] = {}
    with open(folder / "paired.csv", newline="", encoding="utf-8") as f:
        for line in list(csv.reader(f))[1:]:
            out.setdefault(line[0], []).append(line[1])
    return out


def csv_rows(folder: Path) -> list[str]:
    with open(folder / "table.csv", newline="", encoding="utf-8") as f:
        return [line[0] for line in list(csv.reader(f))[1:]]


def run(out: Path, exe: str) -> list[str]:
    """Render and check the pages under `out`; run from the repository root."""
    pages = write_report([str(s) for s in SOURCES], out, find_runs=False)
    (out / "screenshots").mkdir(parents=True, exist_ok=True)
    version = browser(exe, "--version").stdout.strip()
    log = ["# Report in a headless browser", "", f"`python benchmarks/report_browser_check.py`, {version}, "
           f"window {WINDOW[0]}x{WINDOW[1]}, pages loaded from disk (file://).", ""]
    for page, source in zip(pages, SOURCES):
        log += check_page(exe, page, csv_rows(source), out / "screenshots" / f"{page.stem}.png", paired_rows(source))
    (out / "browser_check.md").write_text("\n".join(log) + "\n", encoding="utf-8")
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "report")
    args = ap.parse_args()
    exe = find_browser()
    if exe is None:
        sys.exit("no Chromium found (tried " + ", ".join(BROWSERS) + "); install it: apt-get install chromium")
    out = args.out.resolve()
    os.chdir(ROOT)
    print("\n".join(run(out, exe)))


if __name__ == "__main__":
    main()
