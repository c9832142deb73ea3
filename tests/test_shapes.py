"""The `shapes` world: renderer, prompts and their split, the rule-based evaluator with GenEval's
rules, and the exact reward, on hand-built scenes whose expected values are worked out by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import TAGS
from rtdmd_bench.rewards.shapes import ShapesPartial, check_images
from rtdmd_bench.shapes.detect import detect, evaluator_accuracy, verdict
from rtdmd_bench.shapes.nets import tokenize, vocabulary
from rtdmd_bench.shapes.scenes import (
    EVAL_PROMPTS_PER_TAG, SceneObject, all_rows, metadata_of, render, scene_for, split_rows, training_pairs,
)

# Hand-built scenes: centres at pixel corners (x.0), radius 3.
RED_CIRCLE_LEFT = SceneObject("circle", "red", 6.0, 12.0, 3.0)
BLUE_SQUARE_RIGHT = SceneObject("square", "blue", 18.0, 12.0, 3.0)
RED_SQUARE_RIGHT = SceneObject("square", "red", 18.0, 12.0, 3.0)
THREE_TRIANGLES = [SceneObject("triangle", c, x, 12.0, 3.2) for c, x in (("green", 5.0), ("yellow", 12.0), ("white", 19.0))]


def test_render_is_deterministic_and_draws_the_square_by_hand():
    scene = [SceneObject("square", "red", 12.0, 12.0, 4.0)]
    a, b = render(scene), render(scene)
    assert torch.equal(a, b) and a.shape == (3, 24, 24) and a.dtype == torch.float32
    # Half-side 0.85 * 4 = 3.4: pixel centres 8.5..15.5 within [8.6, 15.4] are 9.5..14.5, i.e. pixels 9..14.
    expected = np.zeros((24, 24, 3), dtype=np.float32)
    expected[9:15, 9:15] = (1.0, 0.0, 0.0)
    assert np.array_equal(a.permute(1, 2, 0).numpy(), expected)


def test_scene_sampling_and_training_pairs_are_deterministic_in_their_seed():
    x1, p1 = training_pairs(12, 3)
    x2, p2 = training_pairs(12, 3)
    x3, _ = training_pairs(12, 4)
    assert torch.equal(x1, x2) and p1 == p2 and not torch.equal(x1, x3)
    assert x1.shape == (12, 3, 24, 24)


def test_prompts_follow_geneval_templates_and_train_eval_are_disjoint():
    rows = all_rows()
    # 3 shapes, 5 colours, 4 relations: 3 + 3*2 + 3*3 + 5*3 + 6*4 + 6*5*4 prompts.
    assert len(rows) == 3 + 6 + 9 + 15 + 24 + 120
    assert len({r["prompt"] for r in rows}) == len(rows)
    train, held = split_rows("train"), split_rows("eval")
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert len(train) + len(held) == len(rows)
    for tag in TAGS:
        assert sum(r["tag"] == tag for r in held) == EVAL_PROMPTS_PER_TAG[tag]
    assert not any(r["tag"] == "single_object" for r in train)  # as GenEval: all single-object prompts evaluate
    assert metadata_of("a photo of three squares") == {
        "tag": "counting", "include": [{"class": "square", "count": 3}], "exclude": [{"class": "square", "count": 4}],
        "prompt": "a photo of three squares"}
    assert metadata_of("a photo of a circle left of a square")["include"] == [
        {"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]
    with pytest.raises(UserError, match="not a shapes prompt"):
        metadata_of("a photo of a cat")


def test_tokenize_pads_and_names_unknown_words():
    ids = tokenize(["a photo of a red circle", ""])
    vocab = vocabulary()
    assert [vocab[i] for i in ids[0, :6].tolist()] == ["a", "photo", "of", "a", "red", "circle"]
    assert ids[0, 6:].eq(0).all() and ids[1].eq(0).all()
    with pytest.raises(UserError, match="unknown words cat"):
        tokenize(["a photo of a cat"])


def test_detector_reads_hand_built_scenes():
    dets = detect(render([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]))
    assert sorted((d.cls, d.colour) for d in dets) == [("circle", "red"), ("square", "blue")]
    circle = next(d for d in dets if d.cls == "circle")
    # Radius 3 around (6, 12) at pixel centres: columns 3..8 and rows 9..14 -> box (3, 9, 9, 15).
    assert circle.box == (3.0, 9.0, 9.0, 15.0)
    assert sorted((d.cls, d.colour) for d in detect(render(THREE_TRIANGLES))) == [
        ("triangle", "green"), ("triangle", "white"), ("triangle", "yellow")]


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of a circle left of a square", True),
    ("a photo of a circle right of a square", False),
    ("a photo of a square right of a circle", True),
    ("a photo of a circle above a square", False),  # same row: no vertical relation
    ("a photo of a red circle and a blue square", True),
    ("a photo of a blue circle and a red square", False),
    ("a photo of a circle and a square", True),
    ("a photo of a circle and a triangle", False),
    ("a photo of a red circle", True),
    ("a photo of a green circle", False),
    ("a photo of two circles", False),
])
def test_geneval_rules_give_the_verdicts_worked_out_by_hand(prompt, expected):
    dets = detect(render([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT]))
    assert verdict(dets, metadata_of(prompt)) is expected


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of three triangles", True),
    ("a photo of two triangles", False),  # exclude clause: 3 >= 3 found
    ("a photo of four triangles", False),
])
def test_counting_verdicts_by_hand(prompt, expected):
    assert verdict(detect(render(THREE_TRIANGLES)), metadata_of(prompt)) is expected


@pytest.mark.parametrize("scene, prompt, rtdmd, clauses", [
    # Correct image: every term 1.
    ([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], "a photo of a red circle and a blue square", 1.0, 1.0),
    # Square red, not blue: terms circle count 1, red 1, square count 1, colour 1 - |1 - 0| / 1 = 0 -> 3/4;
    # clauses: 3 of 4 met.
    ([RED_CIRCLE_LEFT, RED_SQUARE_RIGHT], "a photo of a red circle and a blue square", 0.75, 0.75),
    # Three triangles for "two": RTDMD count term 1 - |2 - 3| / 2 = 0.5; clauses: include met, exclude (>= 3) failed.
    (THREE_TRIANGLES, "a photo of two triangles", 0.5, 0.5),
    # Wrong side: RTDMD terms square 1, circle count 1, then a failing pair appends 0 and the loop's 1
    # -> 3/4 (the official quirk); clauses: square, circle, position -> 2/3.
    ([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], "a photo of a circle right of a square", 0.75, 2 / 3),
    # Nothing asked is present: count term 0 -> 0 in both forms.
    ([RED_CIRCLE_LEFT], "a photo of a triangle", 0.0, 0.0),
])
def test_exact_reward_on_hand_built_scenes(scene, prompt, rtdmd, clauses):
    images = render(scene)[None]
    got = ShapesPartial()(images, [prompt])
    assert got.shape == (1,) and got.item() == pytest.approx(rtdmd)
    got = ShapesPartial(ShapesPartial.Config(form="clauses"))(images, [prompt])
    assert got.item() == pytest.approx(clauses)
    assert not ShapesPartial.differentiable


def test_rewards_refuse_images_of_another_base():
    with pytest.raises(UserError, match="--base shapes"):
        check_images(torch.zeros(2, 3, 8, 8), ["a", "b"], "shapes-partial")


def test_evaluator_agrees_with_the_true_objects_on_at_least_98_percent_of_held_out_renders():
    acc = evaluator_accuracy(n_scenes=300)
    assert acc["verdict_accuracy"] >= 0.98, acc
    assert acc["scene_accuracy"] >= 0.98, acc


def test_sampled_scenes_satisfy_their_prompt_under_the_evaluator():
    rng = random.Random(7)
    for row in split_rows("eval"):
        assert verdict(detect(render(scene_for(row, rng))), row), row["prompt"]


def test_noise_is_no_object_so_it_cannot_pass_by_chance():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert detect(torch.rand(3, 24, 24, generator=gen)) == []
    assert not verdict(detect(torch.rand(3, 24, 24, generator=gen)), metadata_of("a photo of a circle and a square"))


def test_slot_codes_decode_to_the_scene_the_detector_reads():
    from rtdmd_bench.shapes.slots import LATENT_SHAPE, decode_slots, encode_scene

    # Square of radius 3.5 (half-side 2.975): no pixel centre lies within 0.1 px of its edges.
    square = SceneObject("square", "blue", 18.0, 12.0, 3.5)
    z = encode_scene([RED_CIRCLE_LEFT, square], random.Random(0))
    assert z.shape == LATENT_SHAPE == (4, 12)
    assert sorted(z[:, 0].tolist()) == [-1.0, -1.0, 1.0, 1.0]  # two present slots
    image = decode_slots(z[None])[0]
    # The soft renderer covers the pixels the hard one fills (above the detector's 0.4), no others.
    assert torch.equal(image.amax(0) > 0.4, render([RED_CIRCLE_LEFT, square]).amax(0) > 0.4)
    assert verdict(detect(image), metadata_of("a photo of a circle left of a square"))
    assert sorted((d.cls, d.colour) for d in detect(image)) == [("circle", "red"), ("square", "blue")]


def test_decoding_is_differentiable_in_every_slot_feature():
    from rtdmd_bench.shapes.slots import decode_slots, encode_scene

    z = encode_scene([RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT], random.Random(0))[None].requires_grad_(True)
    decode_slots(z).sum().backward()
    present = z[0, :, 0] > 0
    assert (z.grad[0, present].abs().sum(0) > 0).all()


def test_evaluator_reads_decoded_slot_codes_at_least_98_percent_right():
    acc = evaluator_accuracy(n_scenes=200, noise_std=0.0, source="decoded")
    assert acc["verdict_accuracy"] >= 0.98, acc
