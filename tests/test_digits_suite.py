"""digits rewards and suite: Frechet distance, metrics on known inputs, gradients, the grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtdmd_bench.core.threads import single_thread
from rtdmd_bench.digits.data import load_split
from rtdmd_bench.digits.nets import ClassifierConfig
from rtdmd_bench.errors import UserError
from rtdmd_bench.interfaces import EvalContext, RewardSet
from rtdmd_bench.rewards.digits import DigitCorrect, DigitInk
from suites.digits import DigitsSuite, frechet_distance, mean_pairwise_distance, save_digit_grid

# Fewer epochs than the default keep the quick loop quick; still ~97% held-out accuracy.
SMALL_CLASSIFIER = ClassifierConfig(epochs=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("RTDMD_BENCH_CACHE", str(tmp_path_factory.mktemp("digits-cache")))
        yield


@pytest.fixture(scope="module")
def suite(cache) -> DigitsSuite:
    return DigitsSuite(DigitsSuite.Config(classifier=SMALL_CLASSIFIER, images_per_prompt=4))


def real_images(split: str = "held_out") -> tuple[torch.Tensor, list[str]]:
    """Real digits as the base decodes them, (N, 3, 8, 8) in [0, 1], with one prompt each."""
    x, y = load_split(split)
    return ((x + 1) / 2).repeat(1, 3, 1, 1), [f"a handwritten {c}" for c in y.tolist()]


def per_prompt(images: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The first k images of each class, prompt-major (10 k, ...)."""
    return torch.cat([images[labels == c][:k] for c in range(10)])


# ----------------------------------------------------------------------------- pure metrics

def test_frechet_distance_self_is_zero_and_a_shift_costs_its_squared_norm() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn((500, 8), generator=g) @ torch.randn((8, 8), generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = torch.tensor([1.0, -2.0, 0, 0, 0, 0, 0, 0.5])
    # equal covariances: the trace terms cancel, leaving ||mu_a - mu_b||^2 = 5.25
    assert frechet_distance(a, a + shift) == pytest.approx(5.25, rel=1e-5)
    assert frechet_distance(a, 2 * a) > 0.1  # covariance differs, means nearly equal
    # singular covariances (dead ReLU units) stay finite
    dead = torch.cat([a, torch.zeros(500, 3)], dim=1)
    assert abs(frechet_distance(dead, dead)) < 1e-6
    with pytest.raises(ValueError):
        frechet_distance(a, a[:, :4])


def test_mean_pairwise_distance_known_values() -> None:
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    # three points on a line at 0, 1, 3: pairs 1, 3, 2 -> mean 2
    assert mean_pairwise_distance(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- rewards

def test_digit_correct_is_a_log_probability_and_prefers_the_prompted_class(cache) -> None:
    reward = DigitCorrect(DigitCorrect.Config(classifier=SMALL_CLASSIFIER))
    images, prompts = real_images()
    right = reward(images, prompts)
    wrong = reward(images, [f"digit {(int(p.split()[-1]) + 1) % 10}" for p in prompts])
    assert right.shape == (len(prompts),) and (right <= 0).all()
    assert right.exp().mean() > 0.8 and wrong.exp().mean() < 0.05


@pytest.mark.parametrize("reward_cls", [DigitCorrect, DigitInk])
def test_reward_gradients_flow_to_the_image(cache, reward_cls) -> None:
    reward = reward_cls(reward_cls.Config(classifier=SMALL_CLASSIFIER)) if reward_cls is DigitCorrect else reward_cls()
    images, prompts = real_images()
    images = images[:8].clone().requires_grad_(True)
    reward(images, prompts[:8]).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in getattr(reward, "classifier", torch.nn.Identity()).parameters())


def test_digit_ink_rewards_thick_strokes_and_is_bounded() -> None:
    images, prompts = real_images()
    ink = DigitInk()
    black, white = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    real = ink(images, prompts).mean()
    assert ink(black, ["7"]).item() == 0 and ink(white, ["7"]).item() == 1
    assert 0.2 < real < 0.4  # real digits average ~0.3 ink
    assert DigitInk(DigitInk.Config(cap=0.5))(white, ["7"]).item() == 0.5
    with pytest.raises(UserError, match="cap"):
        DigitInk(DigitInk.Config(cap=2.0))


def test_ink_conflicts_with_correctness(cache) -> None:
    """Thickening strokes (3x3 dilation) buys ink and costs recognisability: the trade-off a
    reward-hacking generator makes."""
    images, prompts = real_images()
    thick = torch.nn.functional.max_pool2d(images, 3, stride=1, padding=1)
    correct, ink = DigitCorrect(DigitCorrect.Config(classifier=SMALL_CLASSIFIER)), DigitInk()
    assert ink(thick, prompts).mean() > 2 * ink(images, prompts).mean()
    assert correct(thick, prompts).mean() < correct(images, prompts).mean() - 1.0


def test_rewards_reject_non_digit_images(cache) -> None:
    with pytest.raises(UserError, match="8x8"):
        DigitInk()(torch.zeros(2, 3, 16, 16), ["1", "2"])


# ----------------------------------------------------------------------------- suite

def test_suite_prompts_one_per_class(suite: DigitsSuite) -> None:
    assert len(suite.prompts()) == 10 and suite.prompts()[7] == "a handwritten digit seven"
    with pytest.raises(UserError, match="prompt_template"):
        DigitsSuite(DigitsSuite.Config(classifier=SMALL_CLASSIFIER, prompt_template="a cat {word}"))


def test_real_held_out_digits_score_high_accuracy_and_zero_fid(suite: DigitsSuite) -> None:
    images, prompts = real_images()
    out = suite.score(images, prompts, EvalContext(base=None, rewards=RewardSet(), run_config={}))
    assert out["accuracy"] > 0.95
    assert abs(out["fid"]) < 1e-6  # the held-out set against itself
    assert "fid_t" not in out and "fid_t skipped" in out["note"]
    assert "penultimate features (d=64)" in out["note"] and len(out["accuracy_per_class"]) == 10
    assert out["diversity"] > 0 and out["reward"]["digit-ink"] == pytest.approx(images.mean().item(), abs=1e-6)
    assert set(out["reward"]) == {"digit-correct", "digit-ink"}
    # per-image scores for paired comparisons (compare): digit-ink is the image's mean pixel
    assert out["per_image"]["reward.digit-ink"] == pytest.approx(images.mean(dim=(1, 2, 3)).tolist(), abs=1e-6)
    correct = out["per_image"]["accuracy"]
    assert len(correct) == images.shape[0] and set(correct) <= {0.0, 1.0}
    assert sum(correct) / len(correct) == pytest.approx(out["accuracy"])
    for key in ("accuracy", "fid", "fid_t", "diversity", "reward"):
        assert key in suite.higher_is_better
    assert suite.higher_is_better["fid"] is False and suite.higher_is_better["accuracy"] is True


def test_train_digits_are_farther_from_held_out_than_held_out_itself_and_fid_t(suite: DigitsSuite) -> None:
    tx, ty = load_split("train")
    train = per_prompt(((tx + 1) / 2).repeat(1, 3, 1, 1), ty, 4)  # (40, 3, 8, 8)
    shuffled = train.flip(0)  # another sample set, same size
    ctx = EvalContext(base=None, rewards=RewardSet(), run_config={}, teacher_samples=lambda: train)
    out = suite.score(train, suite.prompts(), ctx)
    assert out["fid"] > 0.1 and abs(out["fid_t"]) < 1e-4  # 40 samples in d=64: rank-deficient
    assert suite.score(train, suite.prompts(), EvalContext(
        base=None, rewards=RewardSet(), run_config={}, teacher_samples=lambda: shuffled.roll(1, 2)))["fid_t"] > 0.1


def test_identical_images_per_prompt_have_zero_diversity(suite: DigitsSuite) -> None:
    images, prompts = real_images()
    _, labels = load_split("held_out")
    one_each = per_prompt(images, labels, 1)  # (10, 3, 8, 8)
    same = one_each.repeat_interleave(4, dim=0)  # each prompt: 4 copies of one digit
    out = suite.score(same, suite.prompts(), EvalContext(base=None, rewards=RewardSet(), run_config={}))
    assert out["diversity"] == pytest.approx(0.0, abs=1e-9)
    varied = per_prompt(images, labels, 4)
    assert suite.score(varied, suite.prompts(), EvalContext(base=None, rewards=RewardSet(),
                                                              run_config={}))["diversity"] > 0.5


def test_suite_scores_the_runs_rewards_and_checks_sizes(suite: DigitsSuite) -> None:
    images, _ = real_images()
    ink = DigitInk(DigitInk.Config(cap=0.1))
    ctx = EvalContext(base=None, rewards=RewardSet(rewards={"capped-ink": ink}, weights={"capped-ink": 1.0}),
                      run_config={})
    out = suite.score(images[:40], suite.prompts(), ctx)
    assert out["reward"]["capped-ink"] == pytest.approx(0.1) and suite.higher_is_better["reward"]
    with pytest.raises(UserError, match="do not match"):
        suite.score(images[:39], suite.prompts(), ctx)


def test_save_digit_grid_writes_a_png(tmp_path: Path, suite: DigitsSuite) -> None:
    images, _ = real_images()
    _, labels = load_split("held_out")
    rows = {"real": per_prompt(images, labels, 3), "noise": torch.rand(10, 3, 8, 8)}
    path = save_digit_grid(rows, suite.prompts(), tmp_path / "grid" / "digits.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert not list(path.parent.glob(".*tmp*"))
    with pytest.raises(ValueError, match="multiple"):
        save_digit_grid({"bad": torch.rand(7, 3, 8, 8)}, suite.prompts(), tmp_path / "bad.png")


def test_frechet_distance_is_exact_with_singular_covariances():
    # Dead feature units (constant columns) make both covariances singular; the distance of a set
    # to itself must still be ~0 (never negative) and a full-rank case must match scipy's sqrtm.
    import numpy as np
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 64, generator=g, dtype=torch.float64)
    feats[:, 20:] = 0.0
    assert abs(frechet_distance(feats, feats)) < 1e-8
    a, b = torch.randn(500, 8, generator=g, dtype=torch.float64), torch.randn(500, 8, generator=g, dtype=torch.float64) * 1.5 + 0.3
    ca, cb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca + cb - 2 * np.real(scipy.linalg.sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
