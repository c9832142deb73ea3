"""GenEval scoring rules on synthetic detections (rtdmd_bench/geneval/rules.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdmd_bench.geneval.rules import (COLORS, OFFICIAL, Detection, Rules, aggregate, box_iou, centre_crop_offsets,
                                      clip_preprocess, evaluate_image, masked_crop, relative_position,
                                      select_detections, shorter_side_resize)

IMAGE = torch.zeros(3, 100, 100)


def det(cls: str, score: float = 0.95, box=(10, 10, 30, 30), mask=None) -> Detection:
    return Detection(cls, score, tuple(float(v) for v in box), mask)


def judge(dets, meta, colour_fn=None):
    return evaluate_image(IMAGE, select_detections(dets, meta["tag"]), meta, colour_fn)


# --- thresholds, caps, NMS ---------------------------------------------------------------

def test_threshold_is_strict_and_counting_uses_0_9():
    dets = [det("cat", 0.3), det("cat", 0.31), det("cat", 0.9), det("cat", 0.91)]
    assert [d.score for d in select_detections(dets, "single_object")["cat"]] == [0.91, 0.9, 0.31]
    assert [d.score for d in select_detections(dets, "counting")["cat"]] == [0.91]
    # 0.9 applies to every class under counting, not only the counted one
    assert "dog" not in select_detections([det("dog", 0.85)], "counting")
    assert "dog" in select_detections([det("dog", 0.85)], "two_object")


def test_thresholds_compare_in_float32_like_the_official_numpy_code():
    # mmdet's scores are float32 and numpy casts the Python threshold to float32: a score of
    # exactly float32(0.3) = 0.30000001192092896 is NOT above it, although it is above 0.3.
    f32_03 = 0.30000001192092896
    assert f32_03 > 0.3  # a float64 comparison would keep it
    next_up = 0.30000004172325134  # float32(0.3) + 2**-25, the float32 spacing in [0.25, 0.5)
    assert select_detections([det("cat", f32_03)], "single_object") == {}
    assert [d.score for d in select_detections([det("cat", next_up)], "single_object")["cat"]] == [next_up]
    # counting: float32(0.9) = 0.8999999761581421 is not above float32(0.9); the next one is
    assert select_detections([det("cat", 0.8999999761581421)], "counting") == {}
    assert "cat" in select_detections([det("cat", 0.9000000357627869)], "counting")


def test_at_most_16_per_class_highest_first_and_nms_off():
    dets = [det("cup", 0.4 + 0.01 * i) for i in range(20)]  # identical boxes: NMS would keep one
    kept = select_detections(dets, "single_object")["cup"]
    assert len(kept) == 16
    assert kept[0].score == pytest.approx(0.59) and kept[-1].score == pytest.approx(0.44)
    with_nms = select_detections(dets, "single_object", Rules(max_overlap=0.5))["cup"]
    assert len(with_nms) == 1


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


# --- include / exclude / counting -------------------------------------------------------

def test_include_needs_top_count_detections():
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert judge([det("cat"), det("dog")], meta)[0]
    ok, reason = judge([det("cat"), det("dog", 0.2)], meta)
    assert not ok and "expected dog>=1, found 0" in reason


def test_counting_exact_count_with_exclusion():
    meta = {"tag": "counting", "include": [{"class": "clock", "count": 2}],
            "exclude": [{"class": "clock", "count": 3}]}
    assert judge([det("clock", 0.95), det("clock", 0.92)], meta)[0]
    assert not judge([det("clock", 0.95)], meta)[0]  # too few
    ok, reason = judge([det("clock", 0.95), det("clock", 0.92), det("clock", 0.91)], meta)
    assert not ok and "expected clock<3, found 3" in reason  # too many
    # a third clock under the counting threshold does not count
    assert judge([det("clock", 0.95), det("clock", 0.92), det("clock", 0.85)], meta)[0]


def test_exclusion_of_another_class():
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
            "exclude": [{"class": "dog", "count": 1}]}
    assert judge([det("cat")], meta)[0]
    assert not judge([det("cat"), det("dog", 0.5)], meta)[0]


# --- colour ------------------------------------------------------------------------------

class FakeColours:
    """Colour classifier reading the colour from each box's x0 (index into COLORS)."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, dets, cls):
        self.calls.append((cls, len(dets)))
        return [COLORS[int(d.box[0]) % len(COLORS)] for d in dets]


def test_colour_clause_uses_the_top_count_detections_only():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}]}
    fake = FakeColours()
    blue, red = COLORS.index("blue"), COLORS.index("red")
    assert judge([det("car", 0.9, (blue, 0, 50, 50)), det("car", 0.5, (red, 0, 50, 50))], meta, fake)[0]
    assert fake.calls == [("car", 1)]
    ok, reason = judge([det("car", 0.9, (red, 0, 50, 50)), det("car", 0.5, (blue, 0, 50, 50))], meta, fake)
    assert not ok and "expected blue car" in reason


def test_color_attr_binds_each_colour_to_its_class():
    meta = {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "green"},
                                             {"class": "cup", "count": 1, "color": "purple"}]}
    g, p = COLORS.index("green"), COLORS.index("purple")
    assert judge([det("bus", box=(g, 0, 9, 9)), det("cup", box=(p, 0, 9, 9))], meta, FakeColours())[0]
    assert not judge([det("bus", box=(p, 0, 9, 9)), det("cup", box=(g, 0, 9, 9))], meta, FakeColours())[0]


def test_colour_clause_without_classifier_is_an_error():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}]}
    with pytest.raises(ValueError):
        judge([det("car")], meta)


def test_masked_crop_pastes_mask_on_999_and_rounds_the_box():
    image = torch.ones(3, 10, 10)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:5, 2:4] = True
    crop = masked_crop(image, det("x", box=(1.6, 1.4, 4.4, 6.5), mask=mask))
    # Python/PIL rounding: rows round(1.4)=1 .. round(6.5)=6 (half to even), cols 2 .. 4
    assert crop.shape == (3, 5, 2)
    assert torch.all(crop[:, 1:4, :] == 1.0)  # image rows 2..4 are inside the mask
    assert torch.allclose(crop[:, 0, :], torch.full((3, 2), 0x99 / 255))
    assert torch.allclose(crop[:, 4, :], torch.full((3, 2), 0x99 / 255))


def test_clip_preprocess_shape_and_normalisation():
    grey = 128 / 255  # crops are on the 8-bit grid (the official scorer reads PNGs)
    out = clip_preprocess(torch.full((3, 30, 60), grey), size=32)
    assert out.shape == (3, 32, 32)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    expected = (torch.tensor(grey, dtype=torch.float32) - mean) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.equal(out, expected.view(3, 1, 1).expand(3, 32, 32))  # a flat image stays flat under bicubic


def test_resize_and_crop_rounding_follow_torchvision():
    # Resize(224): the longer side is int(224 * long / short), truncated: 3 x 7 -> 522.67 -> 522
    assert shorter_side_resize(3, 7, 224) == (224, 522)
    assert shorter_side_resize(7, 3, 224) == (522, 224)
    assert shorter_side_resize(100, 100, 224) == (224, 224)
    assert shorter_side_resize(224, 300, 224) == (224, 300)  # already there: no resize
    # CenterCrop: round((h - 224) / 2) with halves to even: 149.5 -> 150, 150.5 -> 150, 0.5 -> 0
    assert centre_crop_offsets(224, 523, 224) == (0, 150)
    assert centre_crop_offsets(525, 224, 224) == (150, 0)
    assert centre_crop_offsets(225, 227, 224) == (0, 2)  # 0.5 -> 0, 1.5 -> 2


def test_clip_preprocess_equals_torchvision_on_the_pil_image():
    """The official transform is torchvision Resize(224, BICUBIC) + CenterCrop(224) + ToTensor +
    Normalize on a PIL image (open_clip's eval transform): same pixels, bit for bit."""
    from PIL import Image
    from torchvision import transforms as T

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    official = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor(), T.Normalize(mean, std)])
    rng = np.random.default_rng(0)
    for h, w in [(3, 7), (7, 3), (17, 40), (41, 41), (225, 227), (300, 224), (525, 260), (1, 5)]:
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ours = clip_preprocess(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
        assert torch.equal(ours, official(Image.fromarray(pixels))), (h, w)


def test_colour_crops_equal_the_official_pil_composite_crop_and_transform():
    """48 masked crops: ours (tensor mask on #999, box rounding, PIL resize) vs the official
    ImageCrops path computed with PIL and torchvision (Image.composite with the boolean mask on
    an "#999" image, Image.crop with the float box, then the transform): identical."""
    from PIL import Image
    from torchvision import transforms as T

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    official = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor(), T.Normalize(mean, std)])
    rng = np.random.default_rng(1)
    for _ in range(48):
        H, W = (int(v) for v in rng.integers(24, 72, size=2))
        pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        x0, y0 = (float(v) for v in rng.uniform(0, [W - 8, H - 8]))
        x1, y1 = x0 + float(rng.uniform(4, W - x0)), y0 + float(rng.uniform(4, H - y0))
        box = tuple(float(np.float32(v)) for v in (x0, y0, x1, y1))  # mmdet boxes are float32
        mask = np.zeros((H, W), dtype=bool)
        inside = (slice(int(y0), int(y1) + 1), slice(int(x0), int(x1) + 1))
        mask[inside] = rng.random((H, W))[inside] < 0.6  # a ragged mask within (about) the box
        pil = Image.fromarray(pixels)
        crop = Image.composite(pil, Image.new("RGB", pil.size, color="#999"), Image.fromarray(mask)).crop(box)
        expected = official(crop)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        ours = clip_preprocess(masked_crop(image, Detection("cat", 0.9, box, torch.from_numpy(mask))))
        assert torch.equal(ours, expected), box


# --- position -----------------------------------------------------------------------------

@pytest.mark.parametrize("box_a,relations", [
    ((0, 40, 20, 60), {"left of"}),
    ((80, 40, 100, 60), {"right of"}),
    ((40, 0, 60, 20), {"above"}),  # image y grows downwards
    ((40, 80, 60, 100), {"below"}),
    ((0, 0, 20, 20), {"left of", "above"}),  # diagonal: (-36, -36) / 56.6 = -0.64 on both axes
    ((30, 0, 50, 20), {"above"}),  # offset (-10, -40): dx = -6 / 41.2 = -0.15, dy = -0.87
    ((40, 40, 60, 60), set()),  # same place: the null case
])
def test_each_relation(box_a, relations):
    b = det("b", box=(40, 40, 60, 60))
    assert relative_position(det("a", box=box_a), b) == relations


def test_margin_shrinks_the_offset_by_a_tenth_of_the_summed_dims():
    b = det("b", box=(0, 0, 10, 10))
    # centre offset dx = 5, dims 10 + 10 -> shrink 2: 3 / 5 = 0.6 > 0.5
    assert relative_position(det("a", box=(5, 0, 15, 10)), b) == {"right of"}
    assert relative_position(det("a", box=(-5, 0, 5, 10)), b) == {"left of"}
    # dx = 4: 2 / 4 = 0.5 exactly, and the comparison is strict
    assert relative_position(det("a", box=(4, 0, 14, 10)), b) == set()
    # dx = 2 exactly equals the shrink -> 0 on both axes -> no relation
    assert relative_position(det("a", box=(2, 0, 12, 10)), b) == set()
    # large boxes: the same offset 4 vanishes under a shrink of 0.1 * (40 + 40) = 8
    big_b = det("b", box=(0, 0, 40, 40))
    assert relative_position(det("a", box=(4, 0, 44, 40)), big_b) == set()


def test_normalisation_uses_the_unshrunk_offset():
    b = det("b", box=(0, 0, 10, 10))
    # offset (6, 0): shrunk dx = 4, normalised by |offset| = 6 -> 0.67 > 0.5
    assert relative_position(det("a", box=(6, 0, 16, 10)), b) == {"right of"}
    # offset (3.5, 0): shrunk 1.5 / 3.5 = 0.43 < 0.5 -> no relation although not null
    assert relative_position(det("a", box=(3.5, 0, 13.5, 10)), b) == set()
    # diagonal offset (30, 10): dx = 28/31.6 = 0.89 "right of"; dy = 8/31.6 = 0.25 nothing
    assert relative_position(det("a", box=(30, 10, 40, 20)), b) == {"right of"}
    # steeper diagonal (30, 25): dx = 0.73, dy = 23/39.05 = 0.59 -> both relations
    assert relative_position(det("a", box=(30, 25, 40, 35)), b) == {"right of", "below"}


def test_null_threshold():
    b = det("b", box=(0, 0, 10, 10))
    # degenerate point boxes 5e-4 apart: shrunk offset 5e-4 < 1e-3 -> null, although the
    # normalised offset would be 1.0
    a, p = det("a", box=(5e-4, 0, 5e-4, 0)), det("b", box=(0, 0, 0, 0))
    assert relative_position(a, p) == set()
    assert relative_position(a, p, Rules(null_offset=1e-4)) == {"right of"}
    # the null test is on the shrunk offset: a far-apart pair that the shrink cancels is null
    assert relative_position(det("a", box=(2.0005, 0, 12.0005, 10)), b) == set()


def test_position_clause_every_object_against_every_target():
    meta = {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    bear = det("teddy bear", box=(0, 40, 20, 60))
    assert judge([bear, det("dog", box=(80, 40, 100, 60))], meta)[0]
    ok, reason = judge([bear, det("dog", box=(0, 0, 20, 20))], meta)
    assert not ok and "expected dog right of target" in reason
    ok, reason = judge([det("dog", box=(80, 40, 100, 60))], meta)  # target missing
    assert not ok and "teddy bear" in reason
    # only the top-scoring dog is tested; a lower-scoring dog on the wrong side is ignored
    assert judge([bear, det("dog", 0.9, (80, 40, 100, 60)), det("dog", 0.5, (0, 0, 5, 5))], meta)[0]


def test_position_target_that_failed_its_own_colour_has_no_target():
    meta = {"tag": "position", "include": [{"class": "cat", "count": 1, "color": "red"},
                                           {"class": "dog", "count": 1, "position": ["left of", 0]}]}
    blue = COLORS.index("blue")
    ok, reason = judge([det("cat", box=(blue, 40, 60, 60)), det("dog", box=(0, 40, 5, 60))], meta, FakeColours())
    assert not ok and "no target for dog" in reason


# --- aggregation --------------------------------------------------------------------------

def test_aggregate_reports_summary_scores_figures():
    tags = ["single_object"] * 4 + ["counting"] * 8  # 1 + 2 prompts, 4 images each
    keys = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    correct = [True, True, True, False] + [True] * 4 + [False] * 4
    out = aggregate(tags, correct, keys)
    assert out["single_object"] == pytest.approx(0.75)
    assert out["counting"] == pytest.approx(0.5)
    assert out["overall"] == pytest.approx((0.75 + 0.5) / 2)  # unweighted over tags, not images
    assert out["correct_images"] == pytest.approx(7 / 12)  # "% correct images": over all images
    assert out["correct_prompts"] == pytest.approx(2 / 3)  # "% correct prompts": ANY image correct (a, b)
    assert out["prompts_all_images_correct"] == pytest.approx(1 / 3)  # only b has all four
    assert "prompt_accuracy" not in out
    assert list(out)[:2] == ["single_object", "counting"]


def test_aggregate_groups_prompts_by_key_like_groupby_metadata():
    # summary_scores.py groups by the metadata string, not by position: images of one key
    # count as one prompt wherever they are
    out = aggregate(["colors"] * 4, [False, True, False, False], ["x", "y", "x", "y"])
    assert out["correct_prompts"] == pytest.approx(1 / 2)  # y has a correct image, x none
    assert out["prompts_all_images_correct"] == 0.0


def test_aggregate_over_all_six_tags():
    tags = [t for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr") for _ in range(4)]
    correct = [i % 4 < k for k, t in enumerate(range(6)) for i in range(4)]  # tag k has k/4 correct
    keys = [t for t in tags]  # one prompt per tag
    out = aggregate(tags, correct, keys)
    assert out["overall"] == pytest.approx(sum(min(k, 4) / 4 for k in range(6)) / 6)
    assert out["correct_prompts"] == pytest.approx(5 / 6)  # every tag but the first has a correct image
    with pytest.raises(ValueError):
        aggregate(tags, correct[:-1], keys)


def test_official_constants():
    assert (OFFICIAL.threshold, OFFICIAL.counting_threshold, OFFICIAL.max_objects, OFFICIAL.max_overlap) == (0.3, 0.9, 16, 1.0)
    assert (OFFICIAL.position_margin, OFFICIAL.null_offset, OFFICIAL.direction) == (0.1, 1e-3, 0.5)
    assert len(COLORS) == 10
