"""The shapes-geneval suite on images whose verdicts are known by construction: renders of each
evaluation prompt (all correct), then with every position prompt's images blanked (all wrong)."""

from __future__ import annotations

import random

import pytest
import torch

from rtdmd_bench.shapes.nets import ProxyConfig
from rtdmd_bench.shapes.scenes import render, scene_for
from suites.shapes import ShapesGenEval, ShapesSuiteConfig

TINY_PROXY = ProxyConfig(train_steps=5, dataset_size=64, held_out_size=16, channels=8, feature_dim=8)


@pytest.fixture(scope="module")
def suite_and_renders():
    suite = ShapesGenEval(ShapesSuiteConfig(images_per_prompt=2, proxy=TINY_PROXY))
    rng = random.Random(5)
    images = torch.stack([render(scene_for(r, rng)) for r in suite.rows for _ in range(2)])
    return suite, images


def test_renders_of_every_prompt_score_one_on_every_figure(suite_and_renders):
    suite, images = suite_and_renders
    out = suite.score(images, suite.prompts(), None)
    for key in ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall",
                "correct_images", "correct_prompts", "prompts_all_images_correct"):
        assert out[key] == 1.0, key
    assert out["reward"]["shapes-partial"] == 1.0
    assert 0.0 < out["reward"]["shapes-proxy"] < 1.0
    assert out["diversity"] > 0 and out["fid"] >= 0 and "fid_t skipped" in out["note"]


def test_blank_position_images_fail_that_tag_only(suite_and_renders):
    suite, images = suite_and_renders
    images = images.clone()
    tags = [r["tag"] for r in suite.rows for _ in range(2)]
    for i, t in enumerate(tags):
        if t == "position":
            images[i] = 0.0
    out = suite.score(images, suite.prompts(), None)
    assert out["position"] == 0.0 and out["counting"] == 1.0
    assert out["overall"] == pytest.approx(5 / 6)  # unweighted mean of the six tags
    # 12 of 53 prompts are position prompts: 41 / 53 have a correct image.
    assert out["correct_prompts"] == pytest.approx(41 / 53)
