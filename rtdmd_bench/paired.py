"""Paired comparisons of two methods evaluated on the same prompts and noise seeds.

Every method of a comparison is scored on the same prompts with the same per-(seed, prompt, image)
noise, so the difference between two methods on one prompt cancels the prompt's own difficulty.
`paired_bootstrap` resamples prompts (not images, which share a prompt) with replacement and reads
the 95% interval of the mean difference from the resampled means' percentiles (Efron & Tibshirani,
*An Introduction to the Bootstrap*, ch. 13). It is the uncertainty of a single training seed's
result over the prompt set: it says nothing about how another training seed would score, which only
several seeds measure (`report.mean_ci`, a Student-t interval over seeds).

The random protocol is fixed so that the printed interval can be reproduced from the printed
resamples and seed: `numpy.random.default_rng(seed)`, then, chunk by chunk of `CHUNK` resamples,
`rng.integers(0, n, size=(chunk, n))` prompt indices per resample; percentiles by numpy's default
(linear) interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 10_000
"""Bootstrap resamples of the prompts (printed with every interval)."""
SEED = 0
"""Seed of the bootstrap's generator (printed with every interval)."""
LEVEL = 0.95
"""Coverage of the percentile interval."""
CHUNK = 1000
"""Resamples drawn per call of the generator (bounds memory at CHUNK x prompts indices)."""


@dataclass(frozen=True)
class PairedDiff:
    """The mean over prompts of (method - baseline) and its paired-bootstrap percentile interval."""

    mean: float
    """Mean over prompts of the per-prompt difference (method - baseline)."""
    low: float
    """Lower end of the percentile interval of the resampled means."""
    high: float
    """Upper end of the percentile interval of the resampled means."""
    prompts: int
    """Prompts resampled (the pairs)."""
    resamples: int
    """Bootstrap resamples."""
    seed: int
    """Seed of the bootstrap's generator."""
    level: float
    """Coverage of the interval (0.95)."""

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or wholly below 0."""
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3) -> str:
        """`+0.012 [+0.004, +0.020] *`: the star marks an interval that excludes 0."""
        f = (lambda x: f"{x:+.{digits}g}") if abs(self.mean) >= 1e4 or 0 < abs(self.mean) < 1e-3 else \
            (lambda x: f"{x:+.{digits}f}")
        return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]" + (" *" if self.excludes_zero else "")

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "prompts": self.prompts,
                "resamples": self.resamples, "seed": self.seed, "level": self.level,
                "excludes_zero": self.excludes_zero}


def bootstrap_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples,) means of `values` (n,) over prompts drawn with replacement (the module's protocol)."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        k = min(CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(k, n))  # (k, n) prompt indices
        out[start:start + k] = values[idx].mean(axis=1)
    return out


def paired_bootstrap(method: Sequence[float], baseline: Sequence[float], resamples: int = RESAMPLES,
                     seed: int = SEED, level: float = LEVEL) -> PairedDiff:
    """Paired bootstrap over prompts of mean(method - baseline); `method[i]`, `baseline[i]`: prompt i's
    score (the mean over its images) under the two methods, same prompts in the same order."""
    a = np.asarray(method, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need the same prompts: shapes {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError("a paired bootstrap needs at least 2 prompts")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores contain NaN or Inf")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and level in (0, 1); got {resamples}, {level}")
    d = a - b  # (n,) per-prompt differences
    means = bootstrap_means(d, resamples, seed)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return PairedDiff(float(d.mean()), float(low), float(high), int(d.shape[0]), resamples, seed, level)


def prompt_means(per_image: Sequence[Sequence[float]]) -> list[float]:
    """(P,) each prompt's mean over its images, from scores listed [prompt index][image index]."""
    out = []
    for i, scores in enumerate(per_image):
        vals = [float(s) for s in scores]
        if not vals or not all(math.isfinite(v) for v in vals):
            raise ValueError(f"prompt {i}: no finite per-image scores")
        out.append(sum(vals) / len(vals))
    return out
