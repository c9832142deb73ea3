"""`reproduce toy-beta` (rtdmd_bench/toy_beta.py): the exact fronts against hand-derived Gaussians, and
the table and plot from run results."""

from __future__ import annotations

import pytest
import torch

from rtdmd_bench import toy_beta
from rtdmd_bench.toy_mixture import Mixture


def test_exact_point_of_a_linear_tilt_of_one_gaussian():
    """Teacher N(0, I), r(x) = a^T x: p*_beta = N(a / beta, I) (complete the square), so by hand
    KL(p* || teacher) = KL(teacher || p*) = |a|^2 / (2 beta^2), E_p*[r] = |a|^2 / beta, E_teacher[r] = 0."""
    a, beta = torch.tensor([1.0, 2.0], dtype=torch.float64), 2.0
    teacher = Mixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    target = Mixture(torch.ones(1), (a / beta)[None], torch.eye(2)[None])
    point = toy_beta.exact_point(teacher, target, lambda x: x @ a, 400_000, torch.Generator().manual_seed(0))
    assert point["kl_target_to_teacher"] == pytest.approx(5 / 8, abs=0.01)
    assert point["kl_teacher_to_target"] == pytest.approx(5 / 8, abs=0.01)
    assert point["reward_target"] == pytest.approx(2.5, abs=0.01)
    assert point["reward_teacher"] == pytest.approx(0.0, abs=0.01)


@pytest.mark.slow
def test_exact_front_on_toy2d_trades_fidelity_for_reward_monotonically():
    """p*_beta minimises KL(p || teacher) - E_p[r] / beta, so a smaller beta buys reward with fidelity:
    both KL(p*_beta || teacher) and E_{p*_beta}[r] decrease as beta grows, towards the teacher's."""
    pytest.importorskip("rtdmd_bench.bases.toy2d")
    points = toy_beta.exact_points([0.25, 1.0, 4.0], n=20_000)
    kl = [points[b]["kl_target_to_teacher"] for b in (0.25, 1.0, 4.0)]
    reward = [points[b]["reward_target"] for b in (0.25, 1.0, 4.0)]
    assert kl[0] > kl[1] > kl[2] > 0 and reward[0] > reward[1] > reward[2] > points[4.0]["reward_teacher"]


RESULTS = {"dmd2": {0.5: {"kl_target": [2.0, 4.0], "kl_teacher": [1.0, 1.0], "mean_reward": [-9.0, -8.0]},
                    1.0: {"kl_target": [3.0, 3.0], "kl_teacher": [1.0, None], "mean_reward": [-9.0, -9.0]}}}
EXACT = {0.5: {"kl_target_to_teacher": 2.5, "kl_teacher_to_target": 3.0, "reward_target": -1.0, "reward_teacher": -9.0},
         1.0: {"kl_target_to_teacher": 1.2, "kl_teacher_to_target": 1.5, "reward_target": -3.0, "reward_teacher": -9.0}}


def test_table_rows_carry_mean_and_t_interval_over_seeds():
    md = toy_beta.table_markdown(RESULTS, EXACT, 2)
    # seeds 2 and 4: mean 3, sd sqrt(2), half-width t_{.975,1} sqrt(2) / sqrt(2) = 12.706
    assert "| dmd2 | 0.5 | 3.000 ± 12.706 | 1.000 ± 0.000 | -8.500 ± 6.353 |" in md
    assert "| dmd2 | 1 | 3.000 ± 0.000 | 1.000 | -9.000 ± 0.000 |" in md  # one seed's KL missing: no CI
    assert "| p*_beta (exact) | 0.5 | 0 | 2.500 | -1.000 |" in md
    assert "| teacher (exact) | 1 | 1.500 | 0 | -9.000 |" in md


@pytest.mark.slow
def test_the_plot_is_written(tmp_path):
    toy_beta.plot(RESULTS, EXACT, tmp_path / "front.png")
    from PIL import Image

    assert Image.open(tmp_path / "front.png").size == (13 * 120, 5 * 120)  # figsize x dpi
