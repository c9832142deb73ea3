"""GenEval scoring rules on synthetic detections (suites/geneval_rules.py)."""

from __future__ import annotations

import pytest
import torch

from suites.geneval_rules import (COLORS, OFFICIAL, Detection, Rules, aggregate, box_iou, clip_preprocess,
                                  evaluate_image, masked_crop, relative_position, select_detections)

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
    out = clip_preprocess(torch.full((3, 30, 60), 0.5), size=32)
    assert out.shape == (3, 32, 32)
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-4)


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

def test_aggregate_per_tag_overall_and_prompt_accuracy():
    tags = ["single_object"] * 4 + ["counting"] * 8  # 1 + 2 prompts, 4 images each
    correct = [True, True, True, False] + [True] * 4 + [False] * 4
    out = aggregate(tags, correct, images_per_prompt=4)
    assert out["single_object"] == pytest.approx(0.75)
    assert out["counting"] == pytest.approx(0.5)
    assert out["overall"] == pytest.approx((0.75 + 0.5) / 2)  # unweighted over tags, not images
    assert out["prompt_accuracy"] == pytest.approx(1 / 3)
    assert list(out)[:2] == ["single_object", "counting"]


def test_aggregate_over_all_six_tags():
    tags = [t for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr") for _ in range(4)]
    correct = [i % 4 < k for k, t in enumerate(range(6)) for i in range(4)]  # tag k has k/4 correct
    out = aggregate(tags, correct, images_per_prompt=4)
    assert out["overall"] == pytest.approx(sum(min(k, 4) / 4 for k in range(6)) / 6)
    with pytest.raises(ValueError):
        aggregate(tags, correct[:-1], 4)


def test_official_constants():
    assert (OFFICIAL.threshold, OFFICIAL.counting_threshold, OFFICIAL.max_objects, OFFICIAL.max_overlap) == (0.3, 0.9, 16, 1.0)
    assert (OFFICIAL.position_margin, OFFICIAL.null_offset, OFFICIAL.direction) == (0.1, 1e-3, 0.5)
    assert len(COLORS) == 10
