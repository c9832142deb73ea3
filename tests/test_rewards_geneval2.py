"""The geneval2 reward (GenEval2 Soft-TIFA with a Qwen3-VL judge) on its tiny random stand-in:
the first-token read-out against a hand computation from the stand-in's logits, the answer
variants, the geometric mean and RTDMD's -10, batching, RTDMD's fp16 cast vs GenEval2's
checkpoint dtype on a saved local folder, the missing-weights error and the VQA data checks."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from rtdmd_bench.errors import UserError
from rtdmd_bench.rewards import geneval2 as g2
from rtdmd_bench.rewards.loading import clear_model_cache

YES_Q = ["Is the backpack green?", "Yes"]
COUNT_Q = ["How many pigs are in the image?", "three"]


def images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def stand_in(**overrides) -> g2.TinyGenEval2:
    cfg = g2.TinyGenEval2.Config(**{"dtype": "float32", **overrides})
    return g2.TinyGenEval2(cfg, lookup=False)


def hand_atom(judge: g2.Judge, image: torch.Tensor, question: str, first_bytes: list[int]) -> float:
    """softmax over the vocabulary at the first generated position (float64, by hand), summed over
    the variants' first tokens. The stand-in's vocabulary is the 256 byte symbols in byte order, so a
    variant's first token id is its first byte."""
    u8 = np.round(image.permute(1, 2, 0).numpy().astype(np.float64) * 255).clip(0, 255).astype(np.uint8)
    chat = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(u8)},
                                         {"type": "text", "text": question + " Answer in one word."}]}]
    inputs = judge.processor.apply_chat_template(chat, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1].double()  # plain forward, not generate
    p = torch.exp(logits - logits.max())
    p = p / p.sum()
    return sum(float(p[b]) for b in first_bytes)


def test_readout_matches_a_hand_computation_from_the_stand_ins_logits():
    reward = stand_in()
    x = images(1)
    atoms = reward.atom_scores(x, [[YES_Q, COUNT_Q]])[0]
    yes = hand_atom(reward.judge, x[0], YES_Q[0], [ord("Y"), ord("y"), ord(" "), ord(" ")])
    # "three", "Three", " three", " Three", "3", " 3": first bytes t, T, space, space, 3, space
    count = hand_atom(reward.judge, x[0], COUNT_Q[0], [ord("t"), ord("T"), ord(" "), ord(" "), ord("3"), ord(" ")])
    assert atoms == pytest.approx([yes, count], rel=1e-5, abs=0)
    assert yes > 0 and count > 0
    # per image: the geometric mean of its atoms
    assert g2.image_score(atoms, "rtdmd") == pytest.approx(math.sqrt(yes * count), rel=1e-5)


def test_reward_call_looks_prompts_up_and_returns_the_geometric_mean(tmp_path):
    data = tmp_path / "vqa.jsonl"
    rows = [{"prompt": "a green backpack", "vqa_list": [YES_Q, COUNT_Q]}, {"prompt": "a pig", "vqa_list": [COUNT_Q]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = g2.TinyGenEval2(g2.TinyGenEval2.Config(dtype="float32", data_path=str(data)))
    x = images(2, seed=3)
    scores = reward(x, ["a pig", "a green backpack"])
    atoms = reward.atom_scores(x, [[COUNT_Q], [YES_Q, COUNT_Q]])
    assert scores.dtype == torch.float32 and scores.shape == (2,)
    expected = [atoms[0][0], (atoms[1][0] * atoms[1][1]) ** 0.5]
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UserError, match="no vqa_list for prompt 'a cat'"):
        reward(x[:1], ["a cat"])


def test_answer_variants_are_geneval2s_lists():
    assert g2.answer_variants("Is it red?", "Yes", "official") == ("Yes", "yes", " yes", " Yes")
    assert g2.answer_variants("How many dogs are there?", "seven", "official") == (
        "seven", "Seven", " seven", " Seven", "7", " 7")
    assert g2.answer_variants("How many cats?", "ten", "rtdmd")[4:] == ("10", " 10")
    # RTDMD strips and lower-cases the number word before the digit lookup; GenEval2 does not
    assert g2.digit_string(" Four", "rtdmd") == "4" and g2.digit_string(" Four", "official") == "other"
    assert g2.digit_string("many", "rtdmd") == "other"


def test_geometric_mean_zero_and_rtdmds_minus_ten():
    assert g2.image_score([0.5, 0.125], "official") == pytest.approx(0.25, abs=1e-15)
    assert g2.image_score([0.8, 0.0, 0.9], "rtdmd") == 0.0
    assert g2.image_score([0.3], "official") == pytest.approx(0.3, abs=1e-15)
    assert g2.image_score([], "rtdmd") == -10.0
    with pytest.raises(UserError, match="empty vqa_list"):
        g2.image_score([], "official")


def test_batched_atoms_equal_one_call_per_atom_and_release_reloads():
    x = images(2, seed=1)
    vqa = [[YES_Q, COUNT_Q], [COUNT_Q, ["Is the pig pink?", "Yes"], ["Are there any pigs?", "Yes"]]]
    reward = stand_in(batch_size=1)
    one = reward.atom_scores(x, vqa)
    done: list[int] = []
    four = stand_in(batch_size=4).atom_scores(x, vqa, advance=done.append)
    assert done == [4, 1]  # progress per call: 5 atoms in calls of 4 and 1
    assert reward.release() and reward.judge is None
    assert reward.atom_scores(x, vqa) == one  # released: rebuilt from its seed on the next call
    assert [len(a) for a in four] == [2, 3]
    for a, b in zip(one, four):
        assert a == pytest.approx(b, rel=1e-5)


def test_non_finite_logits_are_an_error_not_a_nan_score():
    reward = stand_in(dtype="float16", stand_in_seed=9)
    with torch.no_grad():
        reward.judge.model.lm_head.weight.fill_(float("inf"))  # as an overflow gives: inf / NaN logits
    with pytest.raises(UserError, match="NaN/inf logits in float16"):
        reward.atom_scores(images(1), [[YES_Q]])
    reward.release()


@pytest.fixture
def saved_judge(tmp_path):
    """A local judge folder as transformers 5 saves it, weights stored in bfloat16 (as Qwen's)."""
    from rtdmd_bench.rewards.tiny_vlm import tiny_qwen3vl

    model, processor = tiny_qwen3vl(seed=0)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "judge")
    processor.save_pretrained(tmp_path / "judge")
    return tmp_path / "judge"


def test_fp16_cast_is_rtdmds_and_bf16_keeps_the_checkpoint_dtype(saved_judge, monkeypatch):
    from transformers import Qwen3VLForConditionalGeneration

    monkeypatch.delenv("RTDMD_BENCH_GENEVAL2_PATH", raising=False)
    clear_model_cache()
    fp16 = g2.GenEval2(g2.GenEval2.Config(local_path=str(saved_judge), dtype="float16"), lookup=False)
    # RTDMD: from_pretrained(torch_dtype="auto") then .to(float16), buffers included
    rtdmd = Qwen3VLForConditionalGeneration.from_pretrained(str(saved_judge), dtype="auto").to(torch.float16)
    ours = dict(fp16.judge.model.state_dict(keep_vars=True), **dict(fp16.judge.model.named_buffers()))
    for name, ref in [*rtdmd.named_parameters(), *rtdmd.named_buffers()]:
        assert ours[name].dtype == ref.dtype and torch.equal(ours[name], ref), name
    assert rtdmd.model.language_model.rotary_emb.inv_freq.dtype == torch.float16
    # GenEval2: dtype="auto" (bfloat16 here), no cast: the RoPE buffers stay float32
    bf16 = g2.GenEval2(g2.GenEval2.Config(local_path=str(saved_judge), dtype="bfloat16"), lookup=False)
    assert bf16.judge.model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert next(bf16.judge.model.parameters()).dtype == torch.bfloat16
    scores = bf16.atom_scores(images(1), [[YES_Q]])
    assert 0 < scores[0][0] < 4  # four variants' probabilities
    assert bf16.release() and not bf16.release()
    clear_model_cache()


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("RTDMD_BENCH_GENEVAL2_PATH", raising=False)
    attempts: list = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: (attempts.append(addr), real_connect(self, addr)))
    clear_model_cache()
    return attempts


def test_missing_weights_give_one_clear_error(offline_empty_hub):
    with pytest.raises(UserError) as err:
        g2.GenEval2(lookup=False)
    msg = str(err.value)
    assert "Qwen/Qwen3-VL-8B-Instruct" in msg and "RTDMD_BENCH_GENEVAL2_PATH" in msg and "HF_HUB_OFFLINE" in msg
    assert "config.json" in msg and "chat_template.json" in msg and msg.count("hf download") == 1
    assert "reward.geneval2.local_path" in msg
    assert offline_empty_hub == []  # no network call


def test_missing_shards_are_named(saved_judge, offline_empty_hub):
    (saved_judge / "model.safetensors").unlink()
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}
    (saved_judge / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as err:
        g2.GenEval2(g2.GenEval2.Config(local_path=str(saved_judge)), lookup=False)
    assert "model-00001-of-00002.safetensors" in str(err.value) and "model-00002-of-00002.safetensors" in str(err.value)


def test_reward_needs_its_lookup_file(monkeypatch):
    monkeypatch.delenv("RTDMD_BENCH_GENEVAL2_DATA", raising=False)
    with pytest.raises(UserError, match="data_path=FILE"):
        g2.TinyGenEval2()
    assert "stand-in" in g2.TinyGenEval2.name and g2.GenEval2.name == "geneval2"


@pytest.mark.parametrize("line,needle", [
    ('{"vqa_list": []}', "'prompt'"),
    ('{"prompt": "a cat", "vqa_list": [["Is it a cat?"]]}', "pairs"),
    ('{"prompt": "a cat", "vqa_list": "Is it a cat?"}', "pairs"),
    ('{"prompt": "a cat", "vqa_list": [["q", "Yes"]], "skills": ["object", "count"]}', "'skills'"),
    ('{"prompt": "a cat", "vqa_list": [], "atom_count": "3"}', "'atom_count'"),
    ("not json", "not JSON"),
])
def test_malformed_vqa_lines_fail_loudly(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "vqa_list": []}\n' + line + "\n")
    with pytest.raises(UserError, match=needle) as err:
        g2.load_vqa_rows(path)
    assert f"{path}:2" in str(err.value)


def test_lookup_refuses_conflicting_duplicates():
    same = [{"prompt": "a", "vqa_list": [YES_Q]}, {"prompt": "a", "vqa_list": [YES_Q]}]
    assert g2.vqa_lookup(same, "f") == {"a": [YES_Q]}
    with pytest.raises(UserError, match="two different vqa_lists"):
        g2.vqa_lookup(same + [{"prompt": "a", "vqa_list": [COUNT_Q]}], "f")


def test_the_geneval2_file_validates(shared_data):
    rows = g2.load_vqa_rows(shared_data / "geneval2" / "test.jsonl")
    assert len(rows) == 800 and sum(len(r["vqa_list"]) for r in rows) == 6012
    assert all(r["vqa_list"] for r in rows)  # no -10 on the official file
