"""The geneval-rtdmd suite (RTDMD's GenEval column): hand-computed partial credit, accuracy and
strict accuracy over injected detections (issue 12's pinned figure), the detector's channel order,
naming, the -10 rule, model release, the prompt set's checksum, and the CLI on tiny-sd3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.rules import Detection
from rtdmd_bench.rewards import loading
from rtdmd_bench.rewards.geneval_partial import MODELS_KIND, GenevalPartial, model_settings
from suites import prompt_sets
from suites.geneval_rtdmd import GenEvalRTDMD

SIZE = 100
LEFT, MIDDLE, RIGHT = (0, 40, 20, 60), (40, 40, 60, 60), (80, 40, 100, 60)  # x0, y0, x1, y1 in a 100x100 image
WINE = {"tag": "counting", "include": [{"class": "wine glass", "count": 2}],
        "exclude": [{"class": "wine glass", "count": 3}], "prompt": "a photo of two wine glasses"}
HANDBAG = {"tag": "color_attr", "include": [{"class": "handbag", "count": 1, "color": "pink"},
                                            {"class": "scissors", "count": 1, "color": "black"}],
           "prompt": "a photo of a pink handbag and a black scissors"}
DOG_RIGHT_OF_CAT = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                                   {"class": "dog", "count": 1, "position": ["right of", 0]}],
                    "prompt": "a photo of a dog right of a cat"}
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}
COLOUR_OF = {"handbag": "pink", "scissors": "black", "car": "blue"}  # what the injected colour CLIP says


def det(cls, score=0.95, box=MIDDLE):
    return Detection(cls, score, tuple(float(v) for v in box))


def glasses(*scores):
    return [det("wine glass", s, (10 * i, 0, 10 * i + 8, 8)) for i, s in enumerate(scores)]


class FakeDetector:
    """Hands out the given detections image by image, in call order; records what it was shown."""

    def __init__(self, per_image):
        self.queue, self.seen = list(per_image), []

    def detect(self, images):
        self.seen.append(images.clone())
        out, self.queue = self.queue[: len(images)], self.queue[len(images):]
        return out


class FakeColours:
    """Colour per class (COLOUR_OF); records the images it was shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, image, detections, cls):
        self.seen.append(image.clone())
        return [COLOUR_OF[cls]] * len(detections)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def images(n):
    """Constant channels R = 10/255, G = 20/255, B = 30/255 (on the 8-bit grid)."""
    x = torch.empty(n, 3, SIZE, SIZE)
    for c, v in enumerate((10, 20, 30)):
        x[:, c] = v / 255
    return x


def run(tmp_path, rows, per_image, **cfg):
    detector, colours = FakeDetector(per_image), FakeColours()
    suite = GenEvalRTDMD(GenEvalRTDMD.Config(prompts=write_rows(tmp_path / "m.jsonl", rows), **cfg),
                         detector=detector, colour_fn=colours)
    return suite, suite.score(images(len(rows)), suite.prompts()), detector, colours


SIX_ROWS = [WINE, WINE, WINE, HANDBAG, DOG_RIGHT_OF_CAT, RED_CAR]
SIX_DETECTIONS = [
    glasses(0.95, 0.93, 0.91),  # 3 kept for 2
    glasses(0.99, 0.97, 0.95, 0.93, 0.91),  # 5 kept for 2
    glasses(0.95, 0.85),  # counting: 0.9 threshold for every class -> 1 kept
    [det("handbag", 0.8), det("scissors", 0.7, LEFT), det("scissors", 0.6, RIGHT)],  # 2 scissors for 1
    [det("dog", 0.9, LEFT), det("cat", 0.9, RIGHT)],  # the dog is LEFT of the cat
    [det("car", 0.9)],  # classified blue
]


@pytest.mark.parametrize("batch_size", [4, 64])
def test_pinned_suite_figure_from_hand_computed_detections(tmp_path, batch_size):
    suite, r, _, _ = run(tmp_path, SIX_ROWS, SIX_DETECTIONS, batch_size=batch_size)
    per_image = [
        1 - 1 / 2,  # 2 glasses asked, 3 found: 1 - |2 - 3| / 2; the exclude clause is ignored
        1 - 3 / 2,  # 5 found: 1 - |2 - 5| / 2 = -0.5, kept negative
        1 - 1 / 2,  # 0.85 < 0.9 under "counting": 1 found
        (1 + 1 + 0 + 0) / 4,  # handbag count 1, pink 1; scissors 1 - |1 - 2| / 1 = 0, then 0 for its colour
        (1 + 1 + 0 + 1) / 4,  # cat 1, dog 1, the pair fails: 0 and then the 1 of RTDMD's loop
        (1 + 0) / 2,  # car count 1, colour 1 - |1 - 0| / 1 = 0
    ]
    assert per_image == [0.5, -0.5, 0.5, 0.5, 0.75, 0.5]
    assert [i["geneval_rtdmd"] for i in r["images"]] == pytest.approx(per_image)
    assert r["geneval_rtdmd"] == pytest.approx(2.25 / 6) and r["geneval_rtdmd"] == pytest.approx(0.375)
    # GenEval's rule: only the handbag image holds (the top-1 scissors is black; no exclude clause);
    # the glasses fail their exclude clause (3 and 5 >= 3) or their count (1 < 2), the dog its
    # position, the car its colour. Strictly exact: none (3, 5, 1 glasses; 2 scissors; ...).
    assert [i["correct"] for i in r["images"]] == [False, False, False, True, False, False]
    assert [i["strict_correct"] for i in r["images"]] == [False] * 6
    # per image for paired comparisons: the hand-computed credits, and the correct images as 1.0
    assert r["per_image"]["geneval_rtdmd"] == pytest.approx(per_image)
    assert r["per_image"]["accuracy"] == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert r["accuracy"] == pytest.approx(1 / 6) and r["strict_accuracy"] == 0.0
    assert (r["counting_accuracy"], r["counting_strict_accuracy"]) == (0.0, 0.0)
    assert (r["color_attr_accuracy"], r["color_attr_strict_accuracy"]) == (1.0, 0.0)
    assert (r["position_accuracy"], r["colors_accuracy"]) == (0.0, 0.0)
    assert "single_object_accuracy" not in r and "two_object_strict_accuracy" not in r  # tags absent from the set
    assert [i["detected"] for i in r["images"][:3]] == [{"wine glass": 3}, {"wine glass": 5}, {"wine glass": 1}]
    assert r["n_images"] == r["n_prompts"] == 6 and r["partial"] and r["n_dropped_minus_ten"] == 0
    assert set(suite.higher_is_better) == {k for k in r if k.endswith("accuracy")} | {"geneval_rtdmd"}
    assert r["suite"] == "geneval-rtdmd[injected models]" and "STAND-IN" in r["note"]


def test_dog_right_of_cat_variants(tmp_path):
    rows = [DOG_RIGHT_OF_CAT] * 3  # a repeated line is scored again, against its own row
    dets = [[det("dog", 0.9, RIGHT), det("cat", 0.9, LEFT)],  # right of: all three terms 1
            [det("cat", 0.9, LEFT)],  # no dog: cat 1, dog 1 - |1 - 0| / 1 = 0, then 0 for its position
            [det("dog", 0.9, LEFT), det("cat", 0.9, RIGHT)]]
    _, r, _, _ = run(tmp_path, rows, dets)
    assert [i["geneval_rtdmd"] for i in r["images"]] == pytest.approx([1.0, 1 / 3, 0.75])
    assert r["geneval_rtdmd"] == pytest.approx((1.0 + 1 / 3 + 0.75) / 3)
    assert [i["correct"] for i in r["images"]] == [True, False, False]
    assert [i["strict_correct"] for i in r["images"]] == [True, False, False]
    assert r["position_accuracy"] == pytest.approx(1 / 3) and r["position_strict_accuracy"] == pytest.approx(1 / 3)


def test_each_line_is_scored_against_its_own_row(tmp_path):
    two_cats = {"tag": "counting", "include": [{"class": "cat", "count": 2}], "prompt": "cats"}
    one_cat = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "cats"}  # same text
    _, r, _, _ = run(tmp_path, [two_cats, one_cat], [[det("cat"), det("cat", box=LEFT)]] * 2)
    # line 1: 2 of 2 -> 1; line 2: 1 - |1 - 2| / 1 = 0 (a lookup by prompt would give one value twice)
    assert [i["geneval_rtdmd"] for i in r["images"]] == [1.0, 0.0]


def test_a_partial_credit_of_minus_ten_is_dropped_like_rtdmds_marker(tmp_path):
    cat = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    twelve = [det("cat", 0.5, (i, 0, i + 5, 5)) for i in range(12)]  # 1 - |1 - 12| / 1 = -10
    _, r, _, _ = run(tmp_path, [cat, cat], [twelve, [det("cat")]])
    assert r["geneval_rtdmd"] == 1.0 and r["n_dropped_minus_ten"] == 1  # mean of [1.0]: the -10 is dropped
    assert r["accuracy"] == 1.0 and r["strict_accuracy"] == 0.5  # 12 >= 1 is correct; only 1 == 1 is strict
    suite, kept, _, _ = run(tmp_path, [cat, cat], [twelve, [det("cat")]], minus_ten="keep")
    assert kept["geneval_rtdmd"] == (-10 + 1) / 2 and kept["n_dropped_minus_ten"] == 0
    assert suite.name == "geneval-rtdmd[injected models,keep-minus-ten]"


@pytest.mark.parametrize("channels, detector_sees", [("swapped", (30, 20, 10)), ("rgb", (10, 20, 30))])
def test_detector_channel_order_and_rgb_for_the_colour_clip(tmp_path, channels, detector_sees):
    suite, r, detector, colours = run(tmp_path, [RED_CAR, RED_CAR], [[det("car")]] * 2, detector_channels=channels,
                                      batch_size=1)
    assert len(detector.seen) == 2 and len(colours.seen) == 4  # partial credit and GenEval's rule ask once each
    for shown in detector.seen:  # (1, 3, H, W)
        assert [round(float(shown[0, c].mean()) * 255) for c in range(3)] == list(detector_sees)
    for shown in colours.seen:  # (3, H, W): always RGB
        assert [round(float(shown[c].mean()) * 255) for c in range(3)] == [10, 20, 30]
    assert r["detector_channels"] == channels
    assert suite.version.startswith(f"geneval-rtdmd/stand-in-{channels}-gelu")


def test_names_and_versions_never_say_geneval_alone():
    def made(**cfg):
        s = GenEvalRTDMD(GenEvalRTDMD.Config(**cfg))
        return s.name, s.version

    assert made() == ("geneval-rtdmd", "geneval-rtdmd/transformers-m2f-swapped-gelu-1")
    assert made(models="stand-in") == ("geneval-rtdmd[stand-in]", "geneval-rtdmd/stand-in-swapped-gelu-1")
    assert made(colour_clip_activation="quick_gelu")[0] == "geneval-rtdmd[quickgelu-clip]"
    assert made(detector_channels="rgb") == ("geneval-rtdmd[rgb-detector]", "geneval-rtdmd/transformers-m2f-rgb-gelu-1")
    assert made(models="stand-in", colour_clip_activation="quick_gelu")[1] == "geneval-rtdmd/stand-in-swapped-quickgelu-1"
    with pytest.raises(UserError, match="detector_channels"):
        GenEvalRTDMD(GenEvalRTDMD.Config(detector_channels="bgr"))
    assert registry.resolve("suites", "geneval-rtdmd") is GenEvalRTDMD
    suite = GenEvalRTDMD(GenEvalRTDMD.Config(seed=42))
    assert suite.images_per_prompt == 1 and suite.seed == 42


def test_score_checks_order_and_count(tmp_path):
    suite = GenEvalRTDMD(GenEvalRTDMD.Config(prompts=write_rows(tmp_path / "m.jsonl", [RED_CAR, WINE]), limit=1),
                         detector=FakeDetector([]), colour_fn=FakeColours())
    assert suite.prompts() == [RED_CAR["prompt"]]  # the first `limit` lines
    with pytest.raises(UserError, match="order"):
        suite.score(images(1), [WINE["prompt"]])
    with pytest.raises(UserError, match="one image per line"):
        suite.score(images(2), suite.prompts())


def test_models_come_from_the_shared_cache_and_release_frees_them():
    loading.clear_model_cache()
    cfg = GenEvalRTDMD.Config(models="stand-in")
    partial = GenevalPartial.Config(models="stand-in")
    assert model_settings(cfg) == model_settings(partial)  # the reward and the suite share the models
    suite = GenEvalRTDMD(cfg)
    detector, colour_fn = suite.models()
    assert suite.models()[0] is detector
    assert [k for k, _ in loading._MODELS] == [MODELS_KIND]
    assert suite.release() == 1 and not loading._MODELS and suite._detector is None
    assert suite.release() == 0
    injected = FakeDetector([])
    kept = GenEvalRTDMD(cfg, detector=injected, colour_fn=FakeColours())
    assert kept.release() == 0 and kept.models()[0] is injected  # injected models stay
    loading.clear_model_cache()


def test_the_registered_checksum_refuses_other_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDMD_BENCH_CACHE", str(tmp_path / "cache"))
    spec = prompt_sets.OFFICIAL["geneval-rtdmd"]
    assert spec.url == prompt_sets.RTDMD_RAW + "geneval/test_metadata.jsonl"
    stand_in = tmp_path / "test_metadata.jsonl"
    write_rows(stand_in, [RED_CAR])
    monkeypatch.setitem(prompt_sets.OFFICIAL, "geneval-rtdmd",
                        prompt_sets.OfficialFile(stand_in.as_uri(), spec.sha256, spec.filename, spec.lines))
    with pytest.raises(UserError, match="SHA-256"):
        GenEvalRTDMD().prompts()
    assert not (tmp_path / "cache" / "prompts" / spec.filename).exists()


@pytest.mark.slow
def test_cli_eval_on_tiny_sd3_with_stand_in_models(tmp_path):
    rows = [RED_CAR, WINE, RED_CAR]  # a repeated line is generated and scored again
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    args = [sys.executable, "-m", "rtdmd_bench", "eval", "--base", "tiny-sd3", "--suite", "geneval-rtdmd",
            "--out", str(tmp_path / "out"), "--batch-size", "2", "--set", "suite.models=stand-in",
            "--set", f"suite.prompts={write_rows(tmp_path / 'm.jsonl', rows)}"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list((tmp_path / "out" / "eval").glob("*.json"))
    assert [f.name for f in files] == ["geneval-rtdmd[stand-in].json"]
    res = json.loads(files[0].read_text())
    m = res["metrics"]
    assert res["suite"] == "geneval-rtdmd[stand-in]" and res["suite_version"] == "geneval-rtdmd/stand-in-swapped-gelu-1"
    assert res["num_prompts"] == 3 and res["images_per_prompt"] == 1 and res["seed"] == 42
    assert m["protocol_seed"] == m["sampling_seed"] == 42 and "STAND-IN" in m["note"] and m["partial"]
    per_image = [i["geneval_rtdmd"] for i in m["images"]]
    assert len(per_image) == 3 and m["geneval_rtdmd"] == pytest.approx(sum(per_image) / 3)
    assert m["accuracy"] == pytest.approx(sum(i["correct"] for i in m["images"]) / 3)
    assert set(res["higher_is_better"]) <= set(m)
