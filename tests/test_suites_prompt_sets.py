"""Prompt-set loading: the real files in ../shared/data, validation, verified cached downloads."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import pytest

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from suites import prompt_sets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENEVAL_FILE = DATA / "geneval" / "evaluation_metadata.jsonl"
DRAWBENCH_FILE = DATA / "drawbench" / "test.txt"
needs_data = pytest.mark.skipif(not GENEVAL_FILE.is_file(), reason="../shared/data is absent")


@needs_data
def test_geneval_file_tags_and_checksum():
    rows = prompt_sets.load_geneval(GENEVAL_FILE)
    assert len(rows) == 553
    assert collections.Counter(r["tag"] for r in rows) == {
        "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
    assert prompt_sets.sha256_of(GENEVAL_FILE) == prompt_sets.OFFICIAL["geneval"].sha256
    assert all(r["include"] for r in rows)


@needs_data
def test_drawbench_and_pickscore_files_match_the_registered_checksums():
    assert len(prompt_sets.load_prompts(DRAWBENCH_FILE)) == prompt_sets.OFFICIAL["drawbench"].lines
    assert prompt_sets.sha256_of(DRAWBENCH_FILE) == prompt_sets.OFFICIAL["drawbench"].sha256
    pick = DATA / "pickscore" / "test.txt"
    assert prompt_sets.sha256_of(pick) == prompt_sets.OFFICIAL["pickscore"].sha256


@needs_data
def test_geneval_suite_prompts_align_with_metadata():
    suite = registry.resolve("suites", "geneval")(registry.resolve("suites", "geneval").Config(prompts=str(GENEVAL_FILE)))
    prompts, meta = suite.prompts(), suite.metadata()
    assert len(prompts) == 553 and [m["prompt"] for m in meta] == prompts
    assert suite.images_per_prompt == 4


def test_malformed_geneval_lines_fail_loudly(tmp_path):
    good = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["left of", 0]}], "prompt": "p"}
    bad_cases = [
        {**good, "tag": "spatial"},
        {**good, "include": [{"class": "kitten", "count": 1}]},
        {**good, "include": [{"class": "cat", "count": 1, "color": "teal"}]},
        {**good, "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]},  # refers to itself
        {**good, "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["near", 0]}]},
    ]
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert prompt_sets.load_geneval(path)[0]["prompt"] == "p"
    for bad in bad_cases:
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(UserError, match=":2"):
            prompt_sets.load_geneval(path)
    path.write_text("{not json\n")
    with pytest.raises(UserError):
        prompt_sets.load_geneval(path)


def test_txt_and_json_prompt_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert prompt_sets.load_prompts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.json").write_text(json.dumps(["x", "y"]))
    assert prompt_sets.load_prompts(tmp_path / "b.json") == ["x", "y"]
    (tmp_path / "c.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(UserError):
        prompt_sets.load_prompts(tmp_path / "c.json")
    with pytest.raises(UserError, match="suite.prompts="):
        prompt_sets.resolve("drawbench", str(tmp_path / "missing.txt"))


def test_verified_download_caches_and_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "upstream.txt"
    source.write_text("a prompt\nanother\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setitem(prompt_sets.OFFICIAL, "demo", prompt_sets.OfficialFile(source.as_uri(), digest, "demo.txt", 2))
    path = prompt_sets.resolve("demo", "")
    assert path.parent == tmp_path / "cache" / "prompts" and prompt_sets.load_prompts(path) == ["a prompt", "another"]
    source.unlink()  # cached: no second download
    assert prompt_sets.resolve("demo", "") == path

    # wrong checksum: refused, nothing cached
    source.write_text("tampered\n")
    monkeypatch.setitem(prompt_sets.OFFICIAL, "demo2", prompt_sets.OfficialFile(source.as_uri(), digest, "demo2.txt", 1))
    with pytest.raises(UserError, match="SHA-256"):
        prompt_sets.resolve("demo2", "")
    assert not (tmp_path / "cache" / "prompts" / "demo2.txt").exists()
    assert [p.name for p in (tmp_path / "cache" / "prompts").iterdir()] == ["demo.txt"]  # no temporary file left


def test_offline_error_names_the_url_and_the_path_option(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path))
    url = (tmp_path / "no-such-file.jsonl").as_uri()
    monkeypatch.setitem(prompt_sets.OFFICIAL, "geneval", prompt_sets.OfficialFile(url, "0" * 64, "g.jsonl", 553))
    with pytest.raises(UserError) as err:
        prompt_sets.resolve("geneval", "")
    assert url in str(err.value) and "--set suite.prompts=PATH" in str(err.value)
    with pytest.raises(UserError, match="suite.prompts="):
        prompt_sets.resolve("hpsv2-unknown", "")
