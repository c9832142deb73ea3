"""Preference suites with small stand-in rewards defined here (suites/preference.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rtdmd_bench import registry
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from suites.preference import (
    HPS_STYLES, AestheticSuite, ClipScoreSuite, DrawBench, HPSv2Suite, ImageRewardSuite, PickScoreSuite,
    resolve_precision, reward_scores,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DRAWBENCH = DATA / "drawbench" / "test.txt"
CTX = EvalContext(base=None, rewards=RewardSet(), run_config={})


class Brightness:
    """Stand-in reward: mean pixel value (so expected scores are easy to compute)."""

    @dataclass
    class Config:
        offset: float = 0.0
        """Added to every score."""

    name = "test-brightness[stand-in]"
    differentiable = True

    def __init__(self, cfg):
        self.cfg = cfg
        self.calls = 0

    def __call__(self, images, prompts):
        assert len(prompts) == images.shape[0]
        return images.mean(dim=(1, 2, 3)) + self.cfg.offset


class PromptLength:
    """Stand-in reward that reads the prompt: its length in characters."""

    @dataclass
    class Config:
        pass

    name = "test-length[stand-in]"
    differentiable = False

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, images, prompts):
        return torch.tensor([float(len(p)) for p in prompts])


class FakeOfficial(Brightness):
    """Registered under an official name but says it is a stand-in: must still be labelled."""

    name = "imagereward (stand-in weights)"


@pytest.fixture(autouse=True)
def stand_in_rewards(monkeypatch):
    module = __name__
    for key, attr in (("test-bright", "Brightness"), ("test-length", "PromptLength")):
        monkeypatch.setitem(registry.REWARDS, key, registry.Entry(f"{module}:{attr}", "test stand-in"))


def images_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_single_reward_suite_is_labelled_and_batch_size_invariant(tmp_path):
    (tmp_path / "p.txt").write_text("a\nbb\nccc\n")
    x = images_for(3)
    out1 = ImageRewardSuite(ImageRewardSuite.Config(prompts=str(tmp_path / "p.txt"), scorer="test-bright", batch_size=1))
    out8 = ImageRewardSuite(ImageRewardSuite.Config(prompts=str(tmp_path / "p.txt"), scorer="test-bright", batch_size=8))
    assert out1.name == "imagereward[stand-in]" and "stand-in" in out1.version
    r1, r8 = out1.score(x, out1.prompts(), CTX), out8.score(x, out8.prompts(), CTX)
    assert r1["imagereward"] == pytest.approx(float(x.mean()), abs=1e-6)
    assert r1["imagereward"] == pytest.approx(r8["imagereward"], abs=1e-6)
    assert r1["suite"] == "imagereward[stand-in]" and "STAND-IN" in r1["note"]
    assert r1["scorers"]["imagereward"]["reward"] == "test-bright" and r1["protocol_seed"] == 42
    assert r1["sampling_seed"] == 0 and "protocol uses seed 42" in r1["note"]
    assert r1["version"] == "imagereward/stand-in:test-bright-2"
    assert set(out1.higher_is_better) <= set(r1) and out1.images_per_prompt == 1


def test_preference_suites_return_every_images_score_for_paired_comparisons(tmp_path):
    (tmp_path / "p.txt").write_text("a\nbb\nccc\n")
    x = images_for(3, seed=4)
    suite = AestheticSuite(AestheticSuite.Config(prompts=str(tmp_path / "p.txt"), scorer="test-bright", batch_size=2))
    out = suite.score(x, suite.prompts(), CTX)
    # Brightness scores an image by its mean pixel; prompt-major, one image per prompt
    assert out["per_image"]["aesthetic"] == pytest.approx(x.mean(dim=(1, 2, 3)).tolist(), abs=1e-6)
    lengths = DrawBench(DrawBench.Config(prompts=str(tmp_path / "p.txt"), scorers=("test-length",) * 5))
    assert lengths.score(x, lengths.prompts(), CTX)["per_image"]["hpsv21"] == [1.0, 2.0, 3.0]


def test_reward_declaring_itself_stand_in_is_labelled_even_under_the_official_name(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.REWARDS, "imagereward", registry.Entry(f"{__name__}:FakeOfficial", "fake"))
    (tmp_path / "p.txt").write_text("a\n")
    suite = ImageRewardSuite(ImageRewardSuite.Config(prompts=str(tmp_path / "p.txt")))
    assert suite.name == "imagereward"  # by its registry name alone it looks official ...
    result = suite.score(images_for(1), ["a"], CTX)
    assert result["suite"] == "imagereward[stand-in]" and suite.name == "imagereward[stand-in]"  # ... until built


def test_drawbench_five_metrics_at_once_on_the_real_prompts():
    if not DRAWBENCH.is_file():
        pytest.skip("../shared/data is absent")
    scorers = ("test-bright", "test-length", "test-bright", "test-length", "test-bright")
    suite = DrawBench(DrawBench.Config(prompts=str(DRAWBENCH), scorers=scorers, limit=6))
    prompts = suite.prompts()
    assert len(prompts) == 6 and prompts[0].startswith("New York Skyline")
    x = images_for(6)
    result = suite.score(x, prompts, CTX)
    assert set(suite.higher_is_better) == {"clipscore", "aesthetic", "pickscore", "hpsv21", "imagereward"}
    assert all(isinstance(result[k], float) for k in suite.higher_is_better)
    assert result["aesthetic"] == pytest.approx(sum(len(p) for p in prompts) / 6)
    assert result["clipscore"] == pytest.approx(float(x.mean()), abs=1e-6)
    assert result["suite"] == "drawbench[stand-in]" and result["protocol_seed"] == 42 and result["images_per_prompt"] == 1


def test_drawbench_official_defaults_and_bad_scorer_count():
    suite = DrawBench()
    assert suite.name == "drawbench" and suite.version == "drawbench/rtdmd-3" and suite.seed == 42
    with pytest.raises(UserError, match="5 scorer names"):
        DrawBench(DrawBench.Config(scorers=("clipscore",)))


def test_wrong_image_count_is_a_user_error(tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\n")
    suite = PickScoreSuite(PickScoreSuite.Config(prompts=str(tmp_path / "p.txt"), scorer="test-bright"))
    with pytest.raises(UserError, match="image"):
        suite.score(images_for(3), suite.prompts(), CTX)


def write_styles(folder: Path, n: int) -> dict[str, list[str]]:
    styles = {s: [f"{s} prompt {i}" for i in range(n)] for s in HPS_STYLES}
    for style, prompts in styles.items():
        (folder / f"{style}.json").write_text(json.dumps(prompts))
    return styles


def test_hpsv2_four_styles_times_100(tmp_path):
    styles = write_styles(tmp_path, 3)
    suite = HPSv2Suite(HPSv2Suite.Config(prompts=str(tmp_path), scorer="test-bright", limit=2))
    prompts = suite.prompts()
    assert prompts == [p for s in HPS_STYLES for p in styles[s][:2]]
    # style k's images have brightness k / 10
    x = torch.cat([torch.full((2, 3, 4, 4), k / 10) for k in range(4)])
    result = suite.score(x, prompts, CTX)
    for k, style in enumerate(HPS_STYLES):
        assert result[style] == pytest.approx(100 * k / 10, abs=1e-4)
    assert result["average"] == pytest.approx(100 * 0.15, abs=1e-4)
    assert result["per_image"]["average"] == pytest.approx([100 * k / 10 for k in range(4) for _ in range(2)], abs=1e-4)
    assert set(suite.higher_is_better) == set(HPS_STYLES) | {"average"}
    assert result["suite"] == "hpsv2[stand-in]" and result["scale"] == 100.0
    with pytest.raises(UserError, match="order"):
        suite.score(x, list(reversed(prompts)), CTX)


def test_hpsv2_default_scorer_is_v21_and_missing_prompts_name_the_files(tmp_path):
    suite = HPSv2Suite()
    assert suite.cfg.scorer == "hpsv21" and suite.name == "hpsv2" and "hpsv21" in suite.version
    with pytest.raises(UserError, match="anime.json"):
        suite.prompts()
    (tmp_path / "anime.json").write_text(json.dumps(["x"]))
    with pytest.raises(UserError, match="concept-art"):
        HPSv2Suite(HPSv2Suite.Config(prompts=str(tmp_path))).prompts()


def test_every_preference_suite_resolves_with_documented_config():
    import dataclasses

    from rtdmd_bench.config import field_docs

    for name in ("hpsv2", "imagereward", "pickscore", "aesthetic", "clipscore", "drawbench"):
        cls = registry.resolve("suites", name)
        docs = field_docs(cls.Config)
        for f in dataclasses.fields(cls.Config):
            assert docs.get(f.name), (name, f.name)
        if name not in ("hpsv2", "drawbench"):
            assert cls.Config().scorer == name  # each single-reward suite defaults to its own scorer
        suite = cls()
        assert suite.name == name and suite.higher_is_better and suite.images_per_prompt == 1


@pytest.mark.slow
def test_drawbench_with_the_registered_tiny_scorers():
    """The real scorer classes with tiny random configs, as CI runs them: labelled stand-in."""
    if not DRAWBENCH.is_file():
        pytest.skip("../shared/data is absent")
    scorers = ("tiny-clipscore", "tiny-aesthetic", "tiny-pickscore", "tiny-hpsv2", "tiny-imagereward")
    missing = [s for s in scorers if s not in registry.names("rewards")]
    if missing:
        pytest.skip(f"stand-in rewards not registered: {missing}")
    suite = registry.resolve("suites", "drawbench")(DrawBench.Config(prompts=str(DRAWBENCH), scorers=scorers, limit=2))
    x = images_for(2)
    result = suite.score(x, suite.prompts(), CTX)
    assert result["suite"] == "drawbench[stand-in]" and "stand-in" in result["version"]
    assert all(isinstance(result[k], float) and result[k] == result[k] for k in suite.higher_is_better)
    assert all("stand-in" in v["name"] for v in result["scorers"].values())


# ---- precision and device (issue #10 item 12) ------------------------------------------------

@pytest.mark.parametrize("requested, device, official, expected", [
    ("auto", "cuda", "float16", "float16"), ("auto", "cpu", "float16", "float32"),
    ("auto", "cuda", "float32", "float32"), ("auto", "mps", "float16", "float32"),
    ("float32", "cuda", "float16", "float32"), ("float16", "cuda", "float32", "float16"),
])
def test_resolve_precision(requested, device, official, expected):
    assert resolve_precision(requested, device, official) == expected


def test_resolve_precision_refuses_fp16_off_cuda_and_unknown_names():
    with pytest.raises(UserError, match="CUDA"):
        resolve_precision("float16", "cpu", "float16")
    with pytest.raises(UserError, match="auto, float32 or float16"):
        resolve_precision("bfloat16", "cuda", "float16")


def test_official_precision_per_suite_on_cuda():
    """HPSv2 (hpsv2.score / evaluation.py: torch.cuda.amp.autocast) and the aesthetic predictor
    (clip.load keeps fp16 weights on CUDA) score in fp16; ImageReward, PickScore, CLIPScore and
    RTDMD's DrawBench (every scorer float32) do not. Resolved for a CUDA device without using it."""
    cuda = {"device": "cuda"}
    assert HPSv2Suite(HPSv2Suite.Config(**cuda)).precisions() == {"hpsv2": "float16"}
    assert AestheticSuite(AestheticSuite.Config(**cuda)).precisions() == {"aesthetic": "float16"}
    for cls in (ImageRewardSuite, PickScoreSuite, ClipScoreSuite):
        assert set(cls(cls.Config(**cuda)).precisions().values()) == {"float32"}
    assert set(DrawBench(DrawBench.Config(**cuda)).precisions().values()) == {"float32"}
    assert HPSv2Suite(HPSv2Suite.Config(device="cuda", precision="float32")).precisions() == {"hpsv2": "float32"}
    assert HPSv2Suite(HPSv2Suite.Config(device="cpu")).precisions() == {"hpsv2": "float32"}


def test_result_json_records_device_and_precision(tmp_path):
    styles = write_styles(tmp_path, 2)
    suite = HPSv2Suite(HPSv2Suite.Config(prompts=str(tmp_path), scorer="test-bright", device="cpu"))
    result = json.loads(json.dumps(suite.score(images_for(8), [p for s in HPS_STYLES for p in styles[s]], CTX)))
    assert result["precision"] == {"hpsv2": "float32"} and result["device"] == "cpu"
    fp16 = HPSv2Suite(HPSv2Suite.Config(prompts=str(tmp_path), scorer="test-bright", device="cpu", precision="float16"))
    with pytest.raises(UserError, match="CUDA"):
        fp16.score(images_for(8), fp16.prompts(), CTX)


class AutocastProbe:
    """Stand-in reward that reports whether it ran under fp16 autocast (1) or not (0)."""

    name = "test-autocast[stand-in]"
    differentiable = False

    def __call__(self, images, prompts):
        on = torch.is_autocast_enabled(images.device.type) and \
            torch.get_autocast_dtype(images.device.type) == torch.float16
        return torch.full((images.shape[0],), float(on))


def test_reward_scores_runs_under_the_resolved_autocast():
    x = images_for(3)
    assert reward_scores(AutocastProbe(), x, ["a", "b", "c"], 2, torch.device("cpu"), "float32").tolist() == [0.0] * 3
    assert reward_scores(AutocastProbe(), x, ["a", "b", "c"], 2, torch.device("cpu"), "float16").tolist() == [1.0] * 3


def test_drawbench_feeds_the_scorers_as_rtdmds_evaluation():
    """RTDMD's MultiScorer: ClipScorer's tensor transform and AestheticScorer's CLIPProcessor;
    PickScore, HPSv2 and ImageReward through their official pipelines."""
    scorers = ("tiny-clipscore", "tiny-aesthetic", "tiny-pickscore", "tiny-hpsv21", "tiny-imagereward")
    rtdmd = DrawBench(DrawBench.Config(scorers=scorers)).rewards()
    assert {s: r.cfg.pixels for s, r in rtdmd.items()} == {
        "clipscore": "rtdmd_tensor_uint8", "aesthetic": "clip_processor", "pickscore": "reference",
        "hpsv21": "reference", "imagereward": "reference"}
    official = DrawBench(DrawBench.Config(scorers=scorers, scorer_inputs="official")).rewards()
    assert {r.cfg.pixels for r in official.values()} == {"reference"}
    assert DrawBench(DrawBench.Config(scorer_inputs="official")).version == "drawbench/rtdmd-official-inputs-2"
