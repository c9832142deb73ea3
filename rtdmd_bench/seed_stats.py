"""Statistics over seeds for the CPU tables and sweeps: plain numbers in, plain numbers out.

- `mean_sd`: mean and sample standard deviation (ddof=1) of the finite values.
- `paired_difference`: a row's difference to a reference row paired by seed (same seed = same
  training prompts and noise; every run of a table is evaluated on the same evaluation noise), as
  mean +- half-width of the Student-t CI over the per-seed differences.
- `pick_by_mean`: the trial of a tuning sweep with the best mean over its seeds (never the luckiest
  single seed).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from scipy import stats as sstats


def finite(values: Sequence[Any]) -> list[float]:
    """The finite numbers among `values` (None, NaN and inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_sd(values: Sequence[Any]) -> tuple[float, float]:
    """(mean, sample sd with ddof=1) of the finite values; sd 0 for one value, (nan, nan) for none."""
    vals = finite(values)
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def t_half_width(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t CI of a mean of n values with sample sd `sd` (0 if n < 2)."""
    return float(sstats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) if n >= 2 else 0.0


def paired_differences(values: Sequence[Any], reference: Sequence[Any]) -> list[float | None]:
    """Per-seed differences values[s] - reference[s] (None where either is missing or not finite).

    `reference` has one value per seed, or a single value (a row without a training seed, e.g. the
    teacher, evaluated once on the evaluation noise every run shares) that every seed is compared to."""
    ref = list(reference) * len(values) if len(reference) == 1 else list(reference)
    if len(ref) != len(values):
        raise ValueError(f"paired by seed: {len(values)} values but {len(reference)} reference values")
    ok = [finite([v, r]) for v, r in zip(values, ref)]
    return [pair[0] - pair[1] if len(pair) == 2 else None for pair in ok]


def paired_difference(values: Sequence[Any], reference: Sequence[Any], level: float = 0.95
                      ) -> tuple[float, float, int]:
    """(mean, CI half-width, n) of the per-seed differences values - reference (`paired_differences`):
    the paired t-interval, whose width is that of the differences, not of the two rows."""
    diffs = finite(paired_differences(values, reference))
    m, sd = mean_sd(diffs)
    return m, t_half_width(sd, len(diffs), level) if diffs else math.nan, len(diffs)


def pick_by_mean(trials: dict[Any, Sequence[Any]], lower_is_better: bool = True) -> Any:
    """The key of the trial whose mean over its seeds is best; a trial with a non-finite seed
    (a diverged run) ranks last, as a trial cannot be trusted on the seeds that happened to work."""
    def score(key: Any) -> float:
        vals = list(trials[key])
        if len(finite(vals)) < len(vals) or not vals:
            return math.inf
        m = mean_sd(vals)[0]
        return m if lower_is_better else -m

    return min(trials, key=score)
