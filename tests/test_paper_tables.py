"""results/paper/: the published reference tables.

Every file validates against results/paper/schema.json (JSON Schema 2020-12, with jsonschema) and
keeps what the schema cannot say: row metrics are defined, no duplicate rows, printed and parsed
numbers agree, every null is explained, emphasis and claims agree with the numbers, prompt files
agree with the suites' own pins, computed_by names real suites. Where the sources are on this
machine (a git mirror of Harahan/RTDMD beside the clone, ../shared/seeds), the committed files must
equal a fresh parse of them (scripts/paper_tables.py check).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper"
SCHEMA = json.loads((PAPER / "schema.json").read_text(encoding="utf-8"))
TABLES = sorted(p for p in PAPER.glob("*.json") if p.name != "schema.json")
SETTINGS = ("base", "base_key", "method_key", "nfe", "guidance", "resolution", "scored_with_table_protocol")
MIRROR = Path(os.environ.get("RTDMD_BENCH_RTDMD_GIT", ROOT.parent / ".mirror" / "Harahan+RTDMD" / "repo"))
SEEDS = ROOT.parent / "shared" / "seeds"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def script():
    spec = importlib.util.spec_from_file_location("paper_tables", ROOT / "scripts" / "paper_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in Draft202012Validator(SCHEMA).iter_errors(doc)]


def by_label(table: dict) -> dict[str, dict]:
    return {r["label"]: r for r in table["rows"]}


def test_the_schema_is_a_valid_2020_12_schema():
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_the_issue_s_tables_are_there_in_full():
    tables = {p.stem: load(p) for p in TABLES}
    assert {"rtdmd-sd3m-table1", "rtdmd-flux2-4b-table2", "rdm-gndm-abstract", "gdmd-abstract"} <= set(tables)
    # Counted by hand in RTDMD's README at 6c3cb03: 4 rows x 5 columns, 8 rows x 9 columns.
    sd3, flux = tables["rtdmd-sd3m-table1"], tables["rtdmd-flux2-4b-table2"]
    assert (len(sd3["rows"]), len(sd3["metrics"])) == (4, 5)
    assert (len(flux["rows"]), len(flux["metrics"])) == (8, 9)
    assert all(len(r["values"]) == len(t["metrics"]) for t in (sd3, flux) for r in t["rows"])
    assert {t["level"] for t in (tables["rdm-gndm-abstract"], tables["gdmd-abstract"])} == {"abstract"}


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_each_table_validates_against_the_schema(path):
    assert errors(load(path)) == []


def test_the_schema_rejects_unexplained_nulls_strings_for_numbers_and_empty_tables():
    good = load(PAPER / "rtdmd-sd3m-table1.json")
    assert errors(good) == []
    unexplained = copy.deepcopy(good)
    unexplained["rows"][0]["unknown"].pop("guidance")  # the teacher's guidance is null
    assert any("guidance" in e for e in errors(unexplained))
    as_text = copy.deepcopy(good)
    as_text["rows"][1]["values"]["clipscore"] = "0.3"
    assert any("values/clipscore" in e for e in errors(as_text))
    empty = copy.deepcopy(good)
    empty["rows"] = []
    assert errors(empty)
    undated = copy.deepcopy(good)
    del undated["source"]["read_on"]
    assert any("read_on" in e for e in errors(undated))
    unpinned = copy.deepcopy(good)
    unpinned["source"]["commit"] = None
    unpinned["source"]["unknown"]["commit"] = "lost"
    assert errors(unpinned)  # a repository table needs its commit


def nulls_and_notes(node, path=""):
    """(path of a null without a note, path of a note without a null) anywhere in a document."""
    bad = []
    if isinstance(node, dict):
        notes = node.get("unknown", {}) if isinstance(node.get("unknown"), dict) else {}
        bad += [f"{path}/{k}: null without a note" for k, v in node.items() if v is None and k not in notes]
        bad += [f"{path}/unknown/{k}: note for a field that is not null" for k in notes if node.get(k, 0) is not None]
        for k, v in node.items():
            bad += nulls_and_notes(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            bad += nulls_and_notes(v, f"{path}/{i}")
    return bad


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_every_null_is_explained_and_every_note_explains_a_null(path):
    assert nulls_and_notes(load(path)) == []


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_rows_use_defined_metrics_real_numbers_and_are_not_duplicated(path):
    table = load(path)
    assert table["id"] == path.stem
    seen_labels, seen_settings = set(), set()
    for row in table["rows"]:
        assert row["values"], row["label"]
        assert set(row["values"]) <= set(table["metrics"]), row["label"]
        assert set(row["printed"]) == set(row["values"]) and set(row["emphasis"]) <= set(row["values"])
        for key, value in row["values"].items():
            assert type(value) in (int, float) and math.isfinite(value), (row["label"], key)
            assert float(row["printed"][key]) == value, (row["label"], key)
        assert row["label"] not in seen_labels
        settings = (row["method"], row["role"], row["base"], row["nfe"], row["guidance"], row["resolution"])
        assert settings not in seen_settings, settings
        seen_labels.add(row["label"])
        seen_settings.add(settings)
        for field in SETTINGS:  # every known setting says how it is known
            assert (row[field] is not None) == (field in row["basis"]), (row["label"], field)
    for claim in table["claims"]:
        assert set(claim["metrics"]) <= set(table["metrics"]), claim["id"]
        if claim["checkable"]:
            assert {claim["method"], *claim["relative_to"]} <= seen_labels, claim["id"]


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_provenance_is_pinned_and_dated(path):
    table = load(path)
    source = table["source"]
    assert date.fromisoformat(source["read_on"]) <= date.today()
    assert len(source["sha256"]) == 64
    if table["level"] == "table":
        assert source["repository"] and source["file"] and len(source["commit"]) == 40 and len(source["blob"]) == 40
        assert source["commit"] in source["url"]
        if source["repository"] == "Harahan/RTDMD":  # read where the protocol suites' prompt files are pinned
            from rtdmd_bench.prompt_files import RTDMD_COMMIT

            assert source["commit"] == RTDMD_COMMIT == script().PINNED
        for metric in table["metrics"].values():  # a table's columns say what computes them here
            assert metric["prompts"]["commit"] == source["commit"] and metric["computed_by"]
    else:
        assert source["url"].startswith("https://arxiv.org/abs/") and table["paper"]["arxiv"] in source["url"]
        assert all(r["scored_with_table_protocol"] is None for r in table["rows"])


def ranked(table: dict, key: str) -> list[tuple[float, dict]]:
    sign = 1 if table["metrics"][key]["higher_is_better"] else -1
    return sorted(((sign * r["values"][key], r) for r in table["rows"]), key=lambda x: -x[0])


@pytest.mark.parametrize("path", [p for p in TABLES if load(p)["level"] == "table"], ids=lambda p: p.stem)
def test_printed_emphasis_agrees_with_the_numbers(path):
    """Bold = best, underline = second best (README): a check of the transcription."""
    table = load(path)
    for key in table["metrics"]:
        order = ranked(table, key)
        bold = [v for v, r in order if r["emphasis"].get(key) == "bold"]
        under = [v for v, r in order if r["emphasis"].get(key) == "underline"]
        assert bold and all(v == order[0][0] for v in bold), key
        rest = [v for v, r in order if r["emphasis"].get(key) != "bold"]
        assert under and all(v == max(rest) for v in under), key


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_checkable_claims_agree_with_the_rows(path):
    table = load(path)
    rows = by_label(table)
    for claim in (c for c in table["claims"] if c["checkable"]):
        mine = rows[claim["method"]]["values"]
        for other in claim["relative_to"]:
            theirs = rows[other]["values"]
            for key in claim["metrics"]:
                if claim["kind"] == "difference":  # as rounded in the source: within half a printed digit
                    digits = len(claim["printed"].split(".")[1])
                    assert abs(mine[key] - theirs[key] - claim["value"]) <= 0.5 * 10 ** -digits + 1e-12, claim["id"]
                else:
                    sign = 1 if table["metrics"][key]["higher_is_better"] else -1
                    assert sign * (mine[key] - theirs[key]) > 0, (claim["id"], other, key)


def test_prompt_files_agree_with_the_suites_own_pins():
    from suites.prompt_sets import OFFICIAL

    by_url = {spec.url: spec for spec in OFFICIAL.values()}
    checked = 0
    for path in TABLES:
        for key, metric in load(path)["metrics"].items():
            if metric["prompts"] is None:
                continue
            p = metric["prompts"]
            spec = by_url[f"https://raw.githubusercontent.com/{p['repository']}/{p['commit']}/{p['file']}"]
            assert (p["sha256"], p["lines"]) == (spec.sha256, spec.lines), (path.stem, key)
            assert p["lines"] in p["lines_used_candidates"]
            checked += 1
    assert checked == 14  # 5 + 9 columns


def test_computed_by_names_registered_suites():
    from rtdmd_bench.registry import SUITES

    for path in TABLES:
        for metric in load(path)["metrics"].values():
            for entry in (metric["computed_by"] or []) + metric["alternatives"]:
                assert entry["registry"] in SUITES, entry
                variant = entry["set"][0].removeprefix("suite.variant=")
                assert entry["suite"] == entry["registry"].replace("rtdmd-", f"rtdmd-{variant}-", 1), entry


@pytest.mark.slow
def test_computed_by_suites_report_those_metrics_under_those_names(tmp_path):
    """The protocol suites themselves (stand-in scorers, nothing downloaded) carry each name and key."""
    from ocr_stand_in import make_environment

    from rtdmd_bench.registry import resolve

    ocr_environment = make_environment(tmp_path / "ocr")  # the OCR suite checks its environment when built
    pairs = {(e["registry"], e["set"][0].split("=")[1], e["suite"], e["metric"])
             for p in TABLES for m in load(p)["metrics"].values()
             for e in (m["computed_by"] or []) + m["alternatives"]}
    for registry, variant, name, metric in sorted(pairs):
        cls = resolve("suites", registry)
        cfg = cls.Config(variant=variant, models="stand-in")
        if registry == "rtdmd-ocr":
            cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, **ocr_environment))
        suite = cls(cfg)
        assert suite.name.split("[")[0] == name and metric in suite.higher_is_better, (registry, variant, metric)


def test_the_parser_reads_cells_headings_and_prose():
    pt = script()
    text = "\n".join([
        "### Other", "| Method | NFE | A ↑ |", "| --- | :---: | :---: |", "| x | 1 | 9.0 |", "",
        "### Mine (Table 9)", "", "| Method | NFE | A ↑ | B ↓ |", "| --- | :---: | :---: | :---: |",
        "| R<sub>dm</sub> | 4 | <ins>0.2500</ins> | 12 |", "| **Ours** | 50 | **1.5** | -3.25 |", "",
        "Ours beats **+0.37 A** here.", "", "---", "after the rule",
    ])
    header, rows, prose = pt.markdown_table(text, "Mine (Table 9)")
    assert header == ["Method", "NFE", "A ↑", "B ↓"]
    assert [pt.plain(r[0]) for r in rows] == [("R_dm", None), ("Ours", "bold")]
    assert pt.number(rows[0][2]) == (0.25, "0.2500", "underline")
    assert pt.number(rows[1][2]) == (1.5, "1.5", "bold")
    assert pt.number(rows[0][3]) == (12, "12", None) and pt.number(rows[1][3]) == (-3.25, "-3.25", None)
    assert prose.strip() == "Ours beats **+0.37 A** here."
    with pytest.raises(SystemExit):
        pt.markdown_table(text, "Missing")
    with pytest.raises(SystemExit):
        pt.number("n/a")


def test_differences_name_the_changed_number_and_ignore_the_read_date():
    pt = script()
    old = {"source": {"read_on": "2026-11-30"}, "rows": [{"values": {"a": 1.0}}], "x": 1}
    new = {"source": {"read_on": "2027-01-01"}, "rows": [{"values": {"a": 1.5}}], "x": 1.0, "y": 2}
    assert pt.differences(old, new) == ["/rows/0/values/a: committed 1.0, source 1.5",
                                        "/x: committed 1, source 1.0", "/y: only in the source"]


def test_abstract_paragraph_is_the_one_after_the_abstract_line():
    pt = script()
    text = "Title\n\nAI summary\nsummary says 9.99\n\nπ Abstract\nThe model reaches 1.5.\nfields\n"
    assert pt.abstract_paragraph(text) == "The model reaches 1.5."


def rtdmd_commit_present() -> bool:
    return MIRROR.exists() and subprocess.run(["git", "-C", str(MIRROR), "cat-file", "-e", script().PINNED],
                                              capture_output=True).returncode == 0


@pytest.mark.skipif(not (rtdmd_commit_present() and SEEDS.exists()),
                    reason="no Harahan/RTDMD mirror (RTDMD_BENCH_RTDMD_GIT) or ../shared/seeds beside this clone")
def test_committed_tables_equal_a_fresh_parse_of_the_sources():
    pt = script()
    tables = pt.build_all(pt.Repo(MIRROR, pt.PINNED), SEEDS, "2026-11-30")
    assert set(tables) == {p.stem for p in TABLES}
    for table_id, table in tables.items():
        assert pt.differences(load(PAPER / f"{table_id}.json"), table) == [], table_id
