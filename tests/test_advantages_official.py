"""RTDMD's stage-2 advantages, drop rule, padding and EMA pattern (issue 10, items 1-3), each
against values computed independently in the test (statistics module, hand arithmetic)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from rtdmd_bench.core.advantages import keep_mask, pad_kept, per_prompt_advantages, weighted_advantages
from rtdmd_bench.core.ema import EMA
from rtdmd_bench.core.reward_tilted import RewardTiltedConfig, grpo_advantages, stage2_ema_update


def _reference(scores: dict[str, list[float]], prompts: list[str], weights: dict[str, float],
               ddof: int = 0, eps: float = 1e-4) -> list[float]:
    """Second formula in plain Python: per reward (r - prompt mean) / (batch std + eps) with the
    population (ddof 0) or sample (ddof 1) std, weighted sum, re-standardised the same way."""
    std = statistics.pstdev if ddof == 0 else statistics.stdev
    total = [0.0] * len(prompts)
    for name, w in weights.items():
        r = scores[name]
        means = {p: statistics.fmean([x for x, q in zip(r, prompts) if q == p]) for p in set(prompts)}
        s = std(r) + eps
        total = [t + w * (x - means[p]) / s for t, x, p in zip(total, r, prompts)]
    m, s = statistics.fmean(total), std(total) + eps
    return [(t - m) / s for t in total]


def test_population_std_and_eps_1e4_as_numpy_computes_them():
    prompts = ["a"] * 4 + ["b"] * 4
    scores = {"clip": [0.30, 0.31, 0.29, 0.35, 0.20, 0.22, 0.21, 0.20],
              "pick": [21.0, 22.5, 23.0, 22.0, 20.0, 20.5, 21.5, 21.0]}
    weights = {"clip": 1.0, "pick": 0.5}
    a, _ = weighted_advantages({k: torch.tensor(v) for k, v in scores.items()}, prompts, weights, 4)
    f32 = {k: [float(x) for x in torch.tensor(v)] for k, v in scores.items()}  # the rewards are float32
    assert a.tolist() == pytest.approx(_reference(f32, prompts, weights), abs=1e-6)
    # The former form (sample std, eps 1e-6) is a different number: about sqrt((N-1)/N) apart per reward.
    b, _ = weighted_advantages({k: torch.tensor(v) for k, v in scores.items()}, prompts, weights, 4, "unbiased", 1e-6)
    assert b.tolist() == pytest.approx(_reference(f32, prompts, weights, ddof=1, eps=1e-6), abs=1e-6)
    assert not np.allclose(a.numpy(), b.numpy(), atol=1e-4)


def test_low_variance_reward_is_weighted_by_population_std_plus_1e4():
    # PickScore / 26 varies by ~0.01: the eps matters. One reward, two prompts.
    r = torch.tensor([0.860, 0.870, 0.880, 0.890])
    prompts = ["a", "a", "b", "b"]
    a, raw = weighted_advantages({"p": r}, prompts, {"p": 1.0}, 1)
    x = [float(v) for v in r]
    std = statistics.pstdev(x)  # 0.01118...
    by_hand = [(x[0] - (x[0] + x[1]) / 2) / (std + 1e-4), (x[1] - (x[0] + x[1]) / 2) / (std + 1e-4),
               (x[2] - (x[2] + x[3]) / 2) / (std + 1e-4), (x[3] - (x[2] + x[3]) / 2) / (std + 1e-4)]
    assert raw.tolist() == pytest.approx(by_hand, rel=1e-9)


def test_groups_are_the_samples_of_one_prompt_wherever_they_sit():
    prompts = ["a", "b", "a", "b"]  # interleaved: per-prompt tracking, not consecutive blocks
    r = torch.tensor([1.0, 10.0, 3.0, 20.0])
    raw = per_prompt_advantages(np.tile(r.double().numpy()[:, None], (1, 3)), prompts)
    s = statistics.pstdev([1.0, 10.0, 3.0, 20.0]) + 1e-4
    assert raw[:, 0].tolist() == pytest.approx([-1 / s, -5 / s, 1 / s, 5 / s])
    assert (raw == raw[:, :1]).all()  # every timestep column equal


def test_official_drop_keeps_a_constant_group_and_drops_only_exact_zeros():
    # Group "b" scored the same everywhere: before re-standardising its advantage is exactly 0,
    # after it is -mean/std, tiny but non-zero: the official mask keeps it; the strict rule drops it.
    prompts = ["a"] * 3 + ["b"] * 3
    r = {"g": torch.tensor([0.0, 0.5, 1.0, 0.5, 0.5, 0.5])}
    a, raw = weighted_advantages(r, prompts, {"g": 1.0}, 4)
    assert raw[3:].tolist() == [0.0, 0.0, 0.0]
    assert keep_mask(a, raw, "strict").tolist() == [True, False, True, False, False, False]
    # Group a's centred values are exactly -x, 0, +x, so its middle sample is exactly 0 after
    # re-standardising (the mean is exactly 0): the only drops of the official rule.
    official = keep_mask(a, raw, "official")
    assert official.tolist() == [a_i != 0.0 for a_i in a.tolist()]
    assert bool(official[0]) and bool(official[2])


def test_all_equal_rewards_drop_everything_then_padding_keeps_one_sub_batch():
    prompts = ["a"] * 4 + ["b"] * 4
    a, raw = weighted_advantages({"g": torch.ones(8)}, prompts, {"g": 1.0}, 4)
    keep = keep_mask(a, raw, "official")
    assert not bool(keep.any())  # every advantage exactly 0
    padded = pad_kept(keep, 4, torch.Generator().manual_seed(0))
    assert int(padded.sum()) == 4  # official: keep min(N, num_batches) random samples


def test_padding_adds_dropped_samples_up_to_a_multiple():
    keep = torch.tensor([True, False, True, False, False, True, False, False, True, True])
    padded = pad_kept(keep, 4, torch.Generator().manual_seed(3))
    assert int(padded.sum()) == 8 and bool(padded[keep].all())  # 5 kept -> 8, originals stay
    assert pad_kept(keep, 1, torch.Generator()).tolist() == keep.tolist()
    few = torch.tensor([True, True, True, False])  # needs 1 more for a multiple of 4... of 8: not enough
    assert pad_kept(few, 8, torch.Generator()).tolist() == few.tolist()


def test_grpo_advantages_padding_is_the_same_for_the_same_step_seed():
    prompts = ["a"] * 4 + ["b"] * 4
    cfg = RewardTiltedConfig(num_batches_per_epoch=3)
    scores = {"g": torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])}
    (_, k1), (_, k2) = (grpo_advantages(scores, prompts, {"g": 1.0}, cfg, 4, seed=5) for _ in range(2))
    assert torch.equal(k1, k2) and int(k1.sum()) % 3 == 0


def test_official_ema_pattern_averages_the_same_parameters_in_16_times():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    cfg = RewardTiltedConfig()  # decay 0.9, interval 8, 16 micro-batches, official pattern
    ema = EMA([p], cfg.ema_decay)
    ema.shadow[0].fill_(0.0)
    for n in range(1, 7):  # no update before (n + 1) % 8 == 0
        stage2_ema_update(ema, n, cfg)
    assert float(ema.shadow[0]) == 0.0
    stage2_ema_update(ema, 7, cfg)  # decay min(8/17, 0.9), 16 times towards 1
    d = 8 / 17
    assert float(ema.shadow[0]) == pytest.approx(1 - d ** 16, rel=1e-6)
    ema.shadow[0].fill_(0.0)
    stage2_ema_update(ema, 15, cfg)  # still warming up: decay 16/25
    assert float(ema.shadow[0]) == pytest.approx(1 - (16 / 25) ** 16, rel=1e-6)
    ema.shadow[0].fill_(0.0)
    stage2_ema_update(ema, 87, cfg)  # warm-up over ((1 + 87)/(10 + 87) > 0.9): 0.9 ** 16 ~ 0.185 remains
    assert float(ema.shadow[0]) == pytest.approx(1 - 0.9 ** 16, rel=1e-6)
    ema.shadow[0].fill_(0.0)
    stage2_ema_update(ema, 87, RewardTiltedConfig(ema_pattern="single"))
    assert float(ema.shadow[0]) == pytest.approx(0.1, rel=1e-6)
