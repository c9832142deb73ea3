"""The GenEval suite: scoring through injected fake models, detector post-processing, stand-in
models end to end on the real prompt file, clean failures without weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.geneval.models import (DetectorSettings, detections_from_outputs, geneval_labels, mask_boxes,
                                        resize_for_detector, resolve_clip_precision)
from rtdmd_bench.geneval.rules import CLASSES, COLORS, Detection
from suites.geneval import GenEval

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENEVAL_FILE = DATA / "geneval" / "evaluation_metadata.jsonl"
META = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]


def d(cls, score, x0=0):
    return Detection(cls, score, (float(x0), 0.0, float(x0) + 10, 10.0), None)


# per image, prompt-major (4 images per prompt)
DETECTIONS = [
    [d("cat", 0.9)], [d("cat", 0.2)], [], [d("cat", 0.5), d("dog", 0.9)],  # 0.2 and [] fail -> 2/4
    [d("clock", 0.95), d("clock", 0.95)], [d("clock", 0.95), d("clock", 0.8)],
    [d("clock", 0.95)] * 3, [d("clock", 0.95), d("clock", 0.92), d("cat", 0.99)],  # 2/4
    [d("car", 0.9, COLORS.index("red"))], [d("car", 0.9, COLORS.index("blue"))],
    [d("car", 0.9, COLORS.index("red"))], [d("car", 0.9, COLORS.index("red"))],  # 3/4
]


class FakeDetector:
    """Returns DETECTIONS by image index, read from the image's first pixel."""

    def detect(self, images):
        return [DETECTIONS[int(round(float(img[0, 0, 0]) * 255))] for img in images]


def colour_from_x0(image, dets, cls):
    return [COLORS[int(det.box[0])] for det in dets]


@pytest.fixture()
def meta_file(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in META))
    return path


def indexed_images(n):
    x = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.arange(n) / 255  # the fake detector's index
    return x


def test_score_per_tag_overall_and_labelling(meta_file):
    results = []
    for batch_size in (3, 8):
        suite = GenEval(GenEval.Config(prompts=str(meta_file), batch_size=batch_size), detector=FakeDetector(),
                        colour_fn=colour_from_x0)
        results.append(suite.score(indexed_images(12), suite.prompts(), None))
    r = results[0]
    assert r["single_object"] == pytest.approx(0.5)
    assert r["counting"] == pytest.approx(0.5)
    assert r["colors"] == pytest.approx(0.75)
    assert r["overall"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert r["correct_images"] == pytest.approx(7 / 12)
    assert r["correct_prompts"] == 1.0  # every prompt has a correct image
    assert r["prompts_all_images_correct"] == 0.0  # none has all four
    assert r["suite"] == "geneval[stand-in]" and r["version"] == "geneval/stand-in-2" and "STAND-IN" in r["note"]
    assert (r["device"], r["clip_precision"], r["clip_activation"]) == ("cpu", "fp32", "quick_gelu")
    assert r["n_images"] == 12 and r["n_prompts"] == 3
    assert r["partial"] and r["images_per_prompt"] == 4 and len(r["failures"]) == 12 - 7
    failed = {f["index"] for f in r["failures"]}  # per image for paired comparisons: 1.0 = correct
    assert r["per_image"]["correct_images"] == [0.0 if i in failed else 1.0 for i in range(12)]
    assert {k: v for k, v in results[1].items()} == r  # batch size does not change anything
    suite = GenEval(GenEval.Config(prompts=str(meta_file)), detector=FakeDetector(), colour_fn=colour_from_x0)
    metric_keys = {k for k, v in r.items() if isinstance(v, float)}
    assert metric_keys <= set(suite.higher_is_better) and all(suite.higher_is_better.values())


def test_score_checks_order_and_count(meta_file):
    suite = GenEval(GenEval.Config(prompts=str(meta_file)), detector=FakeDetector(), colour_fn=colour_from_x0)
    prompts = suite.prompts()
    with pytest.raises(UserError, match="4 images per prompt"):
        suite.score(indexed_images(11), prompts, None)
    with pytest.raises(UserError, match="order"):
        suite.score(indexed_images(12), list(reversed(prompts)), None)


def test_clip_precision_resolves_from_the_device():
    # official: fp16 autocast on CUDA (clip_benchmark amp=True); the CPU stays fp32
    assert resolve_clip_precision("auto", "cuda") == "fp16-autocast"
    assert resolve_clip_precision("auto", "cpu") == "fp32"
    assert resolve_clip_precision("fp32", "cuda") == "fp32"
    assert resolve_clip_precision("fp16-autocast", "cuda") == "fp16-autocast"
    with pytest.raises(UserError, match="needs CUDA"):
        resolve_clip_precision("fp16-autocast", "cpu")


def test_clip_precision_override_and_result_field(meta_file):
    def run(**overrides):
        cfg = GenEval.Config(prompts=str(meta_file), **{"device": "cpu", **overrides})
        suite = GenEval(cfg, detector=FakeDetector(), colour_fn=colour_from_x0)
        return suite.score(indexed_images(12), suite.prompts(), None)

    assert run(clip_precision="fp32")["clip_precision"] == "fp32"
    assert run()["clip_precision"] == "fp32"  # auto on the CPU
    with pytest.raises(UserError, match="clip_precision"):
        run(clip_precision="fp16-autocast")  # refused before any image is judged
    with pytest.raises(UserError, match="suite.device"):
        run(device="not-a-device")


def test_official_configuration_is_named_apart_from_mmdet_geneval():
    suite = registry.resolve("suites", "geneval")()
    assert suite.name == "geneval" and suite.version == "geneval/transformers-m2f-2"
    assert GenEval(GenEval.Config(models="stand-in")).name == "geneval[stand-in]"


# --- detector post-processing ------------------------------------------------------------

def test_mask_boxes_follow_mmdet_mask2bbox():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_detections_from_outputs_scores_boxes_and_labels():
    labels = ("cat", "dog", "cup")
    class_logits = torch.tensor([[0.0, 8.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])  # (Q=2, C+1)
    mask_logits = torch.full((2, 4, 4), -20.0)
    mask_logits[0, :2, :2] = 20.0  # query 0: top-left quarter
    dets = detections_from_outputs(class_logits, mask_logits, labels, (16, 16), (16, 16), (16, 16))
    assert len(dets) == 6  # all (query, class) pairs when fewer than 100
    assert [x.score for x in dets] == sorted((x.score for x in dets), reverse=True)
    top = dets[0]
    p_dog = float(class_logits[0].softmax(-1)[1])
    # score = class prob x mean mask prob inside the binary mask (~1 but for the soft border)
    assert top.cls == "dog" and p_dog * 0.98 < top.score < p_dog
    assert top.box == (0.0, 0.0, 8.0, 8.0) and top.mask.shape == (16, 16)
    assert int(top.mask.sum()) == 63  # bilinear upsampling rounds off the inner corner pixel
    # query 1's mask is empty: its mask score, and so its score, is 0
    assert all(x.score == pytest.approx(0.0, abs=1e-6) for x in dets if x.box == (0.0, 0.0, 0.0, 0.0))


def test_detections_drop_padding_and_rescale_to_the_image():
    class_logits = torch.tensor([[9.0, 0.0]])
    mask_logits = torch.full((1, 8, 8), -20.0)  # padded input 32x32, real content 32x16 (left half)
    mask_logits[0, :, 2:4] = 20.0  # columns 8..15 of the padded input = right half of the content
    (det,) = detections_from_outputs(class_logits, mask_logits, ("cat",), (32, 32), (32, 16), (64, 32))
    assert det.mask.shape == (64, 32)
    x0, y0, x1, y1 = det.box
    assert (y0, y1) == (0.0, 64.0) and 14 <= x0 <= 18 and x1 == 32.0


def test_resize_for_detector_follows_the_test_pipeline():
    s = DetectorSettings()
    pixels, resized = resize_for_detector(torch.full((1, 3, 512, 512), 0.5), s)
    assert resized == (800, 800) and pixels.shape == (1, 3, 800, 800)
    pixels, resized = resize_for_detector(torch.zeros(1, 3, 300, 600), s)
    assert resized == (667, 1333) and pixels.shape == (1, 3, 672, 1344)
    assert torch.allclose(pixels[0, :, 0, 0], -torch.tensor([123.675, 116.28, 103.53]) / torch.tensor([58.395, 57.12, 57.375]))
    assert float(pixels[0, :, 670, 1340].abs().sum()) == 0.0  # padding


def test_labels_in_geneval_spelling():
    coco = list(CLASSES)
    coco[coco.index("computer mouse")], coco[coco.index("tv remote")] = "mouse", "remote"
    coco[coco.index("computer keyboard")] = "keyboard"
    assert geneval_labels(dict(enumerate(coco))) == CLASSES
    with pytest.raises(UserError, match="COCO"):
        geneval_labels({i: f"LABEL_{i}" for i in range(80)})


# --- real models: stand-ins end to end, clean failure without weights ----------------------

@pytest.mark.slow
def test_stand_in_models_end_to_end_on_the_real_prompt_file():
    if not GENEVAL_FILE.is_file():
        pytest.skip("../shared/data is absent")
    suite = GenEval(GenEval.Config(prompts=str(GENEVAL_FILE), models="stand-in", limit=2, batch_size=4))
    prompts = suite.prompts()
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = suite.score(x, prompts, None)
    assert result["suite"] == "geneval[stand-in]" and 0.0 <= result["overall"] <= 1.0
    detector, colour = suite.models()
    dets = detector.detect(x[:2])
    assert len(dets) == 2 and all(det.cls in CLASSES and det.mask.shape == (64, 64) for det in dets[0])
    crop_det = Detection("cat", 0.9, (4.0, 4.0, 40.0, 30.0), dets[0][0].mask)
    assert colour(x[0], [crop_det, crop_det], "cat")[0] in COLORS


@pytest.mark.slow
def test_official_models_fail_cleanly_without_weights(tmp_path):
    suite = GenEval(GenEval.Config(detector_path=str(tmp_path / "m2f"), clip_path=str(tmp_path / "clip.pt")))
    with pytest.raises(UserError, match="mask2former-swin-small-coco-instance"):
        suite.models()
    from rtdmd_bench.geneval.models import load_clip

    with pytest.raises(UserError, match="clip_path"):
        load_clip(str(tmp_path / "clip.pt"), "quick_gelu")


def test_official_layout_round_trip(tmp_path):
    from suites.geneval import read_official_layout, write_official_layout

    x = (torch.rand(8, 3, 6, 5, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    write_official_layout(x, META[:2], tmp_path)
    assert (tmp_path / "00001" / "samples" / "0003.png").is_file()
    images, rows = read_official_layout(tmp_path)
    assert rows == META[:2] and torch.allclose(images, x, atol=1e-6)
    with pytest.raises(UserError):
        write_official_layout(x[:7], META[:2], tmp_path / "bad")


@pytest.mark.slow
@pytest.mark.parametrize("size", [(120, 200), (600, 1000)])
def test_colour_crop_preprocessing_matches_open_clips_pil_transform(size):
    """Our transform vs open_clip's own eval transform (PIL bicubic) on the same 8-bit image:
    identical, bit for bit."""
    import numpy as np
    import open_clip
    from PIL import Image

    from rtdmd_bench.geneval.rules import clip_preprocess

    small = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False)[0]
    x = (x * 255).round() / 255
    pil = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    reference = open_clip.image_transform(224, is_train=False, mean=(0.48145466, 0.4578275, 0.40821073),
                                          std=(0.26862954, 0.26130258, 0.27577711))(pil)
    ours = clip_preprocess(x, 224)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert torch.equal(ours, reference)
