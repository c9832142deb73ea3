"""The paired bootstrap over prompts (rtdmd_bench/paired.py) against cases with a known answer, an
independent numpy bootstrap of the same random protocol, and scipy.stats.bootstrap."""

import math

import numpy as np
import pytest
from scipy import stats

from rtdmd_bench.paired import paired_bootstrap, prompt_means


def test_constant_differences_collapse_the_interval_to_that_constant():
    rng = np.random.default_rng(3)
    baseline = rng.normal(0.3, 0.05, size=200)  # prompts of very different difficulty
    d = paired_bootstrap(baseline + 0.0125, baseline, resamples=2000, seed=1)
    # every resample's mean of a constant is the constant: no width at all, whatever the prompts
    assert d.mean == pytest.approx(0.0125, abs=1e-12)
    assert d.low == pytest.approx(0.0125, abs=1e-12) and d.high == pytest.approx(0.0125, abs=1e-12)
    assert d.excludes_zero and d.prompts == 200 and d.resamples == 2000 and d.seed == 1


def test_symmetric_differences_bracket_zero_with_the_normal_half_width():
    n, step = 4000, 0.2
    diffs = np.where(np.arange(n) % 2 == 0, step, -step)  # +d, -d, ...: mean 0, sd exactly d
    baseline = np.linspace(0.0, 1.0, n)
    out = paired_bootstrap(baseline + diffs, baseline, resamples=10_000, seed=0)
    # the bootstrap distribution of a mean of n draws with replacement has sd = sd_pop / sqrt(n), and is
    # nearly normal for n this large: the 95% percentile interval is mean ± 1.96 sd / sqrt(n)
    half_width = 1.959963984540054 * step / math.sqrt(n)
    assert out.low < 0 < out.high and not out.excludes_zero
    assert out.mean == pytest.approx(0.0, abs=1e-12)
    assert (out.high - out.low) / 2 == pytest.approx(half_width, rel=0.04)
    assert out.low == pytest.approx(-half_width, rel=0.06) and out.high == pytest.approx(half_width, rel=0.06)


def test_same_numbers_as_a_numpy_bootstrap_of_the_stated_protocol():
    # The module's protocol: default_rng(seed), integers(0, n) per resample row, numpy's default
    # percentiles. Written here in one draw (the module draws in chunks): equal only if chunking keeps
    # the random stream, which is what makes the printed (resamples, seed) reproduce the interval.
    rng = np.random.default_rng(11)
    a, b = rng.normal(0.31, 0.02, 150), rng.normal(0.30, 0.02, 150)
    d = a - b
    idx = np.random.default_rng(7).integers(0, 150, size=(3500, 150))
    means = d[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    out = paired_bootstrap(a, b, resamples=3500, seed=7)
    assert out.low == pytest.approx(low, abs=1e-15) and out.high == pytest.approx(high, abs=1e-15)
    assert out.mean == pytest.approx(d.mean(), abs=1e-15)


def test_agrees_with_scipy_percentile_bootstrap_within_monte_carlo_error():
    rng = np.random.default_rng(5)
    a, b = rng.normal(5.9, 0.4, 300), rng.normal(5.8, 0.4, 300)
    ref = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                          vectorized=True, n_resamples=20_000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(0)).confidence_interval
    out = paired_bootstrap(a, b, resamples=20_000, seed=0)
    width = ref.high - ref.low
    assert out.low == pytest.approx(ref.low, abs=0.03 * width)
    assert out.high == pytest.approx(ref.high, abs=0.03 * width)


def test_text_marks_intervals_that_exclude_zero():
    base = np.zeros(10)
    assert paired_bootstrap(base + 0.5, base, resamples=100).text() == "+0.500 [+0.500, +0.500] *"
    inside = paired_bootstrap(np.array([1.0, -1.0] * 5), base, resamples=500)
    assert not inside.excludes_zero and not inside.text().endswith("*")


def test_prompt_means_average_each_prompts_images_and_bad_input_is_refused():
    assert prompt_means([[1.0, 3.0], [0.5], [2.0, 2.0, 5.0]]) == [2.0, 0.5, 3.0]
    with pytest.raises(ValueError, match="prompt 1"):
        prompt_means([[1.0], []])
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_bootstrap([1.0], [2.0])
