"""GenEval partial-credit reward on synthetic detections (no detector model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import Detection, select_detections
from rtdmd_bench.rewards.geneval_partial import GenevalPartial, clause_fraction, rtdmd_partial_credit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGE = torch.zeros(3, 100, 100)


def det(cls: str, box=(10, 10, 20, 20), score: float = 0.95) -> Detection:
    return Detection(cls, score, tuple(float(v) for v in box))


def colours(mapping: dict[tuple, str]):
    """Colour classifier stand-in: colour by box, recording the calls."""
    calls = []

    def fn(image, detections, cls):
        calls.append((cls, len(detections)))
        return [mapping.get(d.box, "white") for d in detections]
    fn.calls = calls
    return fn


NO_COLOUR = colours({})
LEFT, RIGHT = (0, 40, 20, 60), (80, 40, 100, 60)


def score(dets, meta, fn=NO_COLOUR, form=rtdmd_partial_credit):
    return form(IMAGE, select_detections(dets, meta["tag"]), meta, fn)


def test_single_object_and_counts():
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert score([det("cat")], meta) == (1.0, True)
    assert score([], meta) == (0.0, False)
    assert score([det("cat", score=0.2)], meta) == (0.0, False)  # below the 0.3 threshold
    # RTDMD's count term uses every kept detection: 3 cats for 1 -> 1 - 2/1 = -1 (official).
    assert score([det("cat"), det("cat"), det("cat")], meta) == (-1.0, False)


def test_counting_uses_the_09_threshold_and_partial_count_credit():
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 4}]}
    four = [det("dog", score=0.95) for _ in range(3)] + [det("dog", score=0.8)]
    assert score(four, meta) == (0.75, False)  # the 0.8 one is dropped under counting
    assert score(four[:3] + [det("dog", score=0.91)], meta) == (1.0, True)


def test_two_objects_missing_one():
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert score([det("cat")], meta) == (0.5, False)


def test_colour_terms():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert score([det("car", box=LEFT)], meta, colours({LEFT: "red"})) == (1.0, True)
    assert score([det("car", box=LEFT)], meta, colours({LEFT: "blue"})) == (0.5, False)
    fn = colours({})
    assert score([], meta, fn) == (0.0, False)  # count 0 and attribute 0; no colour call
    assert fn.calls == []


def position_meta(relation: str) -> dict:
    return {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": [relation, 0]}]}


def test_position_terms_including_official_quirk():
    cat_left, dog_right = det("cat", LEFT), det("dog", RIGHT)
    assert score([cat_left, dog_right], position_meta("left of")) == (1.0, True)
    # failed relation: the official loop appends 0 and then 1 -> terms [1, 1, 0, 1]
    assert score([cat_left, dog_right], position_meta("right of")) == (0.75, False)
    # target group missing: terms [0 (dog count), 1 (cat count), 0 (position)]
    assert score([cat_left], position_meta("left of")) == pytest.approx((1 / 3, False))


def test_position_margin_makes_overlapping_objects_unrelated():
    near_a, near_b = det("cat", (40, 40, 60, 60)), det("dog", (45, 40, 65, 60))
    assert score([near_a, near_b], position_meta("left of"))[1] is False


def test_clause_fraction_form():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "bench", "count": 1, "color": "blue"}],
            "exclude": [{"class": "dog", "count": 1}]}
    fn = colours({LEFT: "red", RIGHT: "green"})
    frac, ok = score([det("car", LEFT), det("bench", RIGHT)], meta, fn, clause_fraction)
    assert (frac, ok) == (pytest.approx(4 / 5), False)  # 2 counts + red car + no dog; blue bench fails
    frac, ok = score([det("car", LEFT), det("bench", RIGHT), det("dog")], meta, fn, clause_fraction)
    assert frac == pytest.approx(3 / 5)
    # GenEval semantics: more than `count` found still satisfies the count clause
    single = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert score([det("cat"), det("cat")], single, NO_COLOUR, clause_fraction) == (1.0, True)


class BoxesDetector:
    """Synthetic detector: fixed detections per image index."""

    def __init__(self, per_image):
        self.per_image = per_image

    def detect(self, images):
        return [self.per_image[i % len(self.per_image)] for i in range(images.shape[0])]


def write_metadata(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
        {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
         "prompt": "a photo of a cat and a dog"}]


def test_reward_end_to_end_with_injected_models(tmp_path):
    meta = write_metadata(tmp_path / "train.jsonl", ROWS)
    reward = GenevalPartial(GenevalPartial.Config(metadata_path=str(meta)),
                            detector=BoxesDetector([[det("cat")]]), colour_fn=NO_COLOUR)
    assert not reward.differentiable and "injected" in reward.name
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    out = reward(x, ["a photo of a cat", "a photo of a cat and a dog", "a photo of a cat"])
    assert out.shape == (3,) and out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5, 1.0]))
    with pytest.raises(UserError, match="no metadata for prompt"):
        reward(x[:1], ["an unseen prompt"])


def test_reward_needs_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv("RTDMD_BENCH_GENEVAL_TRAIN_METADATA", raising=False)
    with pytest.raises(UserError, match="metadata_path"):
        GenevalPartial()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        GenevalPartial(GenevalPartial.Config(metadata_path=str(bad)))


def test_training_prompts_must_be_disjoint_from_evaluation():
    evaluation = DATA / "geneval" / "evaluation_metadata.jsonl"
    if not evaluation.is_file():
        pytest.skip("../shared/data is absent")
    with pytest.raises(UserError, match="disjoint"):
        GenevalPartial(GenevalPartial.Config(metadata_path=str(evaluation), disjoint_from=str(evaluation)))


@pytest.mark.slow
def test_stand_in_models_run_end_to_end(tmp_path):
    from rtdmd_bench import registry

    meta = write_metadata(tmp_path / "train.jsonl", ROWS)
    cls = registry.resolve("rewards", "tiny-geneval-partial")
    reward = cls(cls.Config(metadata_path=str(meta)))
    assert "stand-in" in reward.name
    out = reward(torch.rand(2, 3, 64, 64), [r["prompt"] for r in ROWS])
    assert out.shape == (2,) and torch.isfinite(out).all()
    again = cls(cls.Config(metadata_path=str(meta), form="clauses"))
    assert again._models()[0] is reward._models()[0]  # models cached per process


def test_training_prompts_follow_geneval_templates_and_stay_disjoint():
    from rtdmd_bench.rewards.geneval_partial import load_metadata, training_metadata

    evaluation = DATA / "geneval" / "evaluation_metadata.jsonl"
    if not evaluation.is_file():
        pytest.skip("../shared/data is absent")
    official = load_metadata(evaluation)
    drawn = training_metadata(3000, seed=0, exclude=set())
    assert len({r["prompt"] for r in drawn}) == 3000
    same = [r for r in drawn if r["prompt"] in official]
    assert all(r == official[r["prompt"]] for r in same)  # same prompt -> same metadata, key for key
    assert {r["tag"] for r in same} >= {"single_object", "counting", "colors"}
    disjoint = training_metadata(500, seed=1, exclude=set(official))
    assert not {r["prompt"] for r in disjoint} & set(official)
    assert training_metadata(10, seed=1, exclude=set()) == training_metadata(10, seed=1, exclude=set())


def test_prepare_geneval_train_writes_rows_disjoint_from_the_excluded_file(tmp_path):
    """`rtdmd-bench prepare geneval-train` (the one CLI; it replaced `python -m
    rtdmd_bench.rewards.geneval_partial`) writes the seeded draw, skipping the excluded prompts."""
    from typer.testing import CliRunner

    from rtdmd_bench.cli import app
    from rtdmd_bench.rewards.geneval_partial import load_metadata, training_metadata

    unexcluded = training_metadata(12, seed=3, exclude=set())
    evaluation = write_metadata(tmp_path / "evaluation.jsonl", unexcluded[:4])  # the first four drawn
    out = tmp_path / "new" / "train.jsonl"
    args = ["prepare", "geneval-train", "--out", str(out), "--n", "12", "--seed", "3", "--exclude", str(evaluation)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"wrote 12 GenEval-style training prompts to {out}" in res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == 12 and not set(prompts) & {r["prompt"] for r in unexcluded[:4]}
    assert rows == training_metadata(12, seed=3, exclude={r["prompt"] for r in unexcluded[:4]})
    assert load_metadata(out) == {r["prompt"]: r for r in rows}  # what the reward's metadata_path reads


@pytest.mark.parametrize("args,message", [
    (["prepare", "geneval-train"], "needs --out FILE"),
    (["prepare", "geneval-train", "--out", "OUT", "--exclude", "MISSING"], "is not a file"),
])  # an unknown WHAT is now a usage error of the Literal argument (tests/test_wrong_inputs.py, invalid-prepare)
def test_prepare_refuses_bad_input_with_a_message(tmp_path, args, message):
    from typer.testing import CliRunner

    from rtdmd_bench.cli import app

    args = [str(tmp_path / a) if a in ("OUT", "MISSING") else a for a in args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and isinstance(res.exception, UserError) and message in str(res.exception)
    assert not (tmp_path / "OUT").exists()


def test_official_models_fail_cleanly_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    meta = write_metadata(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(UserError, match="mask2former|Mask2Former|detector"):
        GenevalPartial(GenevalPartial.Config(metadata_path=str(meta), detector_path=str(tmp_path / "none"),
                                             allow_download=False))
