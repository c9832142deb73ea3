"""Write or check results/paper/*.json, the published reference tables, from their sources.

    python scripts/paper_tables.py build --git-dir DIR [--commit C] [--seeds DIR] [--read-on YYYY-MM-DD]
    python scripts/paper_tables.py check --git-dir DIR [--commit C] [--seeds DIR]

DIR is a git mirror of Harahan/RTDMD (the fetch tool's /work/.mirror/Harahan+RTDMD/repo, or a clone);
--commit defaults to the commit the committed tables were read at. Every number comes from the
source: the README's Markdown tables and prose (RTDMD), the abstract paragraph of the copies in
../shared/seeds/ (GNDM, GDMD), and RTDMD's YAML configs for settings (scripts/paper_tables_sources.py
has everything else: definitions, row facts, caveats). `check` rebuilds in memory and prints every
difference from the committed files (exit 1), ignoring only the read date. Fetched files are never
written into the project.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_tables_sources as S  # noqa: E402 (a sibling module of this script)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "paper"
SEEDS = ROOT.parent / "shared" / "seeds"
PINNED = "6c3cb0309732b34313d296ca78d02b5f88a50ca0"  # the commit read on 2026-11-30 (= the suite's RTDMD pin)
EXTRACTED_BY = "scripts/paper_tables.py build (scripts/paper_tables_sources.py for everything but the numbers)"
NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


class Repo:
    """Files of a git mirror at one commit."""

    def __init__(self, git_dir: Path, commit: str):
        self.git_dir = git_dir
        self.commit = self._git("rev-parse", f"{commit}^{{commit}}").strip()

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.git_dir), *args], check=True, capture_output=True, text=True).stdout

    def read(self, path: str) -> bytes:
        return subprocess.run(["git", "-C", str(self.git_dir), "show", f"{self.commit}:{path}"], check=True,
                              capture_output=True).stdout

    def blob(self, path: str) -> str:
        return self._git("rev-parse", f"{self.commit}:{path}").strip()

    def cfg(self, ref: S.Cfg) -> Any:
        value: Any = yaml.safe_load(self.read(ref.path))
        for part in ref.key.split("."):
            value = value[part]
        return value

    def fill(self, text: str) -> str:
        """Replace {cfg:PATH:KEY} by the YAML value."""
        return re.sub(r"\{cfg:([^:}]+):([^}]+)\}", lambda m: str(self.cfg(S.Cfg(m[1], m[2]))), text)


# ---- Markdown -----------------------------------------------------------------------------------

def plain(cell: str) -> tuple[str, str | None]:
    """A cell's text without markup, and its emphasis ("bold", "underline" or None)."""
    text, emphasis = cell.strip(), None
    if m := re.fullmatch(r"\*\*(.*)\*\*", text):
        text, emphasis = m[1].strip(), "bold"
    if m := re.fullmatch(r"<ins>(.*)</ins>", text):
        text, emphasis = m[1].strip(), "underline"
    text = re.sub(r"<sub>(.*?)</sub>", r"_\1", text)
    return text, emphasis


def markdown_table(text: str, heading: str) -> tuple[list[str], list[list[str]], str]:
    """The pipe table right under `### heading`: header cells, data rows (cells), and the prose after
    it up to the next heading or rule."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"### {heading}")
    except StopIteration:
        raise SystemExit(f"no '### {heading}' section in the README") from None
    table, i = [], start + 1
    while i < len(lines) and not lines[i].startswith("|"):
        i += 1
    while i < len(lines) and lines[i].startswith("|"):
        table.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
        i += 1
    prose = []
    while i < len(lines) and not lines[i].startswith(("#", "---")):
        prose.append(lines[i])
        i += 1
    if len(table) < 3 or not all(set(c) <= set(":- ") for c in table[1]):
        raise SystemExit(f"section '{heading}': expected a header, a separator and data rows")
    return table[0], table[2:], " ".join(prose)


def number(cell: str) -> tuple[float | int, str, str | None]:
    text, emphasis = plain(cell)
    if not NUMBER.fullmatch(text):
        raise SystemExit(f"not a number: {cell!r}")
    return (float(text) if "." in text else int(text)), text, emphasis


# ---- RTDMD's tables ------------------------------------------------------------------------------

def prompts(repo: Repo, dataset: str, infer_cfg: str) -> dict:
    path = f"dataset/{dataset}"
    data = repo.read(path)
    lines = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    short = repo.cfg(S.Cfg(infer_cfg, "num_media_images"))
    return {"name": f"RTDMD {path}", "repository": S.RTDMD_REPO, "file": path, "commit": repo.commit,
            "sha256": hashlib.sha256(data).hexdigest(), "lines": len(lines), "distinct_lines": len(set(lines)),
            "lines_used": None, "lines_used_candidates": sorted({short, len(lines)}),
            "note": repo.fill(S.LINES_NOTE), "unknown": {"lines_used": S.LINES_UNKNOWN}}


def computed_by(column: str, metric: str) -> list[dict]:
    return [{"suite": f"rtdmd-{v}-{column}", "registry": f"rtdmd-{column}", "set": [f"suite.variant={v}"],
             "metric": metric, "note": note}
            for v, note in (("64", "the first lines only, as RTDMD's released inference script"),
                            ("full", "the whole file, as RTDMD's training-time evaluation"))]


def rtdmd_metric(repo: Repo, header: str, infer_cfg: str) -> tuple[str, dict]:
    name, arrow = re.fullmatch(r"(.*?)\s*([↑↓])", header).groups()
    spec = S.RTDMD_COLUMNS[name]
    for path, literal in S.CODE_FACTS[name]:
        if literal not in repo.read(path).decode("utf-8"):
            raise SystemExit(f"{name}: {path} no longer contains {literal!r}; re-read the scorer and update its definition")
    return spec["key"], {
        "column": header, "name": spec["name"], "variant": spec["variant"], "higher_is_better": arrow == "↑",
        "definition": spec["definition"], "scale": spec["scale"], "certainty": spec["certainty"],
        "basis": f"{S.RTDMD_REPO} {repo.commit[:7]}: {spec['basis']}",
        "prompts": prompts(repo, spec["dataset"], infer_cfg), "images_per_prompt": 1,
        "seed": repo.cfg(S.Cfg(infer_cfg, "seed")), "computed_by": computed_by(spec["column"], spec["metric"]),
        "alternatives": [c for alt in spec.get("alternatives", ()) for c in computed_by(spec["column"], alt)],
        "unknown": {}}


def rtdmd_row(repo: Repo, label: str, nfe: int, values: dict, printed: dict, emphasis: dict) -> dict:
    facts = S.RTDMD_ROWS[label]
    row = {"label": label, **{k: facts[k] for k in ("method", "role", "third_party", "base", "base_key", "method_key")},
           "nfe": nfe}
    for key in ("guidance", "resolution", "scored_with_table_protocol"):
        row[key] = repo.cfg(facts[key]) if isinstance(facts[key], S.Cfg) else facts[key]
    if isinstance(facts["guidance"], S.Cfg):  # the distilled loop ignores the config: check it says 1.0 too
        path, literal = S.DISTILLED_LOOP
        if literal not in repo.read(path).decode("utf-8") or float(row["guidance"]) != float(literal.split("=")[1]):
            raise SystemExit(f"{label}: guidance is no longer {literal} in {path} / the inference config")
        row["guidance"] = float(row["guidance"])
        if nfe != repo.cfg(S.Cfg(facts["resolution"].path, "num_steps")):
            raise SystemExit(f"{label}: NFE {nfe} differs from num_steps of {facts['resolution'].path}")
    basis = {k: dict(b, note=repo.fill(b["note"])) for k, b in facts["basis"].items()}
    return {**row, "values": values, "printed": printed, "emphasis": emphasis, "basis": basis,
            "provenance": facts["provenance"], "unknown": dict(facts["unknown"])}


def rtdmd_claims(heading: str, prose: str, rows: list[dict], metrics: dict[str, dict]) -> list[dict]:
    """The README's sentences under the table that state figures or orderings, as checkable claims."""
    key = {m["column"].rstrip(" ↑↓"): k for k, m in metrics.items()}
    claims, ours = [], next(r["label"] for r in rows if r["role"] == "method")
    if m := re.search(r"only 4-NFE model that \*\*surpasses the ([0-9]+)-NFE (.+?) teacher with\s+CFG\*\* across all (\w+)", prose):
        teacher = next(r for r in rows if r["role"] == "teacher")
        if int(m[1]) != teacher["nfe"] or m[3] != "five" or len(metrics) != 5:
            raise SystemExit(f"{heading}: the teacher sentence no longer matches the table")
        claims.append({"id": "rtdmd-beats-teacher", "kind": "higher",
                       "statement": "RTDMD surpasses the multi-step teacher with CFG on every metric (the README adds "
                                    "that it is the only 4-NFE model to do so; that part is not encoded)",
                       "method": ours, "relative_to": [teacher["label"]], "metrics": list(metrics), "value": None,
                       "printed": None, "checkable": True, "unknown": {"value": "an ordering, no figure",
                                                                      "printed": "an ordering, no figure"}})
    if m := re.search(r"best 4-NFE model on \*\*([0-9]) of ([0-9])\*\* rewards\s*\(([^)]*)\)", prose):
        names = [n.strip() for n in m[3].split("/")]
        if int(m[1]) != len(names) or int(m[2]) != len(metrics):
            raise SystemExit(f"{heading}: the '{m[1]} of {m[2]}' sentence no longer matches its list or the table")
        few = [r["label"] for r in rows if r["nfe"] == 4 and r["label"] != ours]
        nine = re.search(r"beats the \*\*(FLUX\.2 9B teacher) at ([0-9]+) NFE\*\*", prose)
        teacher = next(r for r in rows if r["label"] == nine[1])
        if int(nine[2]) != teacher["nfe"]:
            raise SystemExit(f"{heading}: the 9B teacher's NFE in the prose differs from the table")
        no_figure = {"value": "an ordering, no figure", "printed": "an ordering, no figure"}
        claims.append({"id": "rtdmd-best-4nfe", "kind": "higher", "statement": "RTDMD is the best 4-NFE model on these "
                       "metrics", "method": ours, "relative_to": few, "metrics": [key[n] for n in names],
                       "value": None, "printed": None, "checkable": True, "unknown": dict(no_figure)})
        claims.append({"id": "rtdmd-beats-9b-teacher", "kind": "higher", "statement": "RTDMD beats the FLUX.2 9B "
                       "teacher at its NFE on the same metrics", "method": ours, "relative_to": [teacher["label"]],
                       "metrics": [key[n] for n in names], "value": None, "printed": None, "checkable": True,
                       "unknown": dict(no_figure)})
        for printed, name in re.findall(r"\*\*(\+[0-9.]+) (\w+)\*\*", prose):
            claims.append({"id": f"rtdmd-minus-9b-teacher-{key[name]}", "kind": "difference",
                           "statement": f"RTDMD minus the FLUX.2 9B teacher on {name}, as rounded in the README",
                           "method": ours, "relative_to": [teacher["label"]], "metrics": [key[name]],
                           "value": float(printed), "printed": printed, "checkable": True, "unknown": {}})
    return claims


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def check_paths(repo: Repo, table: dict) -> None:
    """Every file of RTDMD's repository that a note names exists at the commit."""
    named = {p for key in ("protocol", "metrics", "rows", "caveats") for text in strings(table[key])
             for p in re.findall(r"\b((?:rtdmd|configs|scripts|dataset)/[\w.+/-]*\w)", text)}
    for path in sorted(named):
        if subprocess.run(["git", "-C", str(repo.git_dir), "cat-file", "-e", f"{repo.commit}:{path}"],
                          capture_output=True).returncode != 0:
            raise SystemExit(f"{table['id']}: a note names {path}, which is not in {S.RTDMD_REPO} at {repo.commit[:7]}")


def rtdmd_table(repo: Repo, table_id: str, read_on: str) -> dict:
    spec = S.RTDMD_TABLES[table_id]
    readme = repo.read(S.RTDMD_README)
    text = readme.decode("utf-8")
    header, cells, prose = markdown_table(text, spec["heading"])
    if header[:2] != ["Method", "NFE"]:
        raise SystemExit(f"{spec['heading']}: expected the columns Method, NFE first, got {header[:2]}")
    metrics = dict(rtdmd_metric(repo, h, spec["infer_cfg"]) for h in header[2:])
    keys = list(metrics)
    rows, labels = [], set()
    for row in cells:
        label, _ = plain(row[0])
        if label not in S.RTDMD_ROWS:
            raise SystemExit(f"{spec['heading']}: row {label!r} has no entry in scripts/paper_tables_sources.py")
        if label in labels:
            raise SystemExit(f"{spec['heading']}: row {label!r} is printed twice")
        labels.add(label)
        parsed = [number(c) for c in row[2:]]
        rows.append(rtdmd_row(repo, label, number(row[1])[0], {k: p[0] for k, p in zip(keys, parsed)},
                              {k: p[1] for k, p in zip(keys, parsed)}, {k: p[2] for k, p in zip(keys, parsed) if p[2]}))
    arxiv = re.search(r"arxiv\.org/abs/([0-9]{4}\.[0-9]{4,5})", text)[1]
    title = re.search(r"<h2>\s*(.*?)\s*</h2>", text)[1]
    seed = repo.cfg(S.Cfg(spec["infer_cfg"], "seed"))
    return {
        "schema_version": 1, "id": table_id, "title": spec["title"], "level": "table",
        "paper": {"title": title, "arxiv": arxiv, "table": spec["paper_table"],
                  "identified_by": "the README's paper badge and its section heading", "unknown": {}},
        "source": {"kind": "repository-file", "repository": S.RTDMD_REPO, "file": S.RTDMD_README, "commit": repo.commit,
                   "blob": repo.blob(S.RTDMD_README), "sha256": hashlib.sha256(readme).hexdigest(),
                   "section": f"### {spec['heading']}", "url": f"https://github.com/{S.RTDMD_REPO}/blob/{repo.commit}/README.md",
                   "read_on": read_on, "how": S.READ_WITH, "unknown": {}},
        "extracted_by": EXTRACTED_BY,
        "protocol": {"summary": (f"RTDMD's evaluation (docs/rtdmd_protocol.md): distilled models with "
                                 f"{repo.cfg(S.Cfg(spec['infer_cfg'], 'num_steps'))} CPS steps, eta "
                                 f"{repo.cfg(S.Cfg(spec['infer_cfg'], 'cps_eta'))}, guidance 1, seed {seed} (+ rank), "
                                 f"{repo.cfg(S.Cfg(spec['infer_cfg'], 'image_resolution'))} px, bf16, one image per line "
                                 "of each metric's prompt file, mean over images. README: all numbers at 4 NFE except "
                                 "the teachers, which use 'their standard multi-step setting'."),
                     "scored_by": (f"{S.RTDMD_REPO} {repo.commit[:7]}: scripts/inference.sh -> rtdmd/inference.py with "
                                   f"{spec['infer_cfg']}, rtdmd/rewards/multi_scorer.py (for RTDMD's own row; other rows: "
                                   "not stated)"), "unknown": {}},
        "metrics": metrics, "rows": rows, "claims": rtdmd_claims(spec["heading"], prose, rows, metrics),
        "caveats": [repo.fill(c) for c in spec["caveats"]],
    }


# ---- abstracts -----------------------------------------------------------------------------------

def abstract_paragraph(text: str) -> str:
    """The first non-empty line after the last line that is just '... Abstract'."""
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip().lower().endswith("abstract") and len(line.strip()) <= 12]
    if not marks:
        raise SystemExit("no 'Abstract' line in the abstract copy")
    return next(line.strip() for line in lines[marks[-1] + 1:] if line.strip())


def figure(paragraph: str, pattern: str) -> tuple[float, str]:
    m = re.search(pattern, paragraph)
    if not m:
        raise SystemExit(f"the abstract no longer contains /{pattern}/")
    printed = m[1].rstrip(".")
    return float(printed), printed


def abstract_table(table_id: str, seeds: Path, read_on: str) -> dict:
    spec = S.ABSTRACTS[table_id]
    raw = (seeds / spec["seed_file"]).read_bytes()
    paragraph = abstract_paragraph(raw.decode("utf-8"))
    found: list[str] = []
    rows = []
    for label, facts in spec["rows"].items():
        parsed = {k: figure(paragraph, p) for k, p in facts["figures"].items()}
        found += [p[1] for p in parsed.values()]
        rows.append({"label": label, **{k: facts[k] for k in ("method", "role", "third_party", "base", "base_key",
                                                                 "method_key", "nfe", "guidance", "resolution",
                                                                 "scored_with_table_protocol")},
                     "values": {k: p[0] for k, p in parsed.items()}, "printed": {k: p[1] for k, p in parsed.items()},
                     "emphasis": {}, "basis": facts["basis"], "provenance": facts["provenance"],
                     "unknown": dict(facts["unknown"])})
    claims = []
    for c in spec["claims"]:
        claim = {k: c[k] for k in ("id", "kind", "statement", "method", "relative_to", "metrics")}
        if c["figure"]:
            value, printed = figure(paragraph, c["figure"])
            found.append(printed)
            claim.update(value=c["sign"] * value, printed=printed, checkable=c["checkable"],
                         unknown={})
        else:
            claim.update(value=None, printed=None, checkable=c["checkable"],
                         unknown={"value": "the abstract states no figure", "printed": "the abstract states no figure"})
        claims.append(claim)
    stated = NUMBER.findall(re.sub(r"\(\d\)", "", paragraph))  # "(1)" etc. enumerate, they are not figures
    if sorted(stated) != sorted(found + spec.get("expected_numbers", [])):
        raise SystemExit(f"{table_id}: the abstract states {stated}, the file expects {found + spec.get('expected_numbers', [])}")
    return {
        "schema_version": 1, "id": table_id, "title": spec["title"], "level": "abstract",
        "paper": {"title": spec["paper_title"], "arxiv": spec["arxiv"], "table": None,
                  "identified_by": spec["identified_by"], "unknown": {"table": "abstract-level figures, no table"}},
        "source": {"kind": "abstract", "repository": None, "file": f"../shared/seeds/{spec['seed_file']}", "commit": None,
                   "blob": None, "sha256": hashlib.sha256(raw).hexdigest(), "section": "the abstract paragraph",
                   "url": spec["url"], "read_on": read_on,
                   "how": "the copy under ../shared/seeds/ (read-only, not part of the project), abstract paragraph parsed",
                   "unknown": {"repository": "an abstract, not a repository file", "commit": "not a repository file",
                               "blob": "not a repository file"}},
        "extracted_by": EXTRACTED_BY,
        "protocol": {"summary": "not stated in the abstract", "scored_by": None,
                     "unknown": {"scored_by": "the abstract names no evaluation code or protocol"}},
        "metrics": spec["metrics"], "rows": rows, "claims": claims, "caveats": spec["caveats"],
    }


# ---- build / check ----------------------------------------------------------------------------

def build_all(repo: Repo, seeds: Path, read_on: str) -> dict[str, dict]:
    tables = {t: rtdmd_table(repo, t, read_on) for t in S.RTDMD_TABLES}
    for table in tables.values():
        check_paths(repo, table)
    tables.update({t: abstract_table(t, seeds, read_on) for t in S.ABSTRACTS})
    printed_rows = {r["label"] for t in S.RTDMD_TABLES for r in tables[t]["rows"]}
    if missing := set(S.RTDMD_ROWS) - printed_rows:
        raise SystemExit(f"rows described in scripts/paper_tables_sources.py but not in the README: {sorted(missing)}")
    return tables


def dump(table: dict) -> str:
    return json.dumps(table, indent=2, ensure_ascii=False) + "\n"


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ (the read date excepted)."""
    if path == "/source/read_on":
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in (differences(old.get(k), new.get(k), f"{path}/{k}") if k in old and k in new
                          else [f"{path}/{k}: only in the {'committed file' if k in old else 'source'}"])]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}/{i}")]
    return [] if old == new and type(old) is type(new) else [f"{path}: committed {old!r}, source {new!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("build", "check"))
    ap.add_argument("--git-dir", type=Path, required=True, help="a git mirror or clone of Harahan/RTDMD")
    ap.add_argument("--commit", default=PINNED)
    ap.add_argument("--seeds", type=Path, default=SEEDS, help="folder with gndm_abstract.txt, gdmd_abstract.txt")
    ap.add_argument("--read-on", default=date.today().isoformat(), help="the date the sources were read (build)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    tables = build_all(Repo(args.git_dir, args.commit), args.seeds, args.read_on)
    if args.mode == "build":
        args.out.mkdir(parents=True, exist_ok=True)
        for table_id, table in tables.items():
            (args.out / f"{table_id}.json").write_text(dump(table), encoding="utf-8")
            print(f"wrote {args.out / table_id}.json: {len(table['rows'])} rows, {len(table['claims'])} claims")
        return 0
    problems = []
    for table_id, table in tables.items():
        path = args.out / f"{table_id}.json"
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        problems += [f"{table_id}{d}" for d in differences(json.loads(path.read_text(encoding="utf-8")), table)]
    if extra := {p.stem for p in args.out.glob("*.json")} - set(tables) - {"schema"}:
        problems.append(f"files the script does not build: {sorted(extra)}")
    print("\n".join(problems) if problems else f"ok: {len(tables)} tables match their sources")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
