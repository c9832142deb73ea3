"""Training prompt sets per stage (issue 10, item 5): RTDMD's stage 1 trains on its PickScore
training prompts, stage 2 (and the reward baselines) on its GenEval-style training metadata; both
are named public files, downloaded once and verified; `Batch.draw` / `for_rewards` pick them."""

from __future__ import annotations

import hashlib
import json

import pytest

from rtdmd_bench import prompt_files
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import Batch, PromptPools, draw_prompts


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what `git hash-object` prints


def test_git_blob_id_is_what_git_computes(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello\n")
    assert prompt_files.git_blob_of(f) == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object, by hand


def test_named_set_downloads_once_and_is_verified(tmp_path, monkeypatch):
    rows = [{"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "a photo of two cats"},
            {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    source = tmp_path / "upstream.jsonl"
    source.write_bytes(data)
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "cache"))
    spec = prompt_files.OfficialFile(source.as_uri(), "", "meta.jsonl", 0, _blob(data))
    monkeypatch.setitem(prompt_files.TRAINING, "rtdmd:demo/train_metadata.jsonl", spec)
    assert prompt_files.load_source("rtdmd:demo/train_metadata.jsonl", "--set base.reward_prompt_file") == \
        ["a photo of two cats", "a photo of a red dog"]
    source.unlink()  # cached: no second download
    assert len(prompt_files.load_source("rtdmd:demo/train_metadata.jsonl", "--set x")) == 2
    # A changed upstream file fails the check and names the option for a local copy.
    other = tmp_path / "changed.jsonl"
    other.write_bytes(data + b"\n")
    bad = prompt_files.OfficialFile(other.as_uri(), "", "meta2.jsonl", 0, _blob(data))
    monkeypatch.setitem(prompt_files.TRAINING, "rtdmd:demo/bad.jsonl", bad)
    with pytest.raises(UserError, match="git blob id.*--set base.reward_prompt_file=PATH"):
        prompt_files.load_source("rtdmd:demo/bad.jsonl", "--set base.reward_prompt_file")


def test_local_files_and_bad_sources(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n a dog \n", encoding="utf-8")
    assert prompt_files.load_source(str(txt), "--set base.prompt_file") == ["a cat", "a dog"]
    with pytest.raises(UserError, match="unknown prompt set 'rtdmd:nope.txt'"):
        prompt_files.load_source("rtdmd:nope.txt", "--set base.prompt_file")
    with pytest.raises(UserError, match="does not exist: fix --set base.prompt_file"):
        prompt_files.load_source(str(tmp_path / "missing.txt"), "--set base.prompt_file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "counting"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="prompt"):
        prompt_files.load_source(str(bad), "--set base.reward_prompt_file")


def test_real_bases_default_to_the_official_sets_and_tiny_bases_to_their_list():
    from rtdmd_bench.bases.diffusers_sd3 import SD3, TinySD3

    assert SD3.Config().prompt_file == "rtdmd:pickscore/train.txt"  # official stage 1
    assert SD3.Config().reward_prompt_file == "rtdmd:geneval/train_metadata.jsonl"  # official stage 2
    assert set(prompt_files.TRAINING) >= {SD3.Config().prompt_file, SD3.Config().reward_prompt_file}
    tiny = TinySD3(TinySD3.Config())
    assert tiny.reward_prompts() == tiny.train_prompts()


def test_draws_use_the_step_seed_and_the_named_set():
    pools = PromptPools({"distill": lambda: ["d0", "d1", "d2"], "reward": lambda: ["r0", "r1", "r2", "r3"]})
    batch = Batch(draw_prompts(pools.get("distill"), 8, 11), seed=5, pools=pools, draw_seed=11)
    # Independent formula: torch.randint with a generator seeded by the draw seed.
    import torch
    idx = torch.randint(4, (6,), generator=torch.Generator().manual_seed(11)).tolist()
    assert batch.draw("reward", 6) == [f"r{i}" for i in idx]
    rewarded = batch.for_rewards()
    assert len(rewarded.prompts) == 8 and set(rewarded.prompts) <= {"r0", "r1", "r2", "r3"}
    assert rewarded.seed == batch.seed  # the same noise draws, other prompts
    # One prompt set (CPU bases): the reward draw is the distillation draw, so results do not move.
    same = PromptPools({"distill": lambda: ["a", "b", "c"], "reward": lambda: ["a", "b", "c"]})
    b2 = Batch(draw_prompts(same.get("distill"), 8, 3), seed=1, pools=same, draw_seed=3)
    assert b2.for_rewards().prompts == b2.prompts and b2.draw("reward", 4) == b2.prompts[:4]
    with pytest.raises(UserError, match="train.batch_size"):
        Batch(["a", "b"], seed=1).draw("reward", 3)  # without pools: the batch's own prompts
